//! The Teams connector against the Graph simulator on loopback, on a shared manual clock.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presync_engine::clock::{Clock, ManualClock};
use presync_engine::conformance::{self, Harness};
use presync_engine::{
    Availability, Connector, ConnectorError, Desired, ExternalId, NativeState, Origin, Presence,
};
use presync_entra::{Credential, EntraConfig, TokenClient};
use presync_teams::auth::{AppCredentials, DelegatedCredentials};
use presync_teams::client::GraphClient;
use presync_teams::config::TeamsConfig;
use presync_teams::connector::TeamsConnector;
use presync_teams::sim::{Fault, GraphSim, GraphSimConfig};
use presync_teams::subscriptions::{SubscriptionManager, SubscriptionSettings};

const TENANT: &str = "presync-sim";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-sim-secret-0123456789";
const SERVICE: &str = "99999999-0000-0000-0000-000000000001";
const REFRESH: &str = "initial-refresh-token";

fn user(i: usize) -> String {
    format!("aaaaaaaa-0000-4000-8000-{i:012x}")
}

struct Env {
    sim: GraphSim,
    sim_graph_url: String,
    clock: Arc<ManualClock>,
    connector: Arc<TeamsConnector>,
    client: GraphClient,
    users: usize,
    _dir: tempfile::TempDir,
}

