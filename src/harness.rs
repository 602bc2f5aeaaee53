//! The test bench that `presync bench` and `presync soak` share: both simulators in this
//! process, a load balancer on loopback in front of one or more real `presync run` processes
//! (this same binary, spawned), their configuration and secrets in a temporary directory, and the
//! directory of representatives already in the database.
//!
//! The load balancer plays the part of the reverse proxy a real deployment puts in front of
//! several instances: Dataverse webhooks and Graph notifications go to its address, and it sends
//! each request to the next live instance, trying the other when one does not answer (as when it
//! has just been killed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{DataverseSim, SimConfig, SimCredential, WebhookTarget};
use presync_engine::store::Store;
use presync_engine::{ExternalId, RepId, Representative};
use presync_teams::sim::{GraphSim, GraphSimConfig};

pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const TENANT: &str = "presync-bench";
pub const ORG: &str = "contoso.crm.dynamics.com";
pub const DV_CLIENT: &str = "presync-bench";
/// The refresh token the Graph simulator accepts for the delegated account.
const REFRESH_TOKEN: &str = "bench-refresh-token";

/// How presync learns of Teams changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Read every user every `secs` seconds.
    Polling { secs: u64 },
    /// Graph change notifications, through the load balancer.
    Subscriptions,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    pub reps: usize,
    /// `None`: a SQLite file in the temporary directory.
    pub database: Option<String>,
    pub ingress: Ingress,
    /// Every representative starts signed in and Available in both systems (else signed out).
    pub signed_in: bool,
    /// `reconcile.schedule`.
    pub reconcile_schedule: String,
    /// `reconcile.on_start`.
    pub reconcile_on_start: bool,
    /// The Teams simulator's throttling limit (Graph's 10,000 per 30 s by default).
    pub graph_limit: (u32, Duration),
    /// The Dataverse simulator's service-protection limit per caller.
    pub dataverse_limit: (u32, Duration),
    /// More TOML, merged into the generated configuration: a table given here replaces a key's
    /// value, and adds to a table of the same name (`[teams.graph] mode = "preferred"` sets one
    /// key of the generated `[teams.graph]`).
    pub extra_toml: String,
    /// More keys for the generated `[database]` section (merged the same way).
    pub database_toml: String,
    /// More keys for the generated `[teams.graph]` section.
    pub teams_graph_toml: String,
    /// More keys for the generated `[dataverse]` section.
    pub dataverse_toml: String,
    /// `RUST_LOG` of the instances.
    pub log_level: String,
    /// The base statuses the Dataverse simulator's router offers work to (its default when
    /// `None`: Available and Busy).
    pub d365_routable: Option<Vec<presync_engine::Availability>>,
    /// Whether the Dataverse simulator takes a presence set through the API for a manual one
    /// (its default when `None`).
    pub d365_api_presence_is_manual: Option<bool>,
    /// Whether presync's application user holds Omnichannel Supervisor, which
    /// `CCaaS_ModifyAgentPresence` requires (true).
    pub d365_supervisor: bool,
    /// The Graph value set the Teams simulator answers in (its default when `None`: 2025).
    pub teams_schema: Option<presync_teams::sim::ValueSchema>,
    /// `presync sim up`: build in this directory, for an operator to run presync from it: the
    /// configuration listens on a free port of its own, the representatives are written to
    /// `reps.csv` (not imported), and no copy of the binary is made.
    pub operator_dir: Option<PathBuf>,
}

impl Options {
    pub fn new(reps: usize) -> Options {
        Options {
            reps,
            database: None,
            ingress: Ingress::Polling { secs: 1 },
            signed_in: true,
            reconcile_schedule: "0 0 0 1 1 *".to_owned(),
            reconcile_on_start: true,
            graph_limit: (10_000, Duration::from_secs(30)),
            dataverse_limit: (6_000, Duration::from_secs(300)),
            extra_toml: String::new(),
            database_toml: String::new(),
            teams_graph_toml: String::new(),
            dataverse_toml: String::new(),
            log_level: "warn".to_owned(),
            d365_routable: None,
            d365_api_presence_is_manual: None,
            d365_supervisor: true,
            teams_schema: None,
            operator_dir: None,
        }
    }
}

