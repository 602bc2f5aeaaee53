//! End to end: the real `presync` binary (`presync run`) against both simulators on loopback.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{DataverseSim, SimConfig, SimCredential, WebhookTarget};
use presync_teams::sim::{GraphSim, GraphSimConfig};

const AGENT: &str = "5e000000-0000-4000-8000-000000000001";
const AAD: &str = "aad00000-0000-4000-8000-000000000001";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const HOOK_SECRET: &str = "e2e-webhook-secret-0123456789";

struct Presync(Child);

impl Drop for Presync {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    dv: DataverseSim,
    graph: GraphSim,
    config: std::path::PathBuf,
    presync_url: String,
}

impl Setup {
    fn presync(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_presync"));
        c.env("E2E_HOOK_SECRET", HOOK_SECRET)
            .env("E2E_DV_SECRET", "dv-secret")
            .env("E2E_GRAPH_SECRET", "graph-secret")
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            );
        c
    }
}

/// Both simulators on loopback, a configuration for presync, and a directory of one agent.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let presync_url = format!("http://127.0.0.1:{port}");

    let mut dv_cfg = SimConfig::new(
        "dv-tenant",
        "dv-client",
        SimCredential::ClientSecret("dv-secret".into()),
        "contoso.crm.dynamics.com",
    );
    dv_cfg.webhook = Some(WebhookTarget::new(
        format!("{presync_url}/webhooks/dataverse"),
        WebhookAuth::HttpHeader {
            name: "x-presync-secret".into(),
            value: HOOK_SECRET.into(),
        },
    ));
    let dv = DataverseSim::new(dv_cfg);
    dv.add_agent(AGENT, AAD, "Agent One", builtin::OFFLINE, true);
    let dv_base = format!("http://{}", dv.spawn().await.unwrap());

    let graph = GraphSim::new(
        GraphSimConfig::new(
            "graph-tenant",
            APP,
            "graph-secret",
            "99999999-0000-0000-0000-000000000001",
            "rt",
        ),
        std::sync::Arc::new(presync_engine::clock::SystemClock),
    );
    graph.add_user(AAD);
    graph.person_signs_in(AAD);
    let graph_base = format!("http://{}", graph.spawn().await.unwrap());

    let db = format!("sqlite:{}", dir.path().join("presync.db").display());
    let config = dir.path().join("presync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "{db}"
[http]
listen = "127.0.0.1:{port}"
[engine.pipeline]
poll_interval_ms = 50
[dataverse]
org_url = "{dv_base}"
webhook_secret = {{ env = "E2E_HOOK_SECRET" }}
organization = "contoso.crm.dynamics.com"
[dataverse.entra]
authority = "{dv_base}"
tenant_id = "dv-tenant"
client_id = "dv-client"
client_secret = {{ env = "E2E_DV_SECRET" }}
[teams]
ingress = "polling"
poll_interval_secs = 1
[teams.entra]
authority = "{graph_base}"
tenant_id = "graph-tenant"
client_id = "{APP}"
client_secret = {{ env = "E2E_GRAPH_SECRET" }}
[teams.graph]
app_id = "{APP}"
graph_url = "{graph_base}/v1.0"
"#
        ),
    )
    .unwrap();
    let reps = dir.path().join("reps.csv");
    std::fs::write(
        &reps,
        format!("id,display_name,dataverse,teams\nagent-one,Agent One,{AGENT},{AAD}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presync"))
        .args(["reps", "import"])
        .arg(&reps)
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    Setup {
        _dir: dir,
        dv,
        graph,
        config,
        presync_url,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flows_both_ways_through_the_real_binary() {
    let st = setup().await;
    let (dv, graph, presync_url) = (&st.dv, &st.graph, st.presync_url.clone());
    let _presync = Presync(
        st.presync()
            .args(["run", "--config"])
            .arg(&st.config)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(std::env::temp_dir().join("presync-e2e.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let ready = format!("{presync_url}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(&ready).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presync never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A D365 presence change reaches Teams.
    dv.system_sets(AGENT, builtin::BUSY);
    wait_for("Busy in Teams", || {
        graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Busy")
    })
    .await;

    // D365 frees the agent; then a Teams meeting makes the agent Busy in D365.
    dv.system_sets(AGENT, builtin::AVAILABLE);
    wait_for("Available in Teams", || {
        graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Available")
    })
    .await;
    graph.person_joins_meeting(AAD);
    wait_for("Busy in D365", || {
        dv.presence(AGENT).as_deref() == Some(builtin::BUSY)
    })
    .await;

    // presync's own writes echoed back and were not propagated: D365 got one write (the
    // meeting), Teams two session writes (D365's Busy, then Available).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d365_writes = dv
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"))
        .count();
    assert_eq!(d365_writes, 1, "an echo came back to D365");
    let teams_writes = graph
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/presence/setPresence"))
        .count();
    assert_eq!(teams_writes, 2);

    // A malformed or unauthenticated webhook is refused with a clear message, nothing stored.
    let hook = format!("{presync_url}/webhooks/dataverse");
    let r = http.post(&hook).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&hook)
        .header("x-presync-secret", HOOK_SECRET)
        .header("x-ms-dynamics-organization", "contoso.crm.dynamics.com")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("line"));

    let metrics = http
        .get(format!("{presync_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("presync_decisions_total{rule=\"echo\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"unauthorized\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webhook_is_repaired_by_reconcile_once() {
    let st = setup().await;
    // Nobody listens for webhooks: every change is lost until a reconcile reads it.
    st.dv.system_sets(AGENT, builtin::BUSY_DND);
    st.dv.wait_deliveries_idle().await;
    let out = st
        .presync()
        .args(["reconcile", "--once", "--config"])
        .arg(&st.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(summary["complete"], true);
    assert!(st
        .graph
        .session(AAD, APP)
        .is_some_and(|s| s.posted_availability == "DoNotDisturb"));
}
