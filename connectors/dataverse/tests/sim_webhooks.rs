//! Webhook deliveries from the simulator to a receiver on loopback: the headers and the three
//! authentication modes, the Create event, Dataverse's single retry after 502/503/504, and the
//! delivery faults (drop, duplicate, reorder, size exceeded).
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::Duration;

use presync_dataverse::config::WebhookAuth;
use presync_dataverse::context::{agent_status, parse, Derived};
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{Activity, Fault};
use serde_json::Value;
use sim_support::*;

/// A simulator whose webhook goes to a fresh receiver, with the two start-up Create events
/// already delivered and forgotten.
async fn hooked(auth: WebhookAuth) -> (Env, Receiver) {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| c.webhook = Some(target(addr, auth))).await;
    env.sim.wait_deliveries_idle().await;
    rx.got.lock().unwrap().clear();
    (env, rx)
}

fn presence_of(body: &Value) -> String {
    body["InputParameters"][0]["value"]["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "msdyn_currentpresenceid")
        .unwrap()["value"]["Id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn row_version(body: &Value) -> i64 {
    body["InputParameters"][0]["value"]["RowVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn header_authentication_arrives_with_the_dataverse_headers() {
    let (env, rx) = hooked(header_auth()).await;
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.header("x-presync-secret"), Some("0123456789abcdef0123"));
    assert_eq!(d.query, None);
    assert_eq!(d.header("x-ms-dynamics-organization"), Some(ORG_HOST));
    assert_eq!(
        d.header("x-ms-dynamics-entity-name"),
        Some("msdyn_agentstatus")
    );
    assert_eq!(d.header("x-ms-dynamics-request-name"), Some("Update"));
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert!(d.header("x-request-id").is_some());
    let body = d.json();
    assert_eq!(
        d.header("x-ms-correlation-request-id"),
        body["CorrelationId"].as_str()
    );
    assert_eq!(d.header("x-ms-dynamics-msg-size-exceeded"), None);
    let sent = env.sim.deliveries().pop().unwrap();
    assert_eq!(
        (sent.status, sent.attempt, sent.message.as_str()),
        (Some(200), 1, "Update")
    );
    assert!(
        sent.body.as_bytes() == &d.body[..],
        "the recorded body is what arrived"
    );
    assert_eq!(
        sent.header("x-presync-secret"),
        Some("0123456789abcdef0123")
    );
}

#[tokio::test]
async fn webhook_key_arrives_as_the_code_query_parameter() {
    let (env, rx) = hooked(WebhookAuth::WebhookKey {
        value: "azure-function-key-0123".into(),
    })
    .await;
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    assert_eq!(
        rx.got()[0].query.as_deref(),
        Some("code=azure-function-key-0123")
    );
}

#[tokio::test]
async fn query_string_authentication_arrives_as_its_own_parameter() {
    let (env, rx) = hooked(WebhookAuth::HttpQueryString {
        name: "secret".into(),
        value: "a b&c".into(),
    })
    .await;
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    let query = rx.got()[0].query.clone().unwrap();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(pairs, vec![("secret".to_owned(), "a b&c".to_owned())]);
}

#[tokio::test]
async fn a_new_agent_emits_a_create_in_the_new_agent_samples_shape() {
    let (env, rx) = hooked(header_auth()).await;
    let carol = "c0c0c0c0-0000-4000-8000-000000000001";
    let id = env.sim.add_agent(
        carol,
        "0a0a0a0a-0000-4000-8000-0000000000cc",
        "Carol",
        builtin::OFFLINE,
        false,
    );
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-ms-dynamics-request-name"), Some("Create"));
    let text = std::str::from_utf8(&got[0].body).unwrap();
    assert!(
        text.contains(r#""__type":"Entity:http:\/\/schemas.microsoft.com\/xrm\/2011\/Contracts""#)
    );
    let v = got[0].json();
    assert_eq!(v["MessageName"], "Create");
    assert_eq!(v["Mode"], 0);
    assert_eq!(v["IsInTransaction"], true);
    assert_eq!(v["OutputParameters"][0]["key"], "id");
    assert_eq!(v["OutputParameters"][0]["value"], id.as_str());
    assert_eq!(
        v["ParentContext"]["OwningExtension"]["Name"],
        "ObjectModel Implementation"
    );
    let ctx = parse(&got[0].body).unwrap();
    let Derived::Change(c) = agent_status(&ctx, false) else {
        panic!("not a change");
    };
    assert_eq!((c.event.as_str(), c.agent_id.as_str()), ("Create", carol));
    assert_eq!(c.presence_id.as_deref(), Some(builtin::OFFLINE));
    assert_eq!(
        (c.logged_in, c.modified_by.as_deref()),
        (Some(false), Some("SYSTEM"))
    );
}

#[tokio::test]
async fn no_create_is_sent_without_a_create_step() {
    let (rx, addr) = Receiver::start().await;
    let env = start(|c| {
        let mut t = target(addr, header_auth());
        t.emit_create = false;
        c.webhook = Some(t);
    })
    .await;
    env.sim.system_sets(ANN, builtin::BUSY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-ms-dynamics-request-name"), Some("Update"));
    assert_eq!(agent_modified_by(&got[0].json()), "SYSTEM");
}

fn agent_modified_by(body: &Value) -> String {
    body["InputParameters"][0]["value"]["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "msdyn_presencemodifiedby")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_503_is_retried_exactly_once_and_a_500_not_at_all() {
    let (env, rx) = hooked(header_auth()).await;
    rx.answer_next(&[503, 503]);
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 2, "one retry, then Dataverse gives up");
    assert!(got[0].body == got[1].body, "the retry is the same body");
    let d = env.sim.deliveries();
    let last_two: Vec<_> = d[d.len() - 2..]
        .iter()
        .map(|d| (d.seq, d.attempt, d.status))
        .collect();
    let seq = last_two[0].0;
    assert_eq!(last_two, vec![(seq, 1, Some(503)), (seq, 2, Some(503))]);

    rx.got.lock().unwrap().clear();
    rx.answer_next(&[504]);
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    assert_eq!(rx.got().len(), 2, "504 then 200");

    rx.got.lock().unwrap().clear();
    rx.answer_next(&[500]);
    env.sim.agent_sets(ANN, builtin::AVAILABLE);
    env.sim.wait_deliveries_idle().await;
    assert_eq!(rx.got().len(), 1, "500 is not retried");
    rx.answer_next(&[429]);
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.wait_deliveries_idle().await;
    assert_eq!(rx.got().len(), 2, "429 is not retried");
}

#[tokio::test]
async fn dropped_webhooks_never_arrive_but_the_row_changed() {
    let (env, rx) = hooked(header_auth()).await;
    env.sim.inject(Fault::DropWebhooks(1));
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(presence_of(&got[0].json()), builtin::AWAY);
    assert_eq!(env.sim.dropped_webhooks().len(), 1);
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(builtin::AWAY));
}

#[tokio::test]
async fn duplicated_webhooks_arrive_twice_with_the_same_body() {
    let (env, rx) = hooked(header_auth()).await;
    env.sim.inject(Fault::DuplicateWebhooks(1));
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(got.len(), 3);
    assert!(got[0].body == got[1].body);
    assert_eq!(got[0].json()["OperationId"], got[1].json()["OperationId"]);
    assert_ne!(got[1].json()["OperationId"], got[2].json()["OperationId"]);
    let d = env.sim.deliveries();
    let copies: Vec<bool> = d[d.len() - 3..].iter().map(|d| d.duplicate).collect();
    assert_eq!(copies, vec![false, true, false]);
}

#[tokio::test]
async fn reordered_webhooks_arrive_newest_first() {
    let (env, rx) = hooked(header_auth()).await;
    env.sim.inject(Fault::ReorderWebhooks(3));
    for p in [builtin::BUSY, builtin::AWAY, builtin::BUSY_DND] {
        env.sim.agent_sets(ANN, p);
    }
    env.sim.agent_sets(ANN, builtin::AVAILABLE);
    env.sim.wait_deliveries_idle().await;
    eventually("four deliveries", || rx.got().len() == 4).await;
    let bodies: Vec<Value> = rx.got().iter().map(|c| c.json()).collect();
    let presences: Vec<String> = bodies.iter().map(presence_of).collect();
    assert_eq!(
        presences,
        vec![
            builtin::BUSY_DND,
            builtin::AWAY,
            builtin::BUSY,
            builtin::AVAILABLE
        ]
    );
    let versions: Vec<i64> = bodies.iter().map(row_version).collect();
    assert!(versions[0] > versions[1] && versions[1] > versions[2] && versions[3] > versions[0]);
}

#[tokio::test]
async fn size_exceeded_webhooks_lose_the_context_and_say_so() {
    let (env, rx) = hooked(header_auth()).await;
    env.sim.inject(Fault::SizeExceededWebhooks(1));
    env.sim.agent_sets(ANN, builtin::BUSY);
    env.sim.agent_sets(ANN, builtin::AWAY);
    env.sim.wait_deliveries_idle().await;
    let got = rx.got();
    assert_eq!(
        got[0].header("x-ms-dynamics-msg-size-exceeded"),
        Some("true")
    );
    let v = got[0].json();
    for k in [
        "ParentContext",
        "InputParameters",
        "PreEntityImages",
        "PostEntityImages",
    ] {
        assert!(v.get(k).is_none(), "{k} must be stripped");
    }
    let row = env.sim.row(ANN).unwrap();
    let ctx = parse(&got[0].body).unwrap();
    match agent_status(&ctx, true) {
        Derived::ReadBack { entity, id, .. } => {
            assert_eq!(
                (entity.as_str(), id.as_str()),
                ("msdyn_agentstatus", row.agent_status_id.as_str())
            );
        }
        other => panic!("expected a read-back: {other:?}"),
    }
    assert_eq!(got[1].header("x-ms-dynamics-msg-size-exceeded"), None);
    assert!(got[1].json().get("InputParameters").is_some());
}

#[tokio::test]
async fn an_unreachable_receiver_is_a_failed_delivery_and_not_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let env = start(|c| c.webhook = Some(target(addr, header_auth()))).await;
    env.sim.wait_deliveries_idle().await;
    let d = env.sim.deliveries();
    assert_eq!(d.len(), 2, "one attempt for each start-up Create");
    assert!(d.iter().all(|d| d.status.is_none() && d.error.is_some()));
}

#[tokio::test]
async fn agents_change_on_their_own_and_every_change_is_sent() {
    let (env, rx) = hooked(header_auth()).await;
    let mut activity = Activity::new(42, Duration::from_millis(2));
    activity.max_changes = Some(20);
    activity.sign_out_chance = 0.2;
    env.sim.start_activity(activity).await.unwrap();
    env.sim.wait_deliveries_idle().await;
    eventually("twenty deliveries", || rx.got().len() == 20).await;
    let bodies: Vec<Value> = rx.got().iter().map(|c| c.json()).collect();
    let versions: Vec<i64> = bodies.iter().map(row_version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "in order: {versions:?}"
    );
    assert!(bodies.iter().any(|b| agent_modified_by(b) == "SYSTEM"));
    for agent in [ANN, BOB] {
        let last = bodies.iter().rev().find(|b| {
            b["InputParameters"][0]["value"]["Attributes"]
                .to_string()
                .contains(agent)
        });
        if let Some(last) = last {
            assert_eq!(
                presence_of(last),
                env.sim.presence(agent).unwrap(),
                "the last webhook is the truth"
            );
        }
    }
}
