//! The webhook ingress through its real router (no socket, no Microsoft), on a real SQLite
//! store: authentication in the three modes Dataverse sends, refusals that store nothing,
//! malformed and oversized bodies, unrelated entities, redeliveries.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use presync_dataverse::client::Credentials;
use presync_dataverse::config::{DataverseConfig, WebhookAuth, WebhookConfig};
use presync_dataverse::connector::DataverseConnector;
use presync_dataverse::webhook::{router, Ingress, IngressStats, PATH};
use presync_engine::config::EngineConfig;
use presync_engine::engine::Engine;
use presync_engine::memory::MemorySystem;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{Connector, ConnectorError, Representative};
use tower::ServiceExt;

const UPDATE: &str =
    include_str!("../../../fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json");
const ACCOUNT: &str = include_str!(
    "../../../fixtures/dataverse/albanian-xrm-DeserializationFromTextSamplesTests-0.json"
);
const AGENT: &str = "97c90b02-4e38-ef11-a315-000d3a5a54dc";
const SECRET: &str = "s3cret-0123456789-abcdef";

#[derive(Debug)]
struct NoToken;

#[async_trait]
impl Credentials for NoToken {
    async fn bearer(&self) -> Result<String, ConnectorError> {
        Err(ConnectorError::Unauthorized {
            message: "no remote in this test".into(),
        })
    }
    fn invalidate(&self) {}
}

struct Fixture {
    _dir: tempfile::TempDir,
    ingress: Arc<Ingress>,
}

async fn fixture(auth: WebhookAuth, organization: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    let mut hook = WebhookConfig::header("x", "y");
    hook.auth = auth;
    hook.organization = organization.map(str::to_owned);
    hook.max_body_bytes = 64 * 1024;
    let config = DataverseConfig::new("https://contoso.crm.dynamics.com", hook.clone());
    let dataverse = Arc::new(DataverseConnector::new(config, Arc::new(NoToken)).unwrap());
    let teams = MemorySystem::new("teams", Arc::new(presync_engine::clock::SystemClock));
    let mut connectors: BTreeMap<_, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert("dataverse".into(), dataverse.clone() as Arc<dyn Connector>);
    connectors.insert("teams".into(), teams.connector() as Arc<dyn Connector>);
    let topology = TopologyConfig::full_mesh(&connectors);
    let engine = Engine::new(store, connectors, &topology, EngineConfig::default()).unwrap();
    let mut ids = BTreeMap::new();
    ids.insert("dataverse".into(), AGENT.into());
    ids.insert("teams".into(), "aad-1".into());
    engine
        .store()
        .upsert_representative(
            &Representative {
                id: "rep-1".into(),
                display_name: "Rep".into(),
                external_ids: ids,
            },
            0,
        )
        .await
        .unwrap();
    let ingress = Arc::new(Ingress {
        engine,
        system: "dataverse".into(),
        connector: dataverse,
        config: hook,
        discovery: None,
        stats: IngressStats::default(),
    });
    Fixture { _dir: dir, ingress }
}

fn header_auth() -> WebhookAuth {
    WebhookAuth::HttpHeader {
        name: "x-presync-secret".into(),
        value: SECRET.into(),
    }
}

