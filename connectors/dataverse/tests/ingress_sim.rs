//! The simulator's webhooks through the real ingress into a real engine, all on loopback: the
//! simulator's bodies parse as the real ones do, new agents are discovered, stripped deliveries
//! are read back, a lost webhook is repaired by a reconcile, and a write that meets 5xx and 429
//! is retried until it lands.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use presync_dataverse::auth::EntraCredentials;
use presync_dataverse::config::{DataverseConfig, Discovery, WebhookAuth, WebhookConfig};
use presync_dataverse::connector::DataverseConnector;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{DataverseSim, Fault, SimConfig, SimCredential, WebhookTarget};
use presync_dataverse::webhook::{router, Ingress, IngressStats, PATH};
use presync_engine::clock::{Clock, ManualClock};
use presync_engine::config::EngineConfig;
use presync_engine::engine::Engine;
use presync_engine::memory::MemorySystem;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{Availability, Connector, RepId};
use presync_entra::{Credential, EntraConfig, TokenClient};

const TENANT: &str = "presync-sim-tenant";
const CLIENT: &str = "presync-sim-client";
const SECRET: &str = "sim-client-secret-0123456789";
const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";
const AGENT: &str = "0000000a-0000-4000-8000-00000000000a";
const AAD: &str = "aad0000a-0000-4000-8000-00000000000a";

struct World {
    _dir: tempfile::TempDir,
    sim: DataverseSim,
    engine: Engine,
    teams: MemorySystem,
    clock: Arc<ManualClock>,
}

async fn world() -> World {
    // The ingress listens first, so the simulator knows where to send.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}{PATH}", listener.local_addr().unwrap());
    let auth = WebhookAuth::HttpHeader {
        name: "x-presync-secret".into(),
        value: HOOK_SECRET.into(),
    };
    let mut sim_cfg = SimConfig::new(
        TENANT,
        CLIENT,
        SimCredential::ClientSecret(SECRET.into()),
        "contoso.crm.dynamics.com",
    );
    sim_cfg.webhook = Some(WebhookTarget::new(hook_url, auth.clone()));
    let sim = DataverseSim::new(sim_cfg);
    let base = format!("http://{}", sim.spawn().await.unwrap());

    let mut hook = WebhookConfig::header("x", "y");
    hook.auth = auth;
    hook.organization = Some("contoso.crm.dynamics.com".into());
    let mut config = DataverseConfig::new(base.clone(), hook.clone());
    config.discovery = Some(Discovery {
        entra_system: "teams".into(),
    });
    let entra = EntraConfig::new(
        TENANT,
        CLIENT,
        format!("{base}/.default"),
        Credential::client_secret(SECRET.to_owned()),
    )
    .with_authority(base);
    let dataverse = Arc::new(
        DataverseConnector::new(
            config.clone(),
            Arc::new(EntraCredentials::new(TokenClient::new(&entra).unwrap())),
        )
        .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(presync_engine::clock::Clock::now(
        &presync_engine::clock::SystemClock,
    )));
    let teams = MemorySystem::new("teams", clock.clone());
    teams.add_user(AAD, Availability::Offline);
    let mut connectors: BTreeMap<_, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert("dataverse".into(), dataverse.clone() as Arc<dyn Connector>);
    connectors.insert("teams".into(), teams.connector() as Arc<dyn Connector>);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite:{}", dir.path().join("p.db").display()))
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
    let ingress = Arc::new(Ingress {
        engine: engine.clone(),
        system: "dataverse".into(),
        connector: dataverse,
        config: hook,
        discovery: config.discovery.clone(),
        stats: IngressStats::default(),
    });
    tokio::spawn(async move { axum::serve(listener, router(ingress)).await });
    World {
        _dir: dir,
        sim,
        engine,
        teams,
        clock,
    }
}