async fn env(users: usize) -> Env {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut cfg = GraphSimConfig::new(TENANT, APP, SECRET, SERVICE, REFRESH);
    cfg.auto_tick = false;
    cfg.delivery_backoff = Duration::from_millis(10);
    let sim = GraphSim::new(cfg, clock.clone());
    for i in 0..users {
        sim.add_user(&user(i));
    }
    let base = format!("http://{}", sim.spawn().await.unwrap());
    let entra = EntraConfig::new(
        TENANT,
        APP,
        "https://graph.microsoft.com/.default",
        Credential::client_secret(SECRET.to_owned()),
    )
    .with_authority(base.clone());
    let app = Arc::new(AppCredentials::new(TokenClient::new(&entra).unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("refresh-token");
    std::fs::write(&store, REFRESH).unwrap();
    let delegated = Arc::new(DelegatedCredentials::new(
        sim.token_url(&base),
        APP,
        "https://graph.microsoft.com/Presence.Read.All offline_access",
        store,
    ));
    let client = GraphClient::new(
        &format!("{base}/v1.0"),
        app,
        Some(delegated),
        1_500,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = TeamsConfig::new(APP);
    config.graph_url = format!("{base}/v1.0");
    let connector = Arc::new(TeamsConnector::new(config, client.clone(), clock.clone()).unwrap());
    Env {
        sim,
        sim_graph_url: format!("{base}/v1.0"),
        clock,
        connector,
        client,
        users,
        _dir: dir,
    }
}

fn set(a: Availability) -> Desired {
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

#[async_trait]
impl Harness for Env {
    fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }
    fn users(&self) -> Vec<ExternalId> {
        (0..self.users).map(|i| ExternalId(user(i))).collect()
    }
    async fn remote_state(&self, u: &ExternalId) -> Option<Availability> {
        let (a, b) = self.sim.presence(u.as_str());
        Some(
            presync_teams::mapping::Mapping::to_canonical(&NativeState::new(format!("{a}/{b}")))
                .availability,
        )
    }
    async fn inject(&self, fault: conformance::Fault) -> bool {
        match fault {
            conformance::Fault::RateLimited { retry_after } => {
                self.sim.inject(Fault::RateLimited {
                    retry_after: retry_after.as_secs_f64(),
                })
            }
            conformance::Fault::ServerError => self.sim.inject(Fault::ServerError(503)),
            conformance::Fault::RejectWrite => self.sim.inject(Fault::ServerError(400)),
            conformance::Fault::Unauthorized => return false,
        }
        true
    }
}

#[tokio::test]
async fn the_connector_passes_the_engine_conformance_kit_against_the_simulator() {
    let env = env(2).await;
    let report = conformance::run(&env).await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test]
async fn keep_alive_prevents_fade_over_a_simulated_hour() {
    let kept = env(1).await;
    let u = ExternalId(user(0));
    kept.connector
        .write(&u, &set(Availability::Available))
        .await
        .unwrap();
    for _ in 0..60 {
        kept.clock.advance(60_000);
        kept.sim.tick();
        kept.connector.keep_alive().await;
        // The held pair: the 2025 values read the fade state as Available too.
        assert_eq!(
            kept.sim.presence_internal(&user(0)),
            ("Available".to_owned(), "Available".to_owned())
        );
    }
    // Without keep-alive the same session fades.
    let left = env(1).await;
    left.connector
        .write(&u, &set(Availability::Available))
        .await
        .unwrap();
    left.clock.advance(6 * 60_000);
    left.sim.tick();
    assert_ne!(
        left.sim.presence_internal(&user(0)),
        ("Available".to_owned(), "Available".to_owned())
    );
}

#[tokio::test]
async fn offline_clears_presyncs_session() {
    let env = env(1).await;
    let u = ExternalId(user(0));
    env.connector
        .write(&u, &set(Availability::Busy))
        .await
        .unwrap();
    assert!(env.sim.session(&user(0), APP).is_some());
    env.connector
        .write(&u, &set(Availability::Offline))
        .await
        .unwrap();
    assert!(env.sim.session(&user(0), APP).is_none());
    assert_eq!(env.sim.presence(&user(0)).0, "Offline");
    assert!(env.connector.owned_sessions().await.is_empty());
}

#[tokio::test]
async fn a_persons_own_dnd_outranks_presyncs_session() {
    let env = env(1).await;
    let u = ExternalId(user(0));
    env.sim.person_signs_in(&user(0));
    env.connector
        .write(&u, &set(Availability::Available))
        .await
        .unwrap();
    env.sim
        .person_sets_preferred(&user(0), "DoNotDisturb", "DoNotDisturb");
    let states = env
        .connector
        .read_all(std::slice::from_ref(&u))
        .await
        .unwrap();
    assert_eq!(
        env.connector.to_canonical(&states[0].native).availability,
        Availability::DoNotDisturb
    );
    assert!(
        env.sim.session(&user(0), APP).is_some(),
        "presync's session is still there, outranked"
    );
}

#[tokio::test]
async fn reads_carry_graphs_sequence_number_in_the_order_of_the_changes() {
    let env = env(1).await;
    let u = ExternalId(user(0));
    env.sim.person_signs_in(&user(0));
    let mut seen = Vec::new();
    for (availability, activity) in [("Busy", "Busy"), ("Away", "Away"), ("Busy", "Busy")] {
        env.sim
            .person_sets_preferred(&user(0), availability, activity);
        let states = env
            .connector
            .read_all(std::slice::from_ref(&u))
            .await
            .unwrap();
        seen.push(
            states[0]
                .sequence
                .expect("the simulator emits sequenceNumber"),
        );
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test]
async fn reads_are_batched_650_ids_at_a_time() {
    let env = env(651).await;
    let ids: Vec<ExternalId> = (0..651).map(|i| ExternalId(user(i))).collect();
    let states = env.connector.read_all(&ids).await.unwrap();
    assert_eq!(states.len(), 651);
    let sizes: Vec<usize> = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("getPresencesByUserId"))
        .map(|r| r.body.as_ref().unwrap()["ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![650, 1]);
}

#[tokio::test]
async fn a_decimal_retry_after_is_honoured() {
    let env = env(1).await;
    env.sim.inject(Fault::RateLimited { retry_after: 2.5 });
    let err = env
        .connector
        .write(&ExternalId(user(0)), &set(Availability::Busy))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited { .. }));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(2_500)));
}

async fn receiver(
    client_state: &str,
) -> (
    String,
    Arc<presync_teams::webhook::TeamsIngress>,
    tempfile::TempDir,
) {
    receiver_with(client_state, None).await
}

async fn receiver_with(
    client_state: &str,
    keys: Option<presync_teams::crypto::DecryptionKeys>,
) -> (
    String,
    Arc<presync_teams::webhook::TeamsIngress>,
    tempfile::TempDir,
) {
    use presync_engine::config::EngineConfig;
    use presync_engine::engine::Engine;
    use presync_engine::memory::MemorySystem;
    use presync_engine::store::Store;
    use presync_engine::topology::TopologyConfig;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let mut connectors: std::collections::BTreeMap<_, Arc<dyn Connector>> =
        std::collections::BTreeMap::new();
    connectors.insert(
        "teams".into(),
        MemorySystem::new("teams", clock.clone()).connector() as Arc<dyn Connector>,
    );
    connectors.insert(
        "d365".into(),
        MemorySystem::new("d365", clock).connector() as Arc<dyn Connector>,
    );
    let engine = Engine::new(
        store,
        connectors.clone(),
        &TopologyConfig::full_mesh(&connectors),
        EngineConfig::default(),
    )
    .unwrap();
    let (reread, _) = tokio::sync::mpsc::unbounded_channel();
    let (lifecycle, _) = tokio::sync::mpsc::unbounded_channel();
    let ingress = Arc::new(presync_teams::webhook::TeamsIngress {
        engine,
        system: "teams".into(),
        client_state: client_state.to_owned(),
        keys,
        reread,
        lifecycle,
        max_body: presync_teams::webhook::MAX_BODY,
        stats: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}{}",
        listener.local_addr().unwrap(),
        presync_teams::webhook::PATH
    );
    let router = presync_teams::webhook::router(ingress.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, ingress, dir)
}

#[tokio::test]
async fn subscriptions_pass_the_handshake_are_renewed_and_recreated_after_a_404() {
    let env = env(3).await;
    let (url, ingress, _dir) = receiver("client-state-secret").await;
    let manager = SubscriptionManager::new(
        env.client.clone(),
        SubscriptionSettings {
            notification_url: url,
            lifecycle_url: None,
            client_state: "client-state-secret".into(),
            lifetime: Duration::from_secs(45 * 60),
            renew_before: Duration::from_secs(60 * 60),
            encryption: None,
        },
        env.clock.clone(),
    );
    let users: Vec<String> = (0..3).map(user).collect();
    let first = manager.maintain(&users).await;
    assert_eq!(first.created, 1, "{first:?}");
    assert!(
        ingress
            .stats
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(env.sim.subscriptions().len(), 1);
    // Due for renewal (renew_before exceeds the lifetime): PATCHed.
    let second = manager.maintain(&users).await;
    assert_eq!(second.renewed, 1, "{second:?}");
    // Graph drops it (it expires): the next renewal meets 404 and recreates it.
    env.clock.advance(61 * 60_000);
    env.sim.tick();
    assert!(env.sim.subscriptions().is_empty());
    let third = manager.maintain(&users).await;
    assert_eq!(third.recreated, 1, "{third:?}");
    assert_eq!(env.sim.subscriptions().len(), 1);
}

#[tokio::test]
async fn a_wrong_client_state_is_refused_per_item_and_nothing_is_stored() {
    let (url, ingress, _dir) = receiver("the-right-state").await;
    let item = |state: &str, u: &str| {
        serde_json::json!({
            "subscriptionId": "s1", "clientState": state, "changeType": "updated", "tenantId": "t",
            "resource": format!("communications/presences/{u}"),
            "resourceData": {"@odata.id": format!("users/{u}/presence"), "@odata.type": "#microsoft.graph.presence", "id": u}
        })
    };
    let http = reqwest::Client::new();
    let all_wrong = serde_json::json!({ "value": [item("wrong", &user(0))] });
    let r = http.post(&url).json(&all_wrong).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let mixed = serde_json::json!({ "value": [item("wrong", &user(0)), item("the-right-state", &user(1))] });
    let r = http.post(&url).json(&mixed).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        ingress
            .stats
            .refused_items
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        ingress
            .stats
            .rereads_queued
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        ingress.engine.store().queue_depths().await.unwrap().inbox,
        0
    );
    let _ = Clock::now(&ManualClock::new(0));
}

/// Presence values in plain text rest on `clientState` alone: whoever learnt it could make a
/// representative Available. They are not used; the user is read.
#[tokio::test]
async fn presence_values_in_plain_text_are_not_trusted_the_user_is_read() {
    let (url, ingress, _dir) = receiver("the-right-state").await;
    let u = user(0);
    let forged = serde_json::json!({ "value": [{
        "subscriptionId": "s1", "clientState": "the-right-state", "changeType": "updated",
        "tenantId": "t", "resource": format!("communications/presences/{u}"),
        "resourceData": {"@odata.id": format!("users/{u}/presence"),
            "@odata.type": "#microsoft.graph.presence", "id": u,
            "availability": "Available", "activity": "Available"}
    }]});
    let r = reqwest::Client::new()
        .post(&url)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&ingress.stats.plain_values_ignored), 1);
    assert_eq!(load(&ingress.stats.rereads_queued), 1);
    assert_eq!(
        ingress.engine.store().queue_depths().await.unwrap().inbox,
        0,
        "nothing taken from the plain values"
    );
}

