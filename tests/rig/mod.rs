//! The rig of the tests that run the real `presync` binary against both simulators on
//! loopback: the simulators, a configuration pointing at them, a directory of agents, and
//! helpers to run the service and read its health and metrics.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{DataverseSim, SimConfig, SimCredential, WebhookTarget};
use presync_teams::sim::{GraphSim, GraphSimConfig};

pub const AGENT: &str = "5e000000-0000-4000-8000-000000000001";
pub const AAD: &str = "aad00000-0000-4000-8000-000000000001";
pub const APP: &str = "11111111-2222-3333-4444-555555555555";
pub const HOOK_SECRET: &str = "e2e-webhook-secret-0123456789";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// The `i`th agent and its Entra user (agent 1 is [`AGENT`]/[`AAD`]).
pub fn agent(i: usize) -> (String, String) {
    (
        format!("5e000000-0000-4000-8000-{i:012x}"),
        format!("aad00000-0000-4000-8000-{i:012x}"),
    )
}

pub struct Presync(pub Child);

impl Drop for Presync {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub dv: DataverseSim,
    pub graph: GraphSim,
    pub config: std::path::PathBuf,
    pub presync_url: String,
    pub db: String,
}

impl Setup {
    pub fn presync(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_presync"));
        c.env("E2E_HOOK_SECRET", HOOK_SECRET)
            .env("E2E_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("E2E_CLIENT_STATE", "e2e-client-state-0123456789")
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
pub async fn setup() -> Setup {
    setup_with(1, None).await
}

/// How presync learns of Teams changes in a test.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TeamsIngress {
    Polling,
    Subscriptions,
}

pub async fn setup_with(agents: usize, database: Option<String>) -> Setup {
    setup_full(agents, database, TeamsIngress::Polling).await
}

/// [`setup`] with `agents` agents (1..=agents), when given that database instead of a SQLite
/// file, and Teams read by polling or change notifications.
pub async fn setup_full(agents: usize, database: Option<String>, teams: TeamsIngress) -> Setup {
    setup_roles(agents, database, teams, true).await
}

/// [`setup_full`], with presync's application user holding the Omnichannel Supervisor role
/// (which `CCaaS_ModifyAgentPresence` needs since 2026-05-07) or not.
pub async fn setup_roles(
    agents: usize,
    database: Option<String>,
    teams: TeamsIngress,
    supervisor: bool,
) -> Setup {
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
    dv_cfg.app_user_is_supervisor = supervisor;
    let dv = DataverseSim::new(dv_cfg);
    for i in 1..=agents {
        let (a, aad) = agent(i);
        let name = if i == 1 {
            "Agent One".to_owned()
        } else {
            format!("Agent {i}")
        };
        dv.add_agent(&a, &aad, &name, builtin::OFFLINE, true);
    }
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
    for i in 1..=agents {
        let aad = agent(i).1;
        graph.add_user(&aad);
        graph.person_signs_in(&aad);
    }
    let graph_base = format!("http://{}", graph.spawn().await.unwrap());

    let teams_ingress = match teams {
        TeamsIngress::Polling => "ingress = \"polling\"\npoll_interval_secs = 1".to_owned(),
        TeamsIngress::Subscriptions => {
            let store = dir.path().join("refresh-token");
            std::fs::write(&store, "rt").unwrap();
            format!(
                "ingress = \"subscriptions\"\npublic_url = \"{presync_url}\"\n\
                 client_state = {{ env = \"E2E_CLIENT_STATE\" }}\n\
                 refresh_token_file = \"{}\"",
                store.display()
            )
        }
    };
    let db =
        database.unwrap_or_else(|| format!("sqlite:{}", dir.path().join("presync.db").display()));
    let config = dir.path().join("presync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "{db}"
[http]
listen = "127.0.0.1:{port}"
admin_token = {{ env = "E2E_ADMIN_TOKEN" }}
[engine.pipeline]
poll_interval_ms = 50
lease_ms = 4000
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
{teams_ingress}
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
    let mut csv = format!("id,display_name,dataverse,teams\nagent-one,Agent One,{AGENT},{AAD}\n");
    for i in 2..=agents {
        let (a, aad) = agent(i);
        csv.push_str(&format!("agent-{i},Agent {i},{a},{aad}\n"));
    }
    std::fs::write(&reps, csv).unwrap();
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
        dir,
        dv,
        graph,
        config,
        presync_url,
        db,
    }
}

impl Setup {
    /// `presync run` on this setup's configuration, logging to `log` in the temporary directory.
    pub fn run(&self, log: &str) -> Presync {
        self.run_with(log, &[])
    }

    /// [`Setup::run`] with extra environment variables (configuration overrides, secrets).
    pub fn run_with(&self, log: &str, env: &[(&str, &str)]) -> Presync {
        let mut c = self.presync();
        c.envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(std::env::temp_dir().join(log))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            );
        Presync(c.spawn().unwrap())
    }

    pub async fn ready(&self) {
        ready(&self.presync_url).await;
    }

    pub async fn metric(&self, line_prefix: &str) -> Option<f64> {
        metric(&self.presync_url, line_prefix).await
    }
}

/// Wait until the instance at `base` answers `/readyz` with 200.
pub async fn ready(base: &str) {
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presync never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first `/metrics` line of the instance at `base` that starts with
/// `line_prefix`.
pub async fn metric(base: &str, line_prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}
