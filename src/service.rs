//! `presync run`: the long-running service. The one place that names concrete connectors: it
//! builds them from the configuration, validates the topology, and serves one HTTP server
//! (webhooks, health, readiness, metrics) next to the engine and the scheduled jobs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use presync_dataverse::auth::EntraCredentials;
use presync_dataverse::connector::DataverseConnector;
use presync_dataverse::webhook::{Ingress, IngressStats};
use presync_engine::clock::SystemClock;
use presync_engine::engine::{Engine, ReconcileReport};
use presync_engine::remote::Credentials;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{Connector, ConnectorError, SystemId};
use presync_entra::{AssertionMode, Credential, EntraConfig, TokenClient};
use presync_teams::auth::AppCredentials;
use presync_teams::auth::DelegatedCredentials;
use presync_teams::client::GraphClient;
use presync_teams::connector::TeamsConnector;
use presync_teams::notifications::LifecycleItem;
use presync_teams::poll::Poller;
use presync_teams::subscriptions::{LifecycleAction, SubscriptionManager, SubscriptionSettings};
use presync_teams::webhook::{spawn_reader, TeamsIngress, TeamsIngressStats};
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{debug, info, warn};

use crate::config::{Config, Entra};
use crate::listener::{ConnectionLimits, ListenerStats};
use crate::webhook_bodies::{BodyBudget, BodyLimit, BodyStats};

/// The names `presync run` gives its connectors: the systems of its directory, its history and
/// its metrics.
pub const DATAVERSE: &str = "dataverse";
pub const TEAMS: &str = "teams";
/// Every system `presync run` has: a directory import names no other (`presync reps import`).
pub const SYSTEMS: [&str; 2] = [DATAVERSE, TEAMS];

/// Everything `presync run` starts.
pub struct Service {
    pub engine: Engine,
    pub router: Router,
    listener: Arc<ListenerStats>,
    dataverse: Option<Arc<DataverseConnector>>,
    teams: Option<Arc<TeamsConnector>>,
    teams_polling: Option<Duration>,
    teams_notifications: Option<TeamsNotifications>,
}

