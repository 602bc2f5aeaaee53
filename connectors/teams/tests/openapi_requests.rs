//! Every request the connector sends during a full sync matches fixtures/graph/graph-presence-openapi.yaml:
//! the method and path template exist, and the JSON body fits the operation's request schema
//! (declared properties only, the right types, required ones present).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use presync_engine::clock::ManualClock;
use presync_engine::{Availability, Connector, Desired, ExternalId, NativeState, Origin, Presence};
use presync_entra::{Credential, EntraConfig, TokenClient};
use presync_teams::auth::{AppCredentials, DelegatedCredentials};
use presync_teams::client::GraphClient;
use presync_teams::config::TeamsConfig;
use presync_teams::connector::TeamsConnector;
use presync_teams::mapping::WriteMode;
use presync_teams::sim::{GraphSim, GraphSimConfig};
use presync_teams::subscriptions::{SubscriptionManager, SubscriptionSettings};
use serde_json::Value;

const SPEC: &str = include_str!("../../../fixtures/graph/graph-presence-openapi.yaml");
const TENANT: &str = "presync-sim";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-sim-secret-0123456789";
const SERVICE: &str = "99999999-0000-0000-0000-000000000001";

fn user(i: usize) -> String {
    format!("bbbbbbbb-0000-4000-8000-{i:012x}")
}

/// The spec as JSON.
fn spec() -> Value {
    let yaml: serde_yaml::Value = serde_yaml::from_str(SPEC).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// The path template of `spec` that `path` (without the version prefix) instantiates.
fn template<'a>(spec: &'a Value, path: &str) -> Option<(&'a str, &'a Value)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    spec["paths"].as_object()?.iter().find_map(|(t, item)| {
        let tsegs: Vec<&str> = t.trim_matches('/').split('/').collect();
        let fits = tsegs.len() == segs.len()
            && tsegs
                .iter()
                .zip(&segs)
                .all(|(a, b)| (a.starts_with('{') && a.ends_with('}')) || a == b);
        fits.then_some((t.as_str(), item))
    })
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(spec, &spec["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The properties an object schema declares, with `allOf` merged.
fn properties(spec: &Value, schema: &Value, out: &mut serde_json::Map<String, Value>) {
    let s = resolve(spec, schema);
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for part in all {
            properties(spec, part, out);
        }
    }
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in p {
            out.insert(k.clone(), v.clone());
        }
    }
}

