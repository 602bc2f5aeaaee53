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
use presync_engine::engine::Engine;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{Connector, SystemId};
use presync_entra::{AssertionMode, Credential, EntraConfig, TokenClient};
use presync_teams::auth::AppCredentials;
use presync_teams::client::GraphClient;
use presync_teams::connector::TeamsConnector;
use presync_teams::poll::Poller;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{info, warn};

use crate::config::{Config, Entra};

/// Everything `presync run` starts.
pub struct Service {
    pub engine: Engine,
    pub router: Router,
    dataverse: Option<Arc<DataverseConnector>>,
    teams: Option<Arc<TeamsConnector>>,
    teams_polling: Option<Duration>,
}

#[derive(Clone)]
struct Shared {
    engine: Engine,
    dataverse: Option<Arc<Ingress>>,
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
pub async fn build(config: &Config) -> anyhow::Result<Service> {
    let store = Store::open(&config.database.url).await?;
    let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
    let mut dataverse = None;
    let mut dataverse_ingress = None;
    if let Some(d) = &config.dataverse {
        let dv_config = d.connector_config().map_err(anyhow::Error::msg)?;
        let scope = format!("{}/.default", d.org_url.trim_end_matches('/'));
        let creds = Arc::new(EntraCredentials::new(entra(&d.entra, scope)?));
        let connector = Arc::new(DataverseConnector::new(dv_config.clone(), creds)?);
        connectors.insert("dataverse".into(), connector.clone() as Arc<dyn Connector>);
        dataverse = Some(connector);
        dataverse_ingress = Some(dv_config);
    }
    let mut teams = None;
    let mut teams_polling = None;
    if let Some(t) = &config.teams {
        let scope = "https://graph.microsoft.com/.default".to_owned();
        let app = Arc::new(AppCredentials::new(entra(&t.entra, scope)?));
        let client = GraphClient::new(
            &t.graph.graph_url,
            app,
            None,
            t.graph.rate_limit,
            Duration::from_secs(t.graph.rate_window_secs),
            Duration::from_millis(t.graph.request_timeout_ms),
        )?;
        let connector = Arc::new(TeamsConnector::new(
            t.graph.clone(),
            client,
            Arc::new(SystemClock),
        )?);
        connectors.insert("teams".into(), connector.clone() as Arc<dyn Connector>);
        if t.ingress == "polling" {
            teams_polling = Some(Duration::from_secs(t.poll_interval_secs));
        } else {
            warn!("Teams change notifications are configured; this build runs Teams in polling mode only until the subscription wiring lands");
            teams_polling = Some(Duration::from_secs(t.poll_interval_secs));
        }
        teams = Some(connector);
    }
    let topology = TopologyConfig::full_mesh(&connectors);
    let engine = Engine::new(store, connectors, &topology, config.engine.clone())?;
    let ingress = match (&dataverse, dataverse_ingress) {
        (Some(connector), Some(c)) => Some(Arc::new(Ingress {
            engine: engine.clone(),
            system: "dataverse".into(),
            connector: connector.clone(),
            config: c.webhook.clone(),
            discovery: c.discovery.clone(),
            stats: IngressStats::default(),
        })),
        _ => None,
    };
    let shared = Shared {
        engine: engine.clone(),
        dataverse: ingress.clone(),
    };
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Some(i) = ingress {
        router = router.merge(presync_dataverse::webhook::router(i));
    }
    Ok(Service {
        engine,
        router,
        dataverse,
        teams,
        teams_polling,
    })
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.engine.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable: {e}"),
        ),
    }
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

/// Run until Ctrl-C or SIGTERM; a second signal exits at once.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let service = build(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("listening on {}", config.http.listen))?;
    info!(listen = %listener.local_addr()?, "presync running");

    let scheduler = JobScheduler::new().await?;
    let engine = service.engine.clone();
    scheduler
        .add(Job::new_async(
            config.reconcile.schedule.as_str(),
            move |_, _| {
                let engine = engine.clone();
                Box::pin(async move {
                    match engine.reconcile().await {
                        Ok(r) => info!(
                            drift = r.drift(),
                            missed = r.missed_changes(),
                            "Scheduled reconcile done"
                        ),
                        Err(e) => warn!(error = %e, "Scheduled reconcile failed"),
                    }
                })
            },
        )?)
        .await?;
    scheduler.start().await?;

    let mut background = Vec::new();
    if let Some(d) = service.dataverse.clone() {
        background.push(tokio::spawn(async move {
            loop {
                if let Err(e) = d.refresh_catalog().await {
                    warn!(error = %e, "Presence catalog refresh failed");
                }
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
        }));
    }
    if let Some(t) = service.teams.clone() {
        let keep = t.clone();
        background.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                keep.keep_alive().await;
            }
        }));
        if let Some(interval) = service.teams_polling {
            background.push(Poller::new(service.engine.clone(), "teams".into(), t).spawn(interval));
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        info!("Shutting down: press Ctrl-C again to exit at once");
        let _ = stop_tx.send(true);
        shutdown_signal().await;
        warn!("Second signal: exiting now");
        std::process::exit(130);
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
    axum::serve(listener, service.router)
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .await?;
    for b in background {
        b.abort();
    }
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
    engine_task.await??;
    signals.abort();
    info!("presync stopped");
    Ok(())
}

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