#[derive(Clone)]
struct Shared {
    engine: Engine,
    /// Each connector's credentials: a connector that cannot get a token cannot write.
    health: Arc<Vec<(&'static str, Arc<dyn Credentials>)>>,
    dataverse: Option<Arc<Ingress>>,
    teams: Option<Arc<TeamsIngress>>,
    listener: Arc<ListenerStats>,
    bodies: Arc<BodyStats>,
}

/// Change-notification mode: the subscription manager, and the ingress's queues of users to
/// read and lifecycle events.
struct TeamsNotifications {
    manager: Arc<SubscriptionManager>,
    reread: tokio::sync::mpsc::UnboundedReceiver<(String, presync_engine::Millis)>,
    lifecycle: tokio::sync::mpsc::UnboundedReceiver<LifecycleItem>,
    connector: Arc<TeamsConnector>,
}

fn entra(e: &Entra, scope: String) -> anyhow::Result<TokenClient> {
    let credential = match (&e.client_secret, &e.certificate_pem, &e.private_key) {
        (Some(s), _, _) => Credential::client_secret(s.resolve().map_err(anyhow::Error::msg)?),
        (None, Some(cert), Some(key)) => Credential::certificate(
            std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?,
            key.resolve().map_err(anyhow::Error::msg)?,
            AssertionMode::Ps256,
        ),
        _ => anyhow::bail!("give either client_secret, or certificate_pem with private_key"),
    };
    let config = EntraConfig::new(e.tenant_id.clone(), e.client_id.clone(), scope, credential)
        .with_authority(e.authority.clone());
    Ok(TokenClient::new(&config)?)
}

/// Build the connectors, the engine and the router from a validated configuration.
/// The engine's configuration, with each target's write limit taken from its connector's
/// request limit unless `[engine.dispatch.<system>]` sets one: the engine paces writes to what
/// the remote allows, rather than to a generic default below it (Graph allowed 1,500 per 30 s then;
/// pacing Teams writes at the generic 1,000 made a burst of 10,000 take half as long again).
fn engine_config(config: &Config) -> presync_engine::config::EngineConfig {
    let mut engine = config.engine.clone();
    if let Some(t) = &config.teams {
        engine.dispatch.entry(TEAMS.into()).or_insert_with(|| {
            presync_engine::config::DispatchConfig {
                rate_limit: t.graph.rate_limit,
                rate_window_ms: t.graph.rate_window_secs.saturating_mul(1_000),
                ..config.engine.dispatch_default.clone()
            }
        });
    }
    engine
}

pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let store = Store::open_with(&config.database.url, &config.database.options()).await?;
    let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
    let mut health: Vec<(&'static str, Arc<dyn Credentials>)> = Vec::new();
    let mut dataverse = None;
    let mut dataverse_ingress = None;
    if let Some(d) = &config.dataverse {
        let dv_config = d.connector_config().map_err(anyhow::Error::msg)?;
        let scope = format!("{}/.default", d.org_url.trim_end_matches('/'));
        let creds = Arc::new(EntraCredentials::new(entra(&d.entra, scope)?));
        health.push((DATAVERSE, creds.clone() as Arc<dyn Credentials>));
        let connector = Arc::new(DataverseConnector::new(dv_config.clone(), creds)?);
        connectors.insert(DATAVERSE.into(), connector.clone() as Arc<dyn Connector>);
        dataverse = Some(connector);
        dataverse_ingress = Some(dv_config);
    }
    let mut teams = None;
    let mut teams_polling = None;
    let mut teams_subscriptions = None;
    let mut teams_client_state = None;
    if let Some(t) = &config.teams {
        let scope = "https://graph.microsoft.com/.default".to_owned();
        let app = Arc::new(AppCredentials::new(entra(&t.entra, scope)?));
        health.push((TEAMS, app.clone() as Arc<dyn Credentials>));
        let subscribing = t.ingress == "subscriptions";
        let delegated: Option<Arc<dyn presync_engine::remote::Credentials>> =
            match (subscribing, &t.refresh_token_file) {
                (true, Some(store)) => Some(Arc::new(DelegatedCredentials::new(
                    format!(
                        "{}/{}/oauth2/v2.0/token",
                        t.entra.authority.trim_end_matches('/'),
                        t.entra.tenant_id
                    ),
                    t.entra.client_id.clone(),
                    "https://graph.microsoft.com/Presence.Read.All offline_access",
                    store.clone(),
                ))),
                _ => None,
            };
        let client = GraphClient::new(
            &t.graph.graph_url,
            app,
            delegated,
            t.graph.rate_limit,
            Duration::from_secs(t.graph.rate_window_secs),
            Duration::from_millis(t.graph.request_timeout_ms),
        )?;
        let connector = Arc::new(TeamsConnector::new(
            t.graph.clone(),
            client.clone(),
            Arc::new(SystemClock),
        )?);
        connectors.insert(TEAMS.into(), connector.clone() as Arc<dyn Connector>);
        if subscribing {
            let public = t
                .public_url
                .clone()
                .context("teams.public_url is required for subscriptions")?;
            let public = public.trim_end_matches('/');
            let client_state = t
                .client_state
                .as_ref()
                .context("teams.client_state is required for subscriptions")?
                .resolve()
                .map_err(|e| anyhow::anyhow!("teams.client_state: {e}"))?;
            teams_subscriptions = Some(Arc::new(SubscriptionManager::new(
                client.clone(),
                SubscriptionSettings {
                    notification_url: format!("{public}{}", presync_teams::webhook::PATH),
                    lifecycle_url: Some(format!(
                        "{public}{}",
                        presync_teams::webhook::LIFECYCLE_PATH
                    )),
                    client_state: client_state.clone(),
                    lifetime: Duration::from_secs(t.subscription_lifetime_secs),
                    renew_before: Duration::from_secs(t.subscription_lifetime_secs / 3),
                    encryption: None,
                },
                Arc::new(SystemClock),
            )));
            teams_client_state = Some(client_state);
        } else {
            teams_polling = Some(Duration::from_secs(t.poll_interval_secs));
        }
        teams = Some(connector);
    }
    let topology = TopologyConfig::full_mesh(&connectors);
    let engine = Engine::new(store, connectors, &topology, engine_config(config))?;
    let ingress = match (&dataverse, dataverse_ingress) {
        (Some(connector), Some(c)) => Some(Arc::new(Ingress {
            engine: engine.clone(),
            system: DATAVERSE.into(),
            connector: connector.clone(),
            config: c.webhook.clone(),
            discovery: c.discovery.clone(),
            stats: IngressStats::default(),
        })),
        _ => None,
    };
    let mut teams_ingress = None;
    let mut teams_channels = None;
    if let (Some(connector), Some(client_state)) = (&teams, teams_client_state) {
        let (reread, reread_rx) = tokio::sync::mpsc::unbounded_channel();
        let (lifecycle, lifecycle_rx) = tokio::sync::mpsc::unbounded_channel();
        let ingress = Arc::new(TeamsIngress {
            engine: engine.clone(),
            system: TEAMS.into(),
            client_state,
            keys: None,
            reread,
            lifecycle,
            max_body: config
                .teams
                .as_ref()
                .map_or(presync_teams::webhook::MAX_BODY, |t| t.max_body_bytes),
            stats: TeamsIngressStats::default(),
        });
        teams_channels = Some((reread_rx, lifecycle_rx, connector.clone()));
        teams_ingress = Some(ingress);
    }
    let bodies = Arc::new(BodyStats::default());
    let listener = Arc::new(ListenerStats::default());
    let shared = Shared {
        health: Arc::new(health),
        engine: engine.clone(),
        dataverse: ingress.clone(),
        teams: teams_ingress.clone(),
        listener: listener.clone(),
        bodies: bodies.clone(),
    };
    let bounded = |max_bytes: usize| {
        axum::middleware::from_fn_with_state(
            BodyLimit {
                max_bytes,
                budget: BodyBudget::new(
                    config.http.body_memory_bytes,
                    Duration::from_secs(config.http.body_timeout_secs),
                    bodies.clone(),
                ),
            },
            crate::webhook_bodies::guard,
        )
    };
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Some(i) = ingress {
        let max = i.config.max_body_bytes;
        router = router.merge(presync_dataverse::webhook::router(i).layer(bounded(max)));
    }
    if let Some(i) = teams_ingress {
        let max = i.max_body;
        router = router.merge(presync_teams::webhook::router(i).layer(bounded(max)));
    }
    let admin_token = match &config.http.admin_token {
        Some(t) => Some(presync_entra::Secret::new(
            t.resolve()
                .map_err(|e| anyhow::anyhow!("http.admin_token: {e}"))?,
        )),
        None => None,
    };
    router = router.merge(crate::admin::router(engine.clone(), admin_token));
    let teams_notifications = match (teams_subscriptions, teams_channels) {
        (Some(manager), Some((reread, lifecycle, connector))) => Some(TeamsNotifications {
            manager,
            reread,
            lifecycle,
            connector,
        }),
        _ => None,
    };
    Ok(Service {
        engine,
        router,
        listener,
        dataverse,
        teams,
        teams_polling,
        teams_notifications,
    })
}

/// Ready when the store answers and no connector's credentials are refused. A connector whose
/// token endpoint is only unreachable is reported as degraded but keeps the instance ready:
/// webhooks are still stored, and the writes wait and retry.
async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let mut ready = true;
    let store = match s.engine.store().ping().await {
        Ok(()) => match s.engine.store_can_write().await {
            Ok(()) => "ok".to_owned(),
            Err(why) => {
                ready = false;
                format!("cannot write: {why}")
            }
        },
        Err(e) => {
            ready = false;
            format!("unreachable: {}", presync_engine::engine::with_causes(&e))
        }
    };
    let mut connectors = serde_json::Map::new();
    for (name, creds) in s.health.iter() {
        let state = match creds.bearer().await {
            Ok(_) => "ok".to_owned(),
            Err(e @ ConnectorError::Unauthorized { .. }) => {
                ready = false;
                format!("credentials refused: {e}")
            }
            Err(e) => format!("degraded: {e}"),
        };
        connectors.insert((*name).to_owned(), state.into());
    }
    // Writes refused for a permission presync lacks: no write lands there until an
    // administrator grants it, but webhooks are still stored, so the instance stays ready.
    let degraded = s.engine.degraded();
    for (system, refusal) in &degraded {
        connectors.insert(
            system.to_string(),
            format!("degraded: writes refused: {refusal}").into(),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let state = match (ready, degraded.is_empty()) {
        (false, _) => "unavailable",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    (
        status,
        axum::Json(serde_json::json!({
            "ready": ready,
            "status": state,
            "store": store,
            "connectors": connectors,
        })),
    )
}

/// Prometheus text exposition of the engine's and the ingress's counters.
async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.engine.stats();
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        &mut out,
        "presync_events_accepted_total",
        "Observations stored in the inbox.",
        st.accepted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_events_duplicate_total",
        "Deliveries already stored.",
        st.duplicates.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_ingest_commits_total",
        "Transactions that stored ingested observations (several webhooks share one under load).",
        st.ingest_commits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_resolve_batches_total",
        "Batches of inbox rows claimed by the resolver (events resolved per batch grow with load).",
        st.resolve_batches.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_resolver_yields_total",
        "Times the resolver waited before a batch because webhooks were queueing for the disk.",
        st.resolver_yields.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_resolver_deferrals_total",
        "Times the resolver began to defer to acknowledgements under overload (pipeline.defer_for_ms).",
        st.resolver_deferrals.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_resolver_pauses_total",
        "Pauses the resolver made while it deferred to acknowledgements.",
        st.resolver_pauses.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_writes_ok_total",
        "Writes the targets confirmed.",
        st.writes_ok.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_writes_failed_total",
        "Writes the targets refused.",
        st.writes_failed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_write_retries_total",
        "Writes retried after a transient failure.",
        st.retries.load(Ordering::Relaxed),
    );
    let _ = writeln!(out, "# HELP presync_events_total Observations stored, by system and outcome.\n# TYPE presync_events_total counter");
    for ((system, outcome), n) in st.events() {
        let _ = writeln!(
            out,
            "presync_events_total{{system=\"{system}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    counter(
        &mut out,
        "presync_reconcile_drift_total",
        "Targets the reconciler found out of sync and queued for repair.",
        st.drift_found.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "presync_reconcile_missed_total",
        "Changes the events had missed that the reconciler found and applied.",
        st.missed_found.load(Ordering::Relaxed),
    );
    let _ = writeln!(out, "# HELP presync_target_writes_total Write attempts by target and outcome.\n# TYPE presync_target_writes_total counter");
    for ((target, outcome), n) in st.writes() {
        let _ = writeln!(
            out,
            "presync_target_writes_total{{target=\"{target}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    let (buckets, count, sum_ms) = st.lag.snapshot();
    let _ = writeln!(out, "# HELP presync_end_to_end_lag_seconds From an observation's arrival to the target confirming the write.\n# TYPE presync_end_to_end_lag_seconds histogram");
    for (le_ms, n) in buckets {
        let _ = writeln!(
            out,
            "presync_end_to_end_lag_seconds_bucket{{le=\"{}\"}} {n}",
            le_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "presync_end_to_end_lag_seconds_bucket{{le=\"+Inf\"}} {count}\npresync_end_to_end_lag_seconds_sum {}\npresync_end_to_end_lag_seconds_count {count}",
        sum_ms as f64 / 1000.0
    );
    let _ = writeln!(out, "# HELP presync_hold_events_total Holds started, put back, held and released.\n# TYPE presync_hold_events_total counter");
    for (event, n) in st.hold_events() {
        let _ = writeln!(out, "presync_hold_events_total{{event=\"{event}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP presync_decisions_total Decisions by conflict rule.\n# TYPE presync_decisions_total counter");
    for (rule, n) in st.decisions() {
        let _ = writeln!(out, "presync_decisions_total{{rule=\"{rule}\"}} {n}");
    }
    if let Some(i) = &s.dataverse {
        let _ = writeln!(out, "# HELP presync_webhooks_total Dataverse webhooks by outcome.\n# TYPE presync_webhooks_total counter");
        for (outcome, v) in [
            ("accepted", &i.stats.accepted),
            ("duplicate", &i.stats.duplicates),
            ("ignored", &i.stats.ignored),
            ("unauthorized", &i.stats.unauthorized),
            ("malformed", &i.stats.malformed),
            ("too_large", &i.stats.too_large),
            ("unavailable", &i.stats.unavailable),
        ] {
            let _ = writeln!(
                out,
                "presync_webhooks_total{{system=\"dataverse\",outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
    if let Some(i) = &s.teams {
        let _ = writeln!(out, "# HELP presync_notifications_total Teams change notifications by outcome.\n# TYPE presync_notifications_total counter");
        for (outcome, v) in [
            ("handshake", &i.stats.handshakes),
            ("accepted", &i.stats.accepted),
            ("refused", &i.stats.refused_items),
            ("reread_queued", &i.stats.rereads_queued),
            ("lifecycle", &i.stats.lifecycle),
            ("malformed", &i.stats.malformed),
            ("too_large", &i.stats.too_large),
            ("undecryptable", &i.stats.undecryptable),
            ("plain_values_ignored", &i.stats.plain_values_ignored),
        ] {
            let _ = writeln!(
                out,
                "presync_notifications_total{{system=\"teams\",outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# HELP presync_http_connections_total Connections accepted, and closed at once because http.max_connections were open.\n# TYPE presync_http_connections_total counter");
    for (outcome, v) in [
        ("accepted", &s.listener.accepted),
        ("refused", &s.listener.refused),
        ("cut_at_shutdown", &s.listener.cut_at_shutdown),
    ] {
        let _ = writeln!(
            out,
            "presync_http_connections_total{{outcome=\"{outcome}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP presync_http_bodies_refused_total Webhook bodies refused before their handler: too slow, or over the memory all bodies may hold.\n# TYPE presync_http_bodies_refused_total counter");
    for (reason, v) in [("timed_out", &s.bodies.timed_out), ("shed", &s.bodies.shed)] {
        let _ = writeln!(
            out,
            "presync_http_bodies_refused_total{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    if let Ok(d) = s.engine.store().queue_depths().await {
        let _ = writeln!(
            out,
            "# HELP presync_queue_depth Rows waiting.\n# TYPE presync_queue_depth gauge"
        );
        let _ = writeln!(
            out,
            "presync_queue_depth{{queue=\"inbox\"}} {}\npresync_queue_depth{{queue=\"outbox\"}} {}",
            d.inbox, d.outbox
        );
    }
    ([("content-type", "text/plain; version=0.0.4")], out)
}

/// How long a scheduled job's lease is held; it is renewed while the job runs. An instance that
/// is killed holds its leases until they lapse: short, so that its restart (or another
/// instance) takes the jobs over soon.
const JOB_LEASE: Duration = Duration::from_secs(15);

/// Run `job` only if this instance takes the named lease: with several instances on one
/// database, each scheduled job runs on one of them at a time. The lease is renewed while the job
/// runs and then kept until it lapses, so an instance whose timer fires a little later skips the
/// same tick. `None` when another instance holds it (or the store cannot be reached).
/// Jobs running in this process, by (instance, job name).
static RUNNING_JOBS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
> = std::sync::LazyLock::new(Default::default);

/// A job marked as running on this instance until dropped.
#[derive(Debug)]
struct RunningJob((String, String));

impl RunningJob {
    fn start(instance: &str, name: &str) -> Option<RunningJob> {
        let key = (instance.to_owned(), name.to_owned());
        let mut running = RUNNING_JOBS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Lazily: a RunningJob built and dropped here would lock the set again, and remove the
        // running job's key.
        running.insert(key.clone()).then(|| RunningJob(key))
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        RUNNING_JOBS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

pub async fn exclusive<F: std::future::Future>(
    engine: &Engine,
    name: &str,
    job: F,
) -> Option<F::Output> {
    let take = |engine: Engine, name: String| async move {
        let now = engine.now();
        let until = now + i64::try_from(JOB_LEASE.as_millis()).unwrap_or(i64::MAX);
        engine
            .store()
            .acquire_lease(&name, engine.instance_id(), now, until)
            .await
    };
    // The lease keeps other instances out; this keeps a second run on this instance out (a
    // pass that outlasts its schedule interval would otherwise overlap the next, and the lease,
    // which this instance already holds, lets it in). Two keep-alive passes at once re-posted
    // the same sessions and took Graph's budget from the writes.
    let Some(_running) = RunningJob::start(engine.instance_id(), name) else {
        debug!(job = name, "The job is still running here; skipped");
        return None;
    };
    match take(engine.clone(), name.to_owned()).await {
        Ok(true) => {}
        Ok(false) => {
            debug!(
                job = name,
                "Another instance holds the job's lease; skipped"
            );
            return None;
        }
        Err(e) => {
            warn!(job = name, error = %e, "Could not take the job's lease; skipped");
            return None;
        }
    }
    let renew = {
        let (engine, name) = (engine.clone(), name.to_owned());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(JOB_LEASE / 3).await;
                if let Err(e) = take(engine.clone(), name.clone()).await {
                    warn!(job = %name, error = %e, "Could not renew the job's lease");
                }
            }
        })
    };
    let out = job.await;
    renew.abort();
    Some(out)
}

/// One reconcile pass under the `reconcile` lease, logged.
pub async fn scheduled_reconcile(engine: &Engine) -> Option<ReconcileReport> {
    match exclusive(engine, "reconcile", engine.reconcile()).await? {
        Ok(r) => {
            info!(
                drift = r.drift(),
                missed = r.missed_changes(),
                "Scheduled reconcile done"
            );
            Some(r)
        }
        Err(e) => {
            warn!(error = %e, "Scheduled reconcile failed");
            None
        }
    }
}

/// The catch-up pass of an instance that starts: what changed while it was down. The lease
/// may still be held by the instance it replaces, killed before it could give it back (or by
/// another instance's pass): it tries again until the lease lapses.
async fn catch_up_reconcile(engine: &Engine) {
    let deadline = tokio::time::Instant::now() + JOB_LEASE + Duration::from_secs(5);
    while scheduled_reconcile(engine).await.is_none() {
        if tokio::time::Instant::now() >= deadline {
            warn!("No catch-up reconcile: its lease stayed taken");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Run until Ctrl-C or SIGTERM; a second signal exits at once.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let service = build(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("listening on {}", config.http.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        info!("Shutting down: press Ctrl-C again to exit at once");
        let _ = stop_tx.send(true);
        shutdown_signal().await;
        warn!("Second signal: exiting now");
        std::process::exit(130);
    });
    let mut stop = stop_rx;
    let result = serve(service, &config, listener, async move {
        let _ = stop.changed().await;
    })
    .await;
    signals.abort();
    result
}

/// Serve `service` on `listener` with its scheduled jobs until `shutdown` completes; then stop
/// accepting, drain in-flight requests and the engine's work within its deadline, and return.
pub async fn serve(
    service: Service,
    config: &Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    info!(listen = %listener.local_addr()?, instance = %service.engine.instance_id(), "presync running");

    let scheduler = JobScheduler::new().await?;
    let engine = service.engine.clone();
    add_job(&scheduler, &config.reconcile.schedule, {
        let engine = engine.clone();
        move || {
            let engine = engine.clone();
            async move {
                scheduled_reconcile(&engine).await;
            }
        }
    })
    .await?;
    if let Some(d) = service.dataverse.clone() {
        // Each instance keeps its own copy of the catalog: this job runs everywhere.
        if let Err(e) = d.refresh_catalog().await {
            warn!(error = %e, "Presence catalog refresh failed; using the built-in presences");
        }
    }
    // A hold's presence may be a custom one, known once the catalog is read.
    let (holds, problems) = engine.holds();
    anyhow::ensure!(
        problems.is_empty(),
        "engine.rules.policies.hold:\n{}",
        problems.join("\n")
    );
    for h in &holds {
        info!(hold = %h.rule.describe(), presence = %h.native.code, "Hold in force");
    }
    if let Some(d) = service.dataverse.clone() {
        add_job(&scheduler, CATALOG_SCHEDULE, move || {
            let d = d.clone();
            async move {
                if let Err(e) = d.refresh_catalog().await {
                    warn!(error = %e, "Presence catalog refresh failed");
                }
            }
        })
        .await?;
    }
    let mut background = Vec::new();
    if config.reconcile.on_start {
        // A catch-up pass: what changed while this instance was down. A second's delay lets
        // the server answer and the subscriptions come up first.
        let engine = engine.clone();
        background.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            catch_up_reconcile(&engine).await;
        }));
    }
    if let Some(t) = service.teams.clone() {
        add_job(&scheduler, KEEP_ALIVE_SCHEDULE, {
            let (engine, t) = (engine.clone(), t.clone());
            move || keep_alive_pass(engine.clone(), t.clone())
        })
        .await?;
        if let Some(interval) = service.teams_polling {
            background.push(Poller::new(engine.clone(), TEAMS.into(), t).spawn(interval));
        }
    }
    if let Some(n) = service.teams_notifications {
        background.push(spawn_reader(
            engine.clone(),
            TEAMS.into(),
            n.connector.clone(),
            n.reread,
            Duration::from_millis(200),
        ));
        let maintain = {
            let (engine, manager) = (engine.clone(), n.manager.clone());
            move || subscriptions_pass(engine.clone(), manager.clone())
        };
        // At start, once the HTTP server below answers the validation handshake, and once
        // more a little later in case that first attempt failed; then every minute.
        let first = maintain.clone();
        background.push(tokio::spawn(async move {
            for delay in [200, 5_000] {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                first().await;
            }
        }));
        add_job(&scheduler, SUBSCRIPTION_SCHEDULE, maintain).await?;
        // Lifecycle events: renew, recreate, and read everyone again when changes were lost.
        let (manager, mut lifecycle, engine) = (n.manager.clone(), n.lifecycle, engine.clone());
        background.push(tokio::spawn(async move {
            while let Some(item) = lifecycle.recv().await {
                if manager.on_lifecycle(&item).await == LifecycleAction::Reread {
                    if let Err(e) = engine.reconcile().await {
                        warn!(error = %e, "Reconcile after a lifecycle event failed");
                    }
                }
            }
        }));
    }
    scheduler.start().await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let engine = service.engine.clone();
    let mut engine_stop = stop_rx.clone();
    let engine_task = tokio::spawn(async move {
        engine
            .run(async move {
                let _ = engine_stop.changed().await;
            })
            .await
    });
    let mut http_stop = stop_rx;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(config.http.header_timeout_secs),
        max_connections: crate::listener::connections_that_fit(config.http.max_connections),
        shutdown_deadline: Duration::from_secs(config.http.shutdown_deadline_secs),
    };
    crate::listener::serve(
        listener,
        service.router,
        limits,
        service.listener.clone(),
        async move {
            let _ = http_stop.changed().await;
        },
    )
    .await;
    for b in background {
        b.abort();
    }
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
    engine_task.await??;
    info!("presync stopped");
    Ok(())
}

/// Add a cron job (seconds first) that runs `pass` each time it fires.
async fn add_job<F, Fut>(scheduler: &JobScheduler, schedule: &str, pass: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    scheduler
        .add(Job::new_async(schedule, move |_, _| Box::pin(pass()))?)
        .await?;
    Ok(())
}

/// Teams keep-alive, on one instance at a time: re-post every session presync's records say it
/// holds, whichever instance wrote it. A session belongs to presync's application, not to an
/// instance, and one written before a restart or by an instance that died must not fade.
async fn keep_alive_pass(engine: Engine, teams: Arc<TeamsConnector>) {
    exclusive(&engine, "teams-keep-alive", async {
        let written = match engine.store().written_states(&TEAMS.into()).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "Keep-alive could not read presync's records");
                return;
            }
        };
        let adopted = teams
            .adopt_sessions(
                written
                    .into_iter()
                    .map(|(user, w)| (user.as_str().to_owned(), w.availability, w.written_at)),
            )
            .await;
        let r = teams.keep_alive().await;
        debug!(adopted, ?r, "Teams keep-alive pass");
    })
    .await;
}

/// Teams subscriptions, on one instance at a time: subscribe the directory's Teams users where
/// they are not yet, and renew what is due.
async fn subscriptions_pass(engine: Engine, manager: Arc<SubscriptionManager>) {
    exclusive(&engine, "teams-subscriptions", async {
        match engine.store().external_ids(&TEAMS.into()).await {
            Ok(ids) => {
                let users: Vec<String> = ids
                    .into_iter()
                    .map(|(_, e)| e.as_str().to_owned())
                    .collect();
                let r = manager.maintain(&users).await;
                debug!(?r, "Teams subscriptions maintained");
            }
            Err(e) => warn!(error = %e, "Could not read the directory for subscriptions"),
        }
    })
    .await;
}

/// Every minute: create missing Teams subscriptions and renew those due.
const SUBSCRIPTION_SCHEDULE: &str = "0 * * * * *";
/// Every 10 minutes: the Dataverse presence catalog.
const CATALOG_SCHEDULE: &str = "0 */10 * * * *";
/// Every 30 seconds: Teams sessions due for a re-post (the connector's `keep_alive_after_secs`
/// decides which).
const KEEP_ALIVE_SCHEDULE: &str = "*/30 * * * * *";

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `presync reconcile --once`: one pass, the repairs it queued sent, then a second pass to check.
/// Returns whether everything was in sync at the end.
pub async fn reconcile_once(config: Config) -> anyhow::Result<bool> {
    let service = build(&config).await?;
    let engine = service.engine;
    if let Some(d) = &service.dataverse {
        if let Err(e) = d.refresh_catalog().await {
            warn!(error = %e, "Presence catalog refresh failed; using the built-in presences");
        }
    }
    eprintln!("reconciling...");
    let first = engine.reconcile().await?;
    for s in &first.systems {
        match &s.error {
            Some(e) => eprintln!("  {}: read failed: {e}", s.system),
            None => eprintln!(
                "  {}: {} read, {} in sync, {} fed ({} unknown, {} missing)",
                s.system, s.read, s.in_sync, s.fed, s.unknown, s.missing
            ),
        }
    }
    eprintln!("sending repairs...");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        engine.resolve_pending().await?;
        engine.dispatch_pending().await?;
        let depths = engine.store().queue_depths().await?;
        if depths.outbox == 0 && depths.inbox == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("  {} write(s) still queued after 60 s", depths.outbox);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let check = engine.reconcile().await?;
    let remaining = check.drift() + check.missed_changes();
    println!(
        "{}",
        serde_json::json!({
            "missed_changes": first.missed_changes(),
            "drift_found": first.drift(),
            "remaining": remaining,
            "complete": first.complete() && check.complete(),
        })
    );
    Ok(remaining == 0 && check.complete())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use presync_engine::clock::SystemClock;
    use presync_engine::config::EngineConfig;
    use presync_engine::engine::Engine;
    use presync_engine::memory::MemorySystem;
    use presync_engine::store::Store;
    use presync_engine::topology::TopologyConfig;
    use presync_engine::{Connector, SystemId};

    use super::exclusive;

    async fn engine(url: &str) -> Engine {
        let clock = Arc::new(SystemClock);
        let connectors: BTreeMap<SystemId, Arc<dyn Connector>> = ["a", "b"]
            .into_iter()
            .map(|n| {
                let s = MemorySystem::new(n, clock.clone());
                (s.name(), s.connector() as Arc<dyn Connector>)
            })
            .collect();
        let store = Store::open(url).await.expect("store");
        let topology = TopologyConfig::full_mesh(&connectors);
        Engine::new(store, connectors, &topology, EngineConfig::default()).expect("engine")
    }

    /// Found by `presync bench`: a keep-alive pass that outlasted its 30 s interval ran again
    /// beside the next one on the same instance, whose lease let it in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_still_running_on_this_instance_is_not_started_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("p.db").display());
        let engine = engine(&url).await;
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let engine = engine.clone();
            async move { exclusive(&engine, "job", async { wait.await.is_ok() }).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(exclusive(&engine, "job", async { 1 }).await, None);
        assert_eq!(exclusive(&engine, "other", async { 2 }).await, Some(2));
        let _ = release.send(());
        assert_eq!(first.await.expect("first"), Some(true));
        // Once it ended, the same instance runs it again (it still holds the lease).
        assert_eq!(exclusive(&engine, "job", async { 3 }).await, Some(3));
    }
}