async fn post(
    f: &Fixture,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post(uri).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router(f.ingress.clone())
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn inbox(f: &Fixture) -> i64 {
    f.ingress.engine.store().queue_depths().await.unwrap().inbox
}

#[tokio::test]
async fn the_right_secret_is_accepted_in_each_of_the_three_modes() {
    let modes = [
        (
            header_auth(),
            PATH.to_owned(),
            vec![("x-presync-secret", SECRET)],
        ),
        (
            WebhookAuth::WebhookKey {
                value: SECRET.into(),
            },
            format!("{PATH}?code={SECRET}"),
            vec![],
        ),
        (
            WebhookAuth::HttpQueryString {
                name: "token".into(),
                value: SECRET.into(),
            },
            format!("{PATH}?other=1&token={SECRET}"),
            vec![],
        ),
    ];
    for (auth, uri, headers) in modes {
        let f = fixture(auth, None).await;
        let (status, body) = post(&f, &uri, &headers, UPDATE).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(inbox(&f).await, 1);
    }
}

/// An authentication mode, the URI to post to, and the headers to send.
type Case = (WebhookAuth, String, Vec<(&'static str, &'static str)>);

#[tokio::test]
async fn a_wrong_or_missing_secret_gets_401_and_stores_nothing() {
    let cases: [Case; 4] = [
        (header_auth(), PATH.to_owned(), vec![]),
        (
            header_auth(),
            PATH.to_owned(),
            vec![("x-presync-secret", "s3cret-0123456789-abcdeX")],
        ),
        (
            WebhookAuth::WebhookKey {
                value: SECRET.into(),
            },
            format!("{PATH}?code=nope"),
            vec![],
        ),
        (
            WebhookAuth::HttpQueryString {
                name: "token".into(),
                value: SECRET.into(),
            },
            PATH.to_owned(),
            vec![],
        ),
    ];
    for (auth, uri, headers) in cases {
        let f = fixture(auth, None).await;
        let (status, body) = post(&f, &uri, &headers, UPDATE).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains("secret") || msg.contains("key"), "{msg}");
        assert!(!msg.contains(SECRET));
        assert_eq!(inbox(&f).await, 0);
        assert_eq!(f.ingress.stats.unauthorized.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn a_request_from_another_organization_is_refused() {
    let f = fixture(header_auth(), Some("contoso.crm.dynamics.com")).await;
    let (status, _) = post(
        &f,
        PATH,
        &[
            ("x-presync-secret", SECRET),
            ("x-ms-dynamics-organization", "evil.crm.dynamics.com"),
        ],
        UPDATE,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &f,
        PATH,
        &[
            ("x-presync-secret", SECRET),
            ("x-ms-dynamics-organization", "Contoso.crm.dynamics.com"),
        ],
        UPDATE,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn malformed_json_gets_400_with_a_message_and_stores_nothing() {
    let f = fixture(header_auth(), None).await;
    let (status, body) = post(
        &f,
        PATH,
        &[("x-presync-secret", SECRET)],
        "{\"MessageName\": \"Update\",",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("line") && msg.contains("column"), "{msg}");
    let (status, body) = post(
        &f,
        PATH,
        &[("x-presync-secret", SECRET)],
        r#"{"InputParameters": 5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("InputParameters"),
        "{body}"
    );
    assert_eq!(inbox(&f).await, 0);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let f = fixture(header_auth(), None).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let (status, body) = post(&f, PATH, &[("x-presync-secret", SECRET)], big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("65536"), "{body}");
    assert_eq!(inbox(&f).await, 0);
}

#[tokio::test]
async fn an_unrelated_entity_is_acknowledged_and_ignored() {
    let f = fixture(header_auth(), None).await;
    let (status, body) = post(&f, PATH, &[("x-presync-secret", SECRET)], ACCOUNT).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["entity"], "account");
    assert!(body["ignored"].is_string());
    assert_eq!(inbox(&f).await, 0);
    assert_eq!(f.ingress.stats.ignored.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_redelivery_is_acknowledged_and_stored_once() {
    let f = fixture(header_auth(), None).await;
    let (first, _) = post(&f, PATH, &[("x-presync-secret", SECRET)], UPDATE).await;
    let (second, body) = post(&f, PATH, &[("x-presync-secret", SECRET)], UPDATE).await;
    assert_eq!((first, second), (StatusCode::ACCEPTED, StatusCode::OK));
    assert!(body["duplicate"].is_string());
    assert_eq!(inbox(&f).await, 1);
}

#[tokio::test]
async fn the_stored_observation_carries_what_the_event_says() {
    let f = fixture(header_auth(), None).await;
    post(&f, PATH, &[("x-presync-secret", SECRET)], UPDATE).await;
    f.ingress.engine.resolve_pending().await.unwrap();
    let view = f
        .ingress
        .engine
        .store()
        .rep_view(&"rep-1".into())
        .await
        .unwrap();
    let c = view.canonical.unwrap();
    assert_eq!(c.availability, presync_engine::Availability::Busy);
    assert_eq!(c.source.as_str(), "dataverse");
    assert_eq!(c.source_time, 1_722_582_038_000);
    let observed = view
        .systems
        .get(&"dataverse".into())
        .unwrap()
        .observed
        .clone()
        .unwrap();
    assert_eq!(observed.sequence, Some(5_948_260));
}