/// Check `value` against `schema`; every mismatch is reported with its path.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let s = resolve(spec, schema);
    if value.is_null() {
        if !s.get("nullable").and_then(Value::as_bool).unwrap_or(false) && s.get("type").is_some() {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    if let Some(choices) = s
        .get("anyOf")
        .or_else(|| s.get("oneOf"))
        .and_then(Value::as_array)
    {
        let fits = choices.iter().any(|c| {
            let mut e = Vec::new();
            check(spec, c, value, at, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: fits none of the alternatives"));
        }
        return;
    }
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| s.get("allOf").map(|_| "object"));
    match ty {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errors.push(format!("{at}: expected an object"));
                return;
            };
            let mut props = serde_json::Map::new();
            properties(spec, s, &mut props);
            let open = s
                .get("additionalProperties")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            for (k, v) in obj {
                match props.get(k) {
                    Some(p) => check(spec, p, v, &format!("{at}.{k}"), errors),
                    None if open => {}
                    None => errors.push(format!("{at}.{k}: not a property of the schema")),
                }
            }
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(r) = r.as_str() {
                    if !obj.contains_key(r) {
                        errors.push(format!("{at}.{r}: required"));
                    }
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, v) in items.iter().enumerate() {
                    check(spec, &s["items"], v, &format!("{at}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{at}: expected an array")),
        },
        Some("string") if !value.is_string() => errors.push(format!("{at}: expected a string")),
        Some("boolean") if !value.is_boolean() => errors.push(format!("{at}: expected a boolean")),
        Some("integer") | Some("number") if !value.is_number() => {
            errors.push(format!("{at}: expected a number"))
        }
        _ => {}
    }
}

fn presence(a: Availability) -> Desired {
    Desired::Set(Presence {
        availability: a,
        native: NativeState::new(a.as_str()),
        source: "dataverse".into(),
        source_time: 0,
        origin: Origin::Unknown,
        observed_at: 0,
        version: 1,
    })
}

#[tokio::test]
async fn every_request_of_a_full_sync_matches_the_openapi_description() {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut cfg = GraphSimConfig::new(TENANT, APP, SECRET, SERVICE, "refresh-0");
    cfg.auto_tick = false;
    cfg.one_subscription_per_user = false;
    let sim = GraphSim::new(cfg, clock.clone());
    for i in 0..3 {
        sim.add_user(&user(i));
    }
    let base = format!("http://{}", sim.spawn().await.unwrap());
    // A receiver that passes the validation handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|q: axum::extract::RawQuery| async move {
            presync_teams::notifications::validation_response(q.0.as_deref()).unwrap_or_default()
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let entra = EntraConfig::new(
        TENANT,
        APP,
        "https://graph.microsoft.com/.default",
        Credential::client_secret(SECRET.to_owned()),
    )
    .with_authority(base.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rt");
    std::fs::write(&store, "refresh-0").unwrap();
    let delegated = DelegatedCredentials::new(
        sim.token_url(&base),
        APP,
        "https://graph.microsoft.com/Presence.Read.All offline_access",
        store,
    );
    let client = GraphClient::new(
        &format!("{base}/v1.0"),
        Arc::new(AppCredentials::new(TokenClient::new(&entra).unwrap())),
        Some(Arc::new(delegated)),
        1_500,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();

    // Both write modes, every availability, withdrawal, reads, keep-alive, subscriptions.
    for mode in [WriteMode::Session, WriteMode::Preferred] {
        let mut config = TeamsConfig::new(APP);
        config.mode = mode;
        let connector = TeamsConnector::new(config, client.clone(), clock.clone()).unwrap();
        for a in Availability::ALL {
            connector
                .write(&ExternalId(user(0)), &presence(a))
                .await
                .unwrap();
        }
        connector
            .write(&ExternalId(user(0)), &presence(Availability::Busy))
            .await
            .unwrap();
        connector
            .write(&ExternalId(user(0)), &Desired::Withdraw)
            .await
            .unwrap();
        connector
            .read_all(&[ExternalId(user(0)), ExternalId(user(1))])
            .await
            .unwrap();
        clock.advance(5 * 60_000);
        connector.keep_alive().await;
    }
    let manager = SubscriptionManager::new(
        client.clone(),
        SubscriptionSettings {
            notification_url: hook,
            lifecycle_url: None,
            client_state: "state".into(),
            lifetime: Duration::from_secs(30 * 60),
            renew_before: Duration::from_secs(60 * 60),
            encryption: None,
        },
        clock.clone(),
    );
    let users: Vec<String> = (0..3).map(user).collect();
    assert_eq!(manager.maintain(&users).await.created, 1);
    assert_eq!(manager.maintain(&users).await.renewed, 1);
    assert_eq!(
        manager.maintain(&users[..2]).await.created,
        1,
        "a new set of users: delete and create"
    );

    let spec = spec();
    let requests = sim.requests();
    let mut kinds = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for r in &requests {
        let path = r.path.strip_prefix("/v1.0").unwrap_or(&r.path);
        let Some((tpl, item)) = template(&spec, path) else {
            errors.push(format!(
                "{} {path}: no such path in the description",
                r.method
            ));
            continue;
        };
        let method = r.method.to_ascii_lowercase();
        let Some(op) = item.get(&method) else {
            errors.push(format!("{} {tpl}: no such operation", r.method));
            continue;
        };
        kinds.insert(format!("{} {tpl}", r.method));
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        match (&r.body, schema.is_null()) {
            (Some(body), false) => check(
                &spec,
                schema,
                body,
                &format!("{} {tpl}", r.method),
                &mut errors,
            ),
            // The documentation page of an action without parameters sends `{}` (graph.md §2);
            // the description declares no body for it.
            (Some(body), true) if *body == serde_json::json!({}) => {}
            (Some(_), true) => errors.push(format!(
                "{} {tpl}: a body the operation does not take",
                r.method
            )),
            (None, false) if op["requestBody"]["required"].as_bool().unwrap_or(false) => {
                errors.push(format!("{} {tpl}: the required body is missing", r.method));
            }
            _ => {}
        }
    }
    assert!(
        errors.is_empty(),
        "requests that do not match the description:\n{}",
        errors.join("\n")
    );
    // `clearUserPreferredPresence` carries the empty object its page documents (the simulator
    // refuses a body without a JSON content type).
    let clears: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/clearUserPreferredPresence"))
        .collect();
    assert!(!clears.is_empty());
    assert!(
        clears
            .iter()
            .all(|r| r.body == Some(serde_json::json!({})) && r.status == 200),
        "{clears:?}"
    );
    for expected in [
        "POST /users/{user-id}/presence/setPresence",
        "POST /users/{user-id}/presence/clearPresence",
        "POST /users/{user-id}/presence/setUserPreferredPresence",
        "POST /users/{user-id}/presence/clearUserPreferredPresence",
        "POST /communications/getPresencesByUserId",
        "POST /subscriptions",
        "PATCH /subscriptions/{subscription-id}",
        "DELETE /subscriptions/{subscription-id}",
    ] {
        assert!(
            kinds.contains(expected),
            "the sync never sent {expected}: {kinds:?}"
        );
    }
}

#[test]
fn the_checker_refuses_what_the_description_does_not_allow() {
    let spec = spec();
    let (_, item) = template(&spec, "/users/x/presence/setPresence").unwrap();
    let schema = &item["post"]["requestBody"]["content"]["application/json"]["schema"];
    let mut errors = Vec::new();
    check(
        &spec,
        schema,
        &serde_json::json!({"sessionId": "a", "availability": 5, "mood": "good"}),
        "body",
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(template(&spec, "/users/x/presence/setMood").is_none());
}
