//! The real engine with the Teams connector against the Graph simulator (polling mode) and an
//! in-memory D365, on one manual clock: presync's own session echoes back and is not propagated,
//! the person's own DND outranks presync's session and is taken as the person's, and the
//! sticky-echo case settles with the person's real state.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::engine::Engine;
use presync_engine::memory::MemorySystem;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{Availability, Connector, RepId, Representative};
use presync_entra::{Credential, EntraConfig, TokenClient};
use presync_teams::auth::AppCredentials;
use presync_teams::client::GraphClient;
use presync_teams::config::TeamsConfig;
use presync_teams::connector::TeamsConnector;
use presync_teams::poll::Poller;
use presync_teams::sim::{Fault, GraphSim, GraphSimConfig};

const TENANT: &str = "presync-sim";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-sim-secret-0123456789";
const AAD: &str = "cccccccc-0000-4000-8000-000000000001";
const AGENT: &str = "agent-1";

struct World {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    sim: GraphSim,
    d365: MemorySystem,
    engine: Engine,
    poller: Poller,
    base: String,
}

async fn world() -> World {
    let clock = Arc::new(ManualClock::new(1_750_000_000_000));
    let mut cfg = GraphSimConfig::new(
        TENANT,
        APP,
        SECRET,
        "99999999-0000-0000-0000-000000000001",
        "rt",
    );
    cfg.auto_tick = false;
    let sim = GraphSim::new(cfg, clock.clone());
    sim.add_user(AAD);
    let base = format!("http://{}", sim.spawn().await.unwrap());
    let entra = EntraConfig::new(
        TENANT,
        APP,
        "https://graph.microsoft.com/.default",
        Credential::client_secret(SECRET.to_owned()),
    )
    .with_authority(base.clone());
    let client = GraphClient::new(
        &format!("{base}/v1.0"),
        Arc::new(AppCredentials::new(TokenClient::new(&entra).unwrap())),
        None,
        1_500,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = TeamsConfig::new(APP);
    config.graph_url = format!("{base}/v1.0");
    let teams = Arc::new(TeamsConnector::new(config, client, clock.clone()).unwrap());
    let d365 = MemorySystem::new("d365", clock.clone());
    d365.add_user(AGENT, Availability::Offline);
    let mut connectors: BTreeMap<_, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert("d365".into(), d365.connector() as Arc<dyn Connector>);
    connectors.insert("teams".into(), teams.clone() as Arc<dyn Connector>);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    ids.insert("d365".into(), AGENT.into());
    ids.insert("teams".into(), AAD.into());
    store
        .upsert_representative(
            &Representative {
                id: "rep".into(),
                display_name: "Rep".into(),
                external_ids: ids,
            },
            0,
        )
        .await
        .unwrap();
    let topology = TopologyConfig::full_mesh(&connectors);
    let engine = Engine::with_clock(
        store,
        connectors,
        &topology,
        EngineConfig::default(),
        clock.clone(),
    )
    .unwrap();
    let poller = Poller::new(engine.clone(), "teams".into(), teams);
    World {
        _dir: dir,
        clock,
        sim,
        d365,
        engine,
        poller,
        base,
    }
}

impl World {
    /// Poll Teams, deliver D365's pushes, resolve, dispatch, until quiet.
    async fn settle(&mut self) {
        for _ in 0..6 {
            self.clock.advance(1_000);
            self.sim.tick();
            self.poller.poll_once().await.unwrap();
            for d in self.d365.take_deliveries() {
                self.engine.ingest(d).await.unwrap();
            }
            self.engine.resolve_pending().await.unwrap();
            self.engine.dispatch_pending().await.unwrap();
        }
    }

    /// The rule of the last decision on a Teams observation that was news (not a later read
    /// of the same thing, `unchanged` or `duplicate`, nor one presync set aside as `stale`: a
    /// read dated the millisecond its write landed, which this test's clock makes common).
    async fn last_teams_rule(&self) -> String {
        let h = self
            .engine
            .store()
            .history(&RepId("rep".into()), 50)
            .await
            .unwrap();
        h.iter()
            .find(|h| {
                h.system == "teams"
                    && !["write", "unchanged", "duplicate", "stale"].contains(&h.rule.as_str())
            })
            .map(|h| h.rule.clone())
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presync_session_echo_is_suppressed_and_the_persons_dnd_wins() {
    let mut w = world().await;
    w.sim.person_signs_in(AAD);
    w.settle().await;
    let writes_before = w.d365.writes().len();

    // D365 goes Busy: presync's Teams session says Busy, and its echo goes nowhere.
    w.clock.advance(1_000);
    w.d365.person_sets(&AGENT.into(), Availability::Busy);
    w.settle().await;
    assert_eq!(w.sim.session(AAD, APP).unwrap().posted_availability, "Busy");
    assert_eq!(w.sim.presence_internal(AAD).0, "Busy");
    assert_eq!(w.last_teams_rule().await, "echo");
    assert_eq!(
        w.d365.writes().len(),
        writes_before,
        "the echo was not written back to D365"
    );

    // The person sets DND by hand in Teams: it outranks presync's session, and it is theirs.
    w.clock.advance(1_000);
    w.sim
        .person_sets_preferred(AAD, "DoNotDisturb", "DoNotDisturb");
    w.settle().await;
    assert_eq!(w.last_teams_rule().await, "last_writer_wins");
    assert_eq!(
        w.d365.state(&AGENT.into()),
        Some(Availability::DoNotDisturb)
    );
    assert!(
        w.sim.session(AAD, APP).is_none(),
        "presync's stale Busy session was withdrawn"
    );

    // The person clears DND: their own client says Available, and so does everything.
    w.clock.advance(1_000);
    w.sim.person_clears_preferred(AAD);
    w.settle().await;
    assert_eq!(
        w.sim.presence(AAD),
        ("Available".to_owned(), "Available".to_owned())
    );
    assert_eq!(w.d365.state(&AGENT.into()), Some(Availability::Available));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reports_only_what_changed() {
    let mut w = world().await;
    assert_eq!(
        w.poller.poll_once().await.unwrap(),
        1,
        "the first pass reports every user"
    );
    assert_eq!(w.poller.poll_once().await.unwrap(), 0, "nothing changed");
    w.sim.person_joins_meeting(AAD);
    assert_eq!(w.poller.poll_once().await.unwrap(), 1);
    assert_eq!(w.poller.poll_once().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_notifications_become_one_coalesced_read() {
    let w = world().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let connector = presync_teams_connector(&w).await;
    let reader = presync_teams::webhook::spawn_reader(
        w.engine.clone(),
        "teams".into(),
        connector,
        rx,
        Duration::from_millis(50),
    );
    w.sim.person_joins_meeting(AAD);
    for _ in 0..3 {
        tx.send((AAD.to_owned(), w.engine.now())).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reads = w
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("getPresencesByUserId"))
            .count();
        if w.engine.store().queue_depths().await.unwrap().inbox == 1 {
            assert_eq!(reads, 1, "three notifications, one read");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
}

/// Found by `presync soak`: a read after notifications that met a 429 or a 5xx was left to the
/// reconciler, so a person's meeting reached D365 only at the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_notifications_that_fails_is_read_again() {
    let w = world().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let connector = presync_teams_connector(&w).await;
    let reader = presync_teams::webhook::spawn_reader(
        w.engine.clone(),
        "teams".into(),
        connector,
        rx,
        Duration::from_millis(20),
    );
    w.sim.inject(Fault::ServerError(503));
    w.sim.inject(Fault::RateLimited { retry_after: 0.2 });
    w.sim.person_joins_meeting(AAD);
    // The notification arrived 3 s before the read that succeeds.
    let notified = w.engine.now() - 3_000;
    tx.send((AAD.to_owned(), notified)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.engine.store().queue_depths().await.unwrap().inbox == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failed read was never made again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let statuses: Vec<u16> = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("getPresencesByUserId"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 429, 200]);
    reader.abort();
    // Found by `presync soak`: the late read dated the meeting by itself, after a D365 change
    // made meanwhile. The meeting was set by the time the notification arrived.
    w.engine.resolve_pending().await.unwrap();
    let view = w.engine.store().rep_view(&"rep".into()).await.unwrap();
    let canonical = view.canonical.unwrap();
    assert_eq!(
        (canonical.availability, canonical.source_time),
        (Availability::Busy, notified)
    );
}

/// A second connector on the same simulator, for tests that need the concrete type.
async fn presync_teams_connector(w: &World) -> Arc<TeamsConnector> {
    let base = w.base.clone();
    let entra = EntraConfig::new(
        TENANT,
        APP,
        "https://graph.microsoft.com/.default",
        Credential::client_secret(SECRET.to_owned()),
    )
    .with_authority(base.clone());
    let client = GraphClient::new(
        &format!("{base}/v1.0"),
        Arc::new(AppCredentials::new(TokenClient::new(&entra).unwrap())),
        None,
        1_500,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = TeamsConfig::new(APP);
    config.graph_url = format!("{base}/v1.0");
    Arc::new(TeamsConnector::new(config, client, w.clock.clone()).unwrap())
}

/// Found by `presync soak`: one slow answer to a read after notifications held back every
/// read after it, so a meeting that ended meanwhile stayed unseen (and D365 held) for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_after_notifications_does_not_hold_back_the_next() {
    const OTHER: &str = "cccccccc-0000-4000-8000-000000000002";
    let w = world().await;
    w.sim.add_user(OTHER);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let connector = presync_teams_connector(&w).await;
    let reader = presync_teams::webhook::spawn_reader(
        w.engine.clone(),
        "teams".into(),
        connector,
        rx,
        Duration::from_millis(20),
    );
    let reads = || {
        w.sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("getPresencesByUserId"))
            .count()
    };
    w.sim.inject(Fault::Slow(Duration::from_secs(20)));
    tx.send((AAD.to_owned(), w.engine.now())).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reads() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first read's answer is 20 s away; the next notification is read now.
    tx.send((OTHER.to_owned(), w.engine.now())).unwrap();
    while reads() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second read waited for the first's answer"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
}