impl World {
    async fn settle(&self) {
        self.sim.wait_deliveries_idle().await;
        for _ in 0..5 {
            for d in self.teams.take_deliveries() {
                self.engine.ingest(d).await.unwrap();
            }
            self.engine.resolve_pending().await.unwrap();
            self.engine.dispatch_pending().await.unwrap();
            // The simulator dates changes with the real clock: keep the engine's at or past it.
            let real = presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock);
            self.clock.set(real.max(self.clock.now() + 1));
        }
    }

    async fn canonical(&self) -> Option<Availability> {
        let rep = RepId(format!("dataverse-{AGENT}"));
        self.engine
            .store()
            .rep_view(&rep)
            .await
            .unwrap()
            .canonical
            .map(|c| c.availability)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_webhooks_flow_through_the_real_ingress() {
    let w = world().await;
    // A new agent signs in for the first time: the Create event adds them to the directory.
    w.sim
        .add_agent(AGENT, AAD, "Agent A", builtin::AVAILABLE, true);
    w.settle().await;
    let rep = w
        .engine
        .store()
        .representative(&RepId(format!("dataverse-{AGENT}")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.external_ids.get(&"teams".into()).unwrap().as_str(), AAD);
    assert_eq!(w.canonical().await, Some(Availability::Available));
    assert_eq!(w.teams.state(&AAD.into()), Some(Availability::Available));

    // An Update: the simulator's body parses like the real ones and reaches Teams.
    w.sim.system_sets(AGENT, builtin::BUSY);
    w.settle().await;
    assert_eq!(w.canonical().await, Some(Availability::Busy));
    assert_eq!(w.teams.state(&AAD.into()), Some(Availability::Busy));

    // Over 256 KB: the body is stripped and the row is read back through the Web API.
    w.sim.inject(Fault::SizeExceededWebhooks(1));
    w.sim.agent_sets(AGENT, builtin::BUSY_DND);
    w.settle().await;
    assert_eq!(w.canonical().await, Some(Availability::DoNotDisturb));

    // A lost webhook: nothing arrives; the next reconcile finds the change.
    w.sim.inject(Fault::DropWebhooks(1));
    w.sim.agent_sets(AGENT, builtin::AWAY);
    w.settle().await;
    assert_eq!(w.canonical().await, Some(Availability::DoNotDisturb));
    let report = w.engine.reconcile().await.unwrap();
    assert!(report.complete(), "{report:?}");
    w.settle().await;
    let history = w
        .engine
        .store()
        .history(&RepId(format!("dataverse-{AGENT}")), 20)
        .await
        .unwrap();
    assert_eq!(
        w.canonical().await,
        Some(Availability::Away),
        "{report:?}\n{history:#?}"
    );
    let h: Vec<String> = history
        .iter()
        .map(|h| {
            format!(
                "{} {} {:?} {:?} {}",
                h.system, h.rule, h.availability, h.writes, h.detail
            )
        })
        .collect();
    assert_eq!(
        w.teams.state(&AAD.into()),
        Some(Availability::Away),
        "{h:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_meets_5xx_and_429_is_retried_until_it_lands() {
    let w = world().await;
    w.sim
        .add_agent(AGENT, AAD, "Agent A", builtin::AVAILABLE, true);
    w.settle().await;
    w.sim.inject(Fault::ServerError(503));
    w.sim.inject(Fault::RateLimited {
        retry_after_secs: 2,
    });
    // The simulator dates D365's changes with the real clock; the person's Teams change comes
    // after them, so the engine's manual clock must be past it too.
    w.clock
        .set(presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock) + 1_000);
    w.teams.person_sets(&AAD.into(), Availability::DoNotDisturb);
    for d in w.teams.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    for _ in 0..10 {
        w.engine.dispatch_pending().await.unwrap();
        if w.sim.presence(AGENT).as_deref() == Some(builtin::BUSY_DND) {
            break;
        }
        w.clock.advance(5_000);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.sim.presence(AGENT).as_deref(), Some(builtin::BUSY_DND));
    let statuses: Vec<u16> = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![503, 429, 200]);
}