/// Merge `from` into `into`: tables merge key by key, anything else replaces.
pub fn merge_toml(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_toml(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// `text` parsed and merged into the table at `path` of `into` (created when missing).
fn merge_at(into: &mut toml::Table, path: &[&str], text: &str) -> anyhow::Result<()> {
    let from: toml::Table = text
        .parse()
        .with_context(|| format!("extra configuration for [{}]", path.join(".")))?;
    let mut at = into;
    for key in path {
        at = at
            .entry((*key).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{key} is not a table"))?;
    }
    merge_toml(at, from);
    Ok(())
}

/// One representative in both simulators and in presync's directory.
#[derive(Debug, Clone)]
pub struct SimRep {
    pub id: String,
    pub agent: String,
    pub aad: String,
}

/// Where a harness keeps its files: a temporary directory, or the operator's (`sim up`).
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl Workdir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Both simulators, the load balancer and the configuration; instances are spawned from it.
pub struct Harness {
    pub dir: Workdir,
    pub dv: DataverseSim,
    pub graph: GraphSim,
    pub reps: Vec<SimRep>,
    pub config: PathBuf,
    pub database: String,
    /// The load balancer: presync's public address.
    pub public_url: String,
    /// The simulators' base URLs.
    pub dv_url: String,
    pub graph_url: String,
    /// The instances' addresses, in the order of [`Harness::instance_url`].
    ports: Vec<u16>,
    log_level: String,
    /// The binary the instances run: a copy of this one, so a rebuild during a long run does
    /// not take it away.
    exe: PathBuf,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("public_url", &self.public_url)
            .field("reps", &self.reps.len())
            .finish_non_exhaustive()
    }
}

/// A running `presync run`. Killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Instance {
    child: Child,
    pub url: String,
}

impl Instance {
    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exited already (crashed)? Its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A secret reference to a file: `{ file = "PATH" }`.
fn file_ref(path: &Path) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("file".into(), path.display().to_string().into());
    toml::Value::Table(t)
}

/// A fresh random secret, written to `dir/name`, readable by its owner only; returns the file
/// and the value.
fn secret(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let value = uuid::Uuid::new_v4().simple().to_string();
    let path = dir.join(name);
    private_file(&path, &value)?;
    Ok((path, value))
}

/// Write `text` to a new file at `path`, mode 0600 where there are modes.
fn private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Harness {
    /// Build everything for `instances` instances (none started yet).
    pub async fn start(opts: &Options, instances: usize) -> anyhow::Result<Harness> {
        anyhow::ensure!(instances >= 1, "at least one instance");
        let dir = match &opts.operator_dir {
            Some(path) => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Workdir {
                    path: std::fs::canonicalize(path)?,
                    _temporary: None,
                }
            }
            None => {
                let t = tempfile::tempdir().context("creating a temporary directory")?;
                Workdir {
                    path: t.path().to_owned(),
                    _temporary: Some(t),
                }
            }
        };
        let d = dir.path();
        let (hook_file, hook) = secret(d, "webhook-secret")?;
        let (dv_file, dv_secret) = secret(d, "dataverse-secret")?;
        let (graph_file, graph_secret) = secret(d, "graph-secret")?;
        let (admin_file, _) = secret(d, "admin-token")?;
        let (state_file, _) = secret(d, "client-state")?;

        let backends = Arc::new(RwLock::new(Vec::new()));
        let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let public_url = format!("http://{}", lb.local_addr()?);
        tokio::spawn(balance(lb, backends.clone()));

        let mut dv_cfg = SimConfig::new(
            TENANT,
            DV_CLIENT,
            SimCredential::ClientSecret(dv_secret),
            ORG,
        );
        dv_cfg.rate_limit = opts.dataverse_limit;
        if let Some(r) = &opts.d365_routable {
            dv_cfg.routable = r.clone();
        }
        if let Some(m) = opts.d365_api_presence_is_manual {
            dv_cfg.api_presence_is_manual = m;
        }
        dv_cfg.app_user_is_supervisor = opts.d365_supervisor;
        let mut target = WebhookTarget::new(
            format!("{public_url}/webhooks/dataverse"),
            WebhookAuth::HttpHeader {
                name: "x-presync-secret".into(),
                value: hook,
            },
        );
        // The agents exist before the run: no Create webhook per agent added below (they would
        // queue ahead of every presence change, each retried after a 502 while no instance runs).
        target.emit_create = false;
        dv_cfg.webhook = Some(target);
        let dv = DataverseSim::new(dv_cfg);
        let mut graph_cfg = GraphSimConfig::new(
            TENANT,
            APP_ID,
            graph_secret,
            "99999999-0000-0000-0000-000000000001",
            REFRESH_TOKEN,
        );
        graph_cfg.rate_limit = opts.graph_limit;
        if let Some(schema) = opts.teams_schema {
            graph_cfg.schema = schema;
        }
        let graph = GraphSim::new(graph_cfg, Arc::new(presync_engine::clock::SystemClock));
        let mut reps = Vec::with_capacity(opts.reps);
        for i in 0..opts.reps {
            let (agent, aad) = crate::sim::seeded_agent(i);
            let initial = if opts.signed_in {
                builtin::AVAILABLE
            } else {
                builtin::OFFLINE
            };
            dv.add_agent(&agent, &aad, &format!("Rep {i}"), initial, opts.signed_in);
            graph.add_user(&aad);
            if opts.signed_in {
                graph.person_signs_in(&aad);
            }
            reps.push(SimRep {
                id: format!("rep-{i:06}"),
                agent,
                aad,
            });
        }
        let dv_base = format!("http://{}", dv.spawn().await?);
        let graph_base = format!("http://{}", graph.spawn().await?);

        let database = opts
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", d.join("presync.db").display()));
        let mut teams = toml::Table::new();
        match opts.ingress {
            Ingress::Polling { secs } => {
                teams.insert("ingress".into(), "polling".into());
                teams.insert(
                    "poll_interval_secs".into(),
                    toml::Value::Integer(secs as i64),
                );
            }
            Ingress::Subscriptions => {
                let token = d.join("refresh-token");
                private_file(&token, REFRESH_TOKEN)?;
                teams.insert("ingress".into(), "subscriptions".into());
                teams.insert("public_url".into(), public_url.clone().into());
                teams.insert("client_state".into(), file_ref(&state_file));
                teams.insert(
                    "refresh_token_file".into(),
                    token.display().to_string().into(),
                );
            }
        }
        // An instance the harness starts is told its port; an operator's listens where the
        // file says.
        let operator_port = match opts.operator_dir {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let listen = format!("127.0.0.1:{}", operator_port.unwrap_or(0));
        let mut table: toml::Table = toml::toml! {
            [database]
            url = (database.clone())
            [http]
            listen = (listen.clone())
            admin_token = (file_ref(&admin_file))
            [reconcile]
            schedule = (opts.reconcile_schedule.clone())
            on_start = (opts.reconcile_on_start)
            [dataverse]
            org_url = (dv_base.clone())
            webhook_secret = (file_ref(&hook_file))
            organization = ORG
            [dataverse.entra]
            authority = (dv_base.clone())
            tenant_id = TENANT
            client_id = DV_CLIENT
            client_secret = (file_ref(&dv_file))
            [teams.entra]
            authority = (graph_base.clone())
            tenant_id = TENANT
            client_id = APP_ID
            client_secret = (file_ref(&graph_file))
            [teams.graph]
            app_id = APP_ID
            graph_url = (format!("{graph_base}/v1.0"))
        };
        merge_toml(
            table
                .get_mut("teams")
                .and_then(toml::Value::as_table_mut)
                .context("the generated [teams]")?,
            teams,
        );
        merge_at(&mut table, &["database"], &opts.database_toml)?;
        merge_at(&mut table, &["dataverse"], &opts.dataverse_toml)?;
        merge_at(&mut table, &["teams", "graph"], &opts.teams_graph_toml)?;
        merge_at(&mut table, &[], &opts.extra_toml)?;
        let toml = toml::to_string(&table).context("writing the configuration")?;
        let config = d.join("presync.toml");
        std::fs::write(&config, toml)?;
        let checked =
            crate::config::load(Some(&config)).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
        let problems = checked.validate();
        anyhow::ensure!(
            problems.is_empty(),
            "configuration: {}",
            problems.join("; ")
        );

        let ports = match operator_port {
            Some(port) => vec![port],
            None => (0..instances)
                .map(|_| free_port())
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        *backends.write().map_err(|_| anyhow::anyhow!("poisoned"))? = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let exe = match opts.operator_dir {
            Some(_) => std::env::current_exe().context("finding the presync binary")?,
            None => {
                let exe = d.join("presync");
                std::fs::copy(
                    std::env::current_exe().context("finding the presync binary")?,
                    &exe,
                )
                .context("copying the presync binary")?;
                exe
            }
        };
        let harness = Harness {
            exe,
            dir,
            dv,
            graph,
            reps,
            config,
            database,
            public_url,
            dv_url: dv_base.clone(),
            graph_url: graph_base.clone(),
            ports,
            log_level: opts.log_level.clone(),
        };
        match opts.operator_dir {
            Some(_) => harness.write_reps_csv()?,
            None => harness.import().await?,
        }
        Ok(harness)
    }

    /// The representatives as `presync reps import` reads them, in `reps.csv`.
    fn write_reps_csv(&self) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_path(self.dir.path().join("reps.csv"))?;
        w.write_record(["id", "display_name", "dataverse", "teams"])?;
        for (i, r) in self.reps.iter().enumerate() {
            w.write_record([
                r.id.as_str(),
                &format!("Rep {i}"),
                r.agent.as_str(),
                r.aad.as_str(),
            ])?;
        }
        w.flush()?;
        Ok(())
    }

    /// Put every representative in presync's directory, straight into the database.
    async fn import(&self) -> anyhow::Result<()> {
        let store = Store::open(&self.database).await?;
        let reps: Vec<Representative> = self
            .reps
            .iter()
            .map(|r| Representative {
                id: RepId(r.id.clone()),
                display_name: r.id.clone(),
                external_ids: [
                    (
                        crate::service::DATAVERSE.into(),
                        ExternalId(r.agent.clone()),
                    ),
                    (crate::service::TEAMS.into(), ExternalId(r.aad.clone())),
                ]
                .into_iter()
                .collect(),
            })
            .collect();
        let now = presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock);
        store.upsert_representatives(&reps, now).await?;
        store.close().await;
        Ok(())
    }

    /// Wait until presync has adopted every representative as they start (Available in both
    /// systems): its canonical state is Available, it has seen both systems, and its queues are
    /// empty. `url` is an instance's address.
    pub async fn wait_adopted(&self, url: &str, within: Duration) -> anyhow::Result<()> {
        let store = Store::connect(&self.database).await?;
        let deadline = tokio::time::Instant::now() + within;
        let result = loop {
            let mut waiting = None;
            for r in &self.reps {
                let view = store.rep_view(&RepId(r.id.clone())).await?;
                let seen = [crate::service::DATAVERSE, crate::service::TEAMS]
                    .iter()
                    .all(|s| {
                        view.systems
                            .get(&presync_engine::SystemId::from(*s))
                            .is_some_and(|st| st.observed.is_some())
                    });
                let available = view
                    .canonical
                    .as_ref()
                    .is_some_and(|c| c.availability == presync_engine::Availability::Available);
                if !(seen && available) {
                    waiting = Some(r.id.clone());
                    break;
                }
            }
            let inbox = metric_sum(url, "presync_queue_depth{queue=\"inbox\"}").await;
            let outbox = metric_sum(url, "presync_queue_depth{queue=\"outbox\"}").await;
            if waiting.is_none() && inbox == Some(0.0) && outbox == Some(0.0) {
                break Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(anyhow::anyhow!(
                    "presync did not adopt every representative within {within:?} (waiting for {})",
                    waiting.unwrap_or_else(|| "its queues".to_owned())
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        store.close().await;
        result
    }

    /// The address of instance `index`.
    pub fn instance_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[index])
    }

    /// Start instance `index` (`presync run`, this binary), logging to `<dir>/instance-N.log`.
    pub fn spawn(&self, index: usize) -> anyhow::Result<Instance> {
        let log_path = self.dir.path().join(format!("instance-{index}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "PRESYNC_HTTP__LISTEN",
                format!("127.0.0.1:{}", self.ports[index]),
            )
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting presync run")?;
        Ok(Instance {
            child,
            url: self.instance_url(index),
        })
    }

    /// The log of instance `index` (for a failure report).
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("instance-{index}.log"))
    }

    /// The last `lines` lines of every instance's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.ports.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- instance {i} ---\n"));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A database of its own on a PostgreSQL server, created for one run and dropped after it.
#[derive(Debug)]
pub struct FreshPostgres {
    server: String,
    name: String,
    pub url: String,
}

impl FreshPostgres {
    /// Create `presync_run_<random>` on the server of `url` (connecting to `url`'s database).
    pub async fn create(url: &str) -> anyhow::Result<FreshPostgres> {
        use sqlx::Connection;
        let name = format!("presync_run_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .with_context(|| format!("connecting to {}", presync_engine::store::redact_url(url)))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("creating the run's database")?;
        let _ = conn.close().await;
        Ok(FreshPostgres {
            server: url.to_owned(),
            url: with_database(url, &name),
            name,
        })
    }

    /// Drop the database (errors are reported, not returned: this is clean-up).
    pub async fn drop_database(self) {
        use sqlx::Connection;
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.server).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!("could not drop the database {}: {e}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name` (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Wait until the instance at `base` answers `/readyz` with 200.
pub async fn ready(base: &str, within: Duration) -> anyhow::Result<()> {
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + within;
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{base} was not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every sample of one `/metrics` series of the instance at `base`, summed over labels, of the
/// lines that start with `prefix`.
pub async fn metric_sum(base: &str, prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .inspect(|_| found = true)
        .sum();
    found.then_some(sum)
}

/// The load balancer: forwards each request to the next backend, trying each once until one
/// answers. 502 when none does.
async fn balance(listener: tokio::net::TcpListener, backends: Arc<RwLock<Vec<String>>>) {
    #[derive(Clone)]
    struct Lb {
        backends: Arc<RwLock<Vec<String>>>,
        next: Arc<AtomicUsize>,
        http: reqwest::Client,
    }
    async fn forward(
        State(lb): State<Lb>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let backends = lb.backends.read().map(|b| b.clone()).unwrap_or_default();
        let start = lb.next.fetch_add(1, Ordering::Relaxed);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        for k in 0..backends.len() {
            let base = &backends[(start + k) % backends.len()];
            let mut req = lb.http.request(method.clone(), format!("{base}{path}"));
            for (name, value) in &headers {
                if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
                    req = req.header(name, value);
                }
            }
            match req.body(body.clone()).send().await {
                Ok(r) => {
                    let status = r.status();
                    let ctype = r.headers().get(axum::http::header::CONTENT_TYPE).cloned();
                    let bytes = r.bytes().await.unwrap_or_default();
                    let mut resp = (status, bytes).into_response();
                    if let Some(c) = ctype {
                        resp.headers_mut()
                            .insert(axum::http::header::CONTENT_TYPE, c);
                    }
                    return resp;
                }
                // Connection refused or reset: that instance is down; try the next.
                Err(_) => continue,
            }
        }
        (StatusCode::BAD_GATEWAY, "no presync instance answered").into_response()
    }
    let lb = Lb {
        backends,
        next: Arc::new(AtomicUsize::new(0)),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
    };
    let app = axum::Router::new().fallback(forward).with_state(lb);
    let _ = axum::serve(listener, app).await;
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