#[tokio::test]
async fn a_rich_notification_is_decrypted_and_stored_as_the_persons_presence() {
    let key = include_str!("../../../fixtures/entra/test-only-key.pem");
    let keys =
        presync_teams::crypto::DecryptionKeys::from_pem("presync-test-only-cert", key).unwrap();
    let (url, ingress, _dir) = receiver_with("presync-test-state-two", Some(keys)).await;
    let body = include_str!("../../../fixtures/teams/rich-presence.json");
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        ingress
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        ingress
            .stats
            .rereads_queued
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no read needed"
    );
    assert_eq!(
        ingress.engine.store().queue_depths().await.unwrap().inbox,
        1
    );
}

#[tokio::test]
async fn the_validation_handshake_echoes_the_decoded_token_as_text() {
    let (url, _ingress, _dir) = receiver("s").await;
    let r = reqwest::Client::new()
        .post(format!("{url}?validationToken=a%2Bb%20c%3Dd"))
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "a+b c=d");
}

#[tokio::test]
async fn a_restarted_process_keeps_alive_the_sessions_presyncs_records_name() {
    let env = env(1).await;
    let u = ExternalId(user(0));
    env.connector
        .write(&u, &set(Availability::Available))
        .await
        .unwrap();
    let written_at = env.clock.now();
    // A new process (a restart, or another instance) knows the session only from the records.
    let mut config = TeamsConfig::new(APP);
    config.graph_url = env.sim_graph_url.clone();
    let fresh = TeamsConnector::new(config, env.client.clone(), env.clock.clone()).unwrap();
    let adopted = fresh
        .adopt_sessions([(user(0), Some(Availability::Available), written_at)])
        .await;
    assert_eq!(adopted, 1);
    for _ in 0..30 {
        env.clock.advance(60_000);
        env.sim.tick();
        fresh.keep_alive().await;
        assert_eq!(
            env.sim.presence(&user(0)),
            ("Available".to_owned(), "Available".to_owned())
        );
    }
    // A withdrawal in the records drops the session from what is kept alive.
    fresh
        .adopt_sessions([(user(0), None, env.clock.now())])
        .await;
    assert!(fresh.owned_sessions().await.is_empty());
}
