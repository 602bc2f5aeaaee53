//! `presync demo`: the whole service on a laptop. Both simulators on loopback, the real service
//! (`service::serve`, the same code as `presync run`) on a SQLite database, a directory of
//! simulated representatives, and a working day compressed into `--duration` seconds: a burst of
//! sign-ins at shift start, customer conversations that make D365 Busy and then Available, Teams
//! meetings and calls, people setting Do not disturb by hand in either system, sign-outs and
//! sign-ins, plus lost, reordered and duplicated webhooks and 429s for the rules, the reconciler
//! and the dispatcher to absorb.
//!
//! At the end the activity stops, the reconciler runs, and the demo checks every representative:
//! Dynamics 365, Teams and presync's canonical state must all show the same availability. It
//! exits 0 only then.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::{builtin, Catalog};
use presync_dataverse::sim::{DataverseSim, SimConfig, SimCredential, WebhookTarget};
use presync_engine::engine::Engine;
use presync_engine::{Availability, ExternalId, NativeState, RepId, Representative};
use presync_teams::mapping::{Mapping, Pair};
use presync_teams::sim::{GraphSim, GraphSimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated representatives.
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Seconds of activity; then the demo settles, checks and exits. Ctrl-C ends it early.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Print the summary as one JSON object on stdout (progress still goes to a terminal).
    #[arg(long)]
    json: bool,
    /// Seed of the simulated activity: the same seed plays the same day.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep presync's state in this database (e.g. `sqlite:demo.db`, then `presync explain`);
    /// by default a temporary SQLite file that is deleted at the end.
    #[arg(long)]
    database: Option<String>,
}

const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
const TENANT: &str = "presync-demo";
const ORG: &str = "contoso.crm.dynamics.com";
/// How long the demo waits for everything to settle after the activity stops.
const SETTLE: Duration = Duration::from_secs(60);

/// What a representative is doing, as the simulated people see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    Conversation,
    Meeting,
    Call,
    TeamsDnd,
    D365Dnd,
    SignedOut,
}

struct SimRep {
    agent: String,
    aad: String,
    doing: Option<(Doing, Instant)>,
    next: Instant,
}

/// A change in one system whose propagation to the other the demo times.
#[derive(Debug, Clone, Copy)]
struct Awaited {
    to_teams: bool,
    expected: Availability,
    since: Instant,
}

#[derive(Default)]
struct Latencies {
    awaited: HashMap<usize, Awaited>,
    to_teams: Vec<f64>,
    to_d365: Vec<f64>,
}

struct World {
    dv: DataverseSim,
    graph: GraphSim,
    catalog: Catalog,
    reps: Vec<(String, String, String)>,
}

impl World {
    fn d365(&self, agent: &str) -> Availability {
        self.dv
            .presence(agent)
            .and_then(|p| self.catalog.canonical(&p))
            .unwrap_or(Availability::Offline)
    }

    fn d365_label(&self, agent: &str) -> String {
        self.dv
            .presence(agent)
            .and_then(|p| self.catalog.entry(&p).map(|e| e.name.clone()))
            .unwrap_or_else(|| "?".into())
    }

    fn teams(&self, aad: &str) -> (Availability, String) {
        let (a, act) = self.graph.presence(aad);
        let mapped = Mapping::to_canonical(&NativeState::new(Pair::new(&a, &act).code()));
        (mapped.availability, format!("{a}/{act}"))
    }
}

/// One representative as D365, Teams and presync each show them.
struct Views {
    d365: Availability,
    d365_label: String,
    teams: Availability,
    teams_native: String,
    presync: Option<Availability>,
}

impl Views {
    async fn of(
        world: &World,
        engine: &Engine,
        (id, agent, aad): &(String, String, String),
    ) -> anyhow::Result<Views> {
        let (teams, teams_native) = world.teams(aad);
        Ok(Views {
            d365: world.d365(agent),
            d365_label: world.d365_label(agent),
            teams,
            teams_native,
            presync: engine
                .store()
                .rep_view(&RepId(id.clone()))
                .await?
                .canonical
                .map(|p| p.availability),
        })
    }

    fn agree(&self) -> bool {
        self.presync == Some(self.d365) && self.d365 == self.teams
    }

    fn presync_text(&self) -> String {
        self.presync.map_or("-".to_owned(), |c| c.to_string())
    }
}

/// The decisions the demo counts as conflicts: an observation that lost against another state.
const CONFLICT_RULES: [&str; 5] = [
    "stale",
    "superseded",
    "manual_wins",
    "debounced",
    "deferred",
];

fn conflicts(engine: &Engine) -> u64 {
    let d = engine.stats().decisions();
    CONFLICT_RULES
        .iter()
        .map(|r| d.get(r).copied().unwrap_or(0))
        .sum()
}

/// Drift and missed changes the reconciler found (and queued for repair).
fn drift_repaired(engine: &Engine) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let st = engine.stats();
    st.drift_found.load(Relaxed) + st.missed_found.load(Relaxed)
}

/// Every latency sample of both directions, sorted.
fn all_latencies(l: &Latencies) -> Vec<f64> {
    let mut all: Vec<f64> = l.to_teams.iter().chain(&l.to_d365).copied().collect();
    all.sort_by(f64::total_cmp);
    all
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let tty = std::io::stderr().is_terminal();

    // presync's listener first: the Dataverse simulator needs its webhook URL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let presync_url = format!("http://{}", listener.local_addr()?);
    let secret = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, uuid::Uuid::new_v4().simple().to_string())?;
        Ok(path)
    };
    let (hook_secret, dv_secret, graph_secret, admin_token) = (
        secret("webhook-secret")?,
        secret("dataverse-secret")?,
        secret("graph-secret")?,
        secret("admin-token")?,
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();

    let mut dv_cfg = SimConfig::new(
        TENANT,
        "presync-demo",
        SimCredential::ClientSecret(read(&dv_secret)),
        ORG,
    );
    dv_cfg.webhook = Some(WebhookTarget::new(
        format!("{presync_url}/webhooks/dataverse"),
        WebhookAuth::HttpHeader {
            name: "x-presync-secret".into(),
            value: read(&hook_secret),
        },
    ));
    let dv = DataverseSim::new(dv_cfg);
    let graph = GraphSim::new(
        GraphSimConfig::new(
            TENANT,
            APP_ID,
            read(&graph_secret),
            "99999999-0000-0000-0000-000000000001",
            "unused-refresh-token",
        ),
        Arc::new(presync_engine::clock::SystemClock),
    );
    let mut reps = Vec::with_capacity(args.reps);
    for i in 0..args.reps {
        let (agent, aad) = crate::sim::seeded_agent(i);
        // Before the shift: signed out everywhere.
        dv.add_agent(&agent, &aad, &format!("Rep {i}"), builtin::OFFLINE, false);
        graph.add_user(&aad);
        reps.push((format!("rep-{i:04}"), agent, aad));
    }
    let dv_base = format!("http://{}", dv.spawn().await?);
    let graph_base = format!("http://{}", graph.spawn().await?);

    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("presync.db").display()));
    let toml = format!(
        r#"[database]
url = "{database}"
[http]
listen = "{listen}"
admin_token = {{ file = "{admin}" }}
[reconcile]
schedule = "*/10 * * * * *"
[engine.pipeline]
poll_interval_ms = 100
[dataverse]
org_url = "{dv_base}"
webhook_secret = {{ file = "{hook}" }}
organization = "{ORG}"
[dataverse.entra]
authority = "{dv_base}"
tenant_id = "{TENANT}"
client_id = "presync-demo"
client_secret = {{ file = "{dvs}" }}
[teams]
ingress = "polling"
poll_interval_secs = 1
[teams.entra]
authority = "{graph_base}"
tenant_id = "{TENANT}"
client_id = "{APP_ID}"
client_secret = {{ file = "{gs}" }}
[teams.graph]
app_id = "{APP_ID}"
graph_url = "{graph_base}/v1.0"
"#,
        listen = listener.local_addr()?,
        admin = admin_token.display(),
        hook = hook_secret.display(),
        dvs = dv_secret.display(),
        gs = graph_secret.display(),
    );
    let config_path = dir.path().join("presync.toml");
    std::fs::write(&config_path, toml)?;
    let config =
        crate::config::load(Some(&config_path)).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    let problems = config.validate();
    anyhow::ensure!(
        problems.is_empty(),
        "demo configuration: {}",
        problems.join("; ")
    );

    let service = crate::service::build(&config).await?;
    let engine = service.engine.clone();
    let now = engine.now();
    for (id, agent, aad) in &reps {
        let rep = Representative {
            id: RepId(id.clone()),
            display_name: id.clone(),
            external_ids: [
                (crate::service::DATAVERSE.into(), ExternalId(agent.clone())),
                (crate::service::TEAMS.into(), ExternalId(aad.clone())),
            ]
            .into_iter()
            .collect(),
        };
        engine.store().upsert_representative(&rep, now).await?;
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let config = config.clone();
        tokio::spawn(async move {
            crate::service::serve(service, &config, listener, async move {
                let _ = stop_rx.changed().await;
            })
            .await
        })
    };

    let world = Arc::new(World {
        dv: dv.clone(),
        graph: graph.clone(),
        catalog: Catalog::builtin(),
        reps: reps.clone(),
    });
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let sampler = tokio::spawn(sample(world.clone(), latencies.clone()));
    let started = Instant::now();
    let run_for = Duration::from_secs(args.duration);
    let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver = tokio::spawn(drive(
        world.clone(),
        latencies.clone(),
        changes.clone(),
        args.seed,
        started,
        run_for,
    ));
    let progress = {
        let (world, engine, latencies) = (world.clone(), engine.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut drawn = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(if tty { 500 } else { 5_000 })).await;
                let phase = if started.elapsed() < run_for {
                    "running"
                } else {
                    "settling"
                };
                drawn = show(
                    &world, &engine, &latencies, started, run_for, phase, tty, drawn,
                )
                .await;
            }
        })
    };

    let interrupted = tokio::select! {
        _ = tokio::time::sleep(run_for) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    driver.abort();
    if interrupted {
        eprintln!("\nInterrupted: settling (Ctrl-C again to exit at once)");
        tokio::spawn(async {
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        });
    }
    let activity_secs = started.elapsed().as_secs_f64();

    // Settle: let a reconcile pass repair what the events missed, the writes go out, and the
    // Teams poller see the result, until every representative agrees or the time is up.
    let settle_until = Instant::now() + SETTLE;
    let mut diverged;
    loop {
        crate::service::scheduled_reconcile(&engine).await;
        drain(&engine, settle_until).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        drain(&engine, settle_until).await;
        diverged = divergent(&world, &engine).await?;
        if diverged.is_empty() || Instant::now() >= settle_until {
            break;
        }
    }
    progress.abort();
    sampler.abort();
    if tty {
        let _ = show(
            &world, &engine, &latencies, started, run_for, "done", tty, 0,
        )
        .await;
    }

    let st = engine.stats();
    let rate_limited = dv.requests().iter().filter(|r| r.status == 429).count()
        + graph.requests().iter().filter(|r| r.status == 429).count();
    let (all, to_teams, to_d365) = {
        let l = latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (
            stats(&mut all_latencies(&l)),
            stats(&mut l.to_teams.clone()),
            stats(&mut l.to_d365.clone()),
        )
    };
    use std::sync::atomic::Ordering::Relaxed;
    let converged = diverged.is_empty();
    let summary = json!({
        "reps": args.reps,
        "seed": args.seed,
        "duration_s": round1(activity_secs),
        "changes": changes.load(Relaxed),
        "events": st.accepted.load(Relaxed),
        "events_per_s": round1(st.accepted.load(Relaxed) as f64 / activity_secs.max(0.001)),
        "writes": st.writes_ok.load(Relaxed),
        "write_retries": st.retries.load(Relaxed),
        "echoes_suppressed": st.decisions().get("echo").copied().unwrap_or(0),
        "conflicts": conflicts(&engine),
        "drift_repaired": drift_repaired(&engine),
        "lost_webhooks": dv.dropped_webhooks().len(),
        "duplicate_webhooks": st.duplicates.load(Relaxed),
        "rate_limited_responses": rate_limited,
        "converged": converged,
        "diverged": diverged,
        "latency_ms": all,
        "latency_ms_d365_to_teams": to_teams,
        "latency_ms_teams_to_d365": to_d365,
    });

    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(20), server).await {
        Ok(Ok(Err(e))) => eprintln!("presync stopped with an error: {e:#}"),
        Err(_) => eprintln!("presync did not stop within 20 s"),
        _ => {}
    }
    if args.json {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    Ok(converged)
}

/// Wait until the inbox and the outbox are empty (or `until`).
async fn drain(engine: &Engine, until: Instant) {
    while Instant::now() < until {
        match engine.store().queue_depths().await {
            Ok(d) if d.inbox == 0 && d.outbox == 0 => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Representatives whose three views disagree: `id: D365 x, Teams y, presync z`.
async fn divergent(world: &World, engine: &Engine) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for rep in &world.reps {
        let v = Views::of(world, engine, rep).await?;
        if !v.agree() {
            out.push(format!(
                "{}: D365 {} ({}), Teams {} ({}), presync {}",
                rep.0,
                v.d365,
                v.d365_label,
                v.teams,
                v.teams_native,
                v.presync_text()
            ));
        }
    }
    Ok(out)
}

/// The simulated people and D365's routing, until aborted.
async fn drive(
    world: Arc<World>,
    latencies: Arc<Mutex<Latencies>>,
    changes: Arc<std::sync::atomic::AtomicU64>,
    seed: u64,
    started: Instant,
    run_for: Duration,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rng = StdRng::seed_from_u64(seed);
    let secs = run_for.as_secs_f64();
    // Shift start: everyone signs in within the first few seconds.
    let burst = (secs / 5.0).clamp(0.5, 3.0);
    let mut people: Vec<SimRep> = world
        .reps
        .iter()
        .map(|(_, agent, aad)| SimRep {
            agent: agent.clone(),
            aad: aad.clone(),
            doing: Some((
                Doing::SignedOut,
                started + Duration::from_secs_f64(rng.random_range(0.0..burst)),
            )),
            next: started,
        })
        .collect();
    // Activities start until just before the end: when the time is up, some people are still in
    // a meeting or a conversation, and the final states differ from one person to the next.
    let last_start = started + run_for.mul_f64(0.95);
    let faults_at = [
        started + run_for.mul_f64(0.3),
        started + run_for.mul_f64(0.5),
        started + run_for.mul_f64(0.4),
    ];
    let mut faults_done = [false, false, false];
    let expect = |i: usize, to_teams: bool, expected: Availability| {
        if let Ok(mut l) = latencies.lock() {
            l.awaited.insert(
                i,
                Awaited {
                    to_teams,
                    expected,
                    since: Instant::now(),
                },
            );
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        if !faults_done[0] && now >= faults_at[0] {
            faults_done[0] = true;
            // Lost webhooks: a failed async job in Dataverse that nobody retries.
            let n = u32::try_from((world.reps.len() / 10).clamp(2, 50)).unwrap_or(2);
            world
                .dv
                .inject(presync_dataverse::sim::Fault::DropWebhooks(n));
        }
        if !faults_done[1] && now >= faults_at[1] {
            faults_done[1] = true;
            for _ in 0..2 {
                world
                    .graph
                    .inject(presync_teams::sim::Fault::RateLimited { retry_after: 1.0 });
            }
            world.dv.inject(presync_dataverse::sim::Fault::RateLimited {
                retry_after_secs: 1,
            });
        }
        if !faults_done[2] && now >= faults_at[2] {
            faults_done[2] = true;
            // Dataverse runs webhooks as asynchronous jobs in no guaranteed order, and retries:
            // a few arrive out of order, a few twice.
            let n = u32::try_from((world.reps.len() / 10).clamp(3, 30)).unwrap_or(3);
            world
                .dv
                .inject(presync_dataverse::sim::Fault::ReorderWebhooks(n));
            world
                .dv
                .inject(presync_dataverse::sim::Fault::DuplicateWebhooks(n));
        }
        for (i, p) in people.iter_mut().enumerate() {
            // End what is due.
            if let Some((doing, until)) = p.doing {
                if now < until {
                    continue;
                }
                p.doing = None;
                p.next = now + Duration::from_secs_f64(rng.random_range(0.3..2.5));
                changes.fetch_add(1, Relaxed);
                match doing {
                    Doing::Conversation => {
                        if world.dv.presence(&p.agent).as_deref() == Some(builtin::BUSY) {
                            world.dv.system_sets(&p.agent, builtin::AVAILABLE);
                            expect(i, true, Availability::Available);
                        }
                    }
                    Doing::Meeting | Doing::Call => {
                        world.graph.person_leaves_meeting(&p.aad);
                        world.graph.person_leaves_call(&p.aad);
                        expect(i, false, Availability::Available);
                    }
                    Doing::TeamsDnd => {
                        world.graph.person_clears_preferred(&p.aad);
                        expect(i, false, Availability::Available);
                    }
                    Doing::D365Dnd => {
                        world.dv.agent_sets(&p.agent, builtin::AVAILABLE);
                        expect(i, true, Availability::Available);
                    }
                    Doing::SignedOut => {
                        world.dv.sign_in(&p.agent, builtin::AVAILABLE);
                        world.graph.person_signs_in(&p.aad);
                    }
                }
                continue;
            }
            if now < p.next || now >= last_start {
                continue;
            }
            // Start something new. D365 routes conversations only to an Available agent.
            let length =
                Duration::from_secs_f64(rng.random_range(1.5f64..6.0).min(secs / 4.0).max(0.5));
            let roll: f64 = rng.random();
            let doing = if roll < 0.45 {
                if world.dv.presence(&p.agent).as_deref() != Some(builtin::AVAILABLE) {
                    p.next = now + Duration::from_millis(500);
                    continue;
                }
                world.dv.system_sets(&p.agent, builtin::BUSY);
                expect(i, true, Availability::Busy);
                Doing::Conversation
            } else if roll < 0.62 {
                world.graph.person_joins_meeting(&p.aad);
                expect(i, false, Availability::Busy);
                Doing::Meeting
            } else if roll < 0.72 {
                world.graph.person_joins_call(&p.aad);
                expect(i, false, Availability::Busy);
                Doing::Call
            } else if roll < 0.82 {
                world
                    .graph
                    .person_sets_preferred(&p.aad, "DoNotDisturb", "DoNotDisturb");
                expect(i, false, Availability::DoNotDisturb);
                Doing::TeamsDnd
            } else if roll < 0.92 {
                world.dv.agent_sets(&p.agent, builtin::BUSY_DND);
                expect(i, true, Availability::DoNotDisturb);
                Doing::D365Dnd
            } else {
                world.dv.sign_out(&p.agent);
                world.graph.person_signs_out(&p.aad);
                if let Ok(mut l) = latencies.lock() {
                    l.awaited.remove(&i);
                }
                Doing::SignedOut
            };
            changes.fetch_add(1, Relaxed);
            p.doing = Some((doing, now + length));
        }
    }
}

/// Time each awaited propagation: when the other system shows the expected availability.
async fn sample(world: Arc<World>, latencies: Arc<Mutex<Latencies>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let awaited: Vec<(usize, Awaited)> = match latencies.lock() {
            Ok(l) => l.awaited.iter().map(|(i, a)| (*i, *a)).collect(),
            Err(_) => return,
        };
        for (i, a) in awaited {
            let (_, agent, aad) = &world.reps[i];
            let shown = if a.to_teams {
                world.teams(aad).0
            } else {
                world.d365(agent)
            };
            if shown == a.expected {
                let ms = a.since.elapsed().as_secs_f64() * 1000.0;
                if let Ok(mut l) = latencies.lock() {
                    // Only if no newer change replaced it meanwhile.
                    if l.awaited.get(&i).is_some_and(|b| b.since == a.since) {
                        l.awaited.remove(&i);
                        if a.to_teams {
                            l.to_teams.push(ms);
                        } else {
                            l.to_d365.push(ms);
                        }
                    }
                }
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn stats(v: &mut [f64]) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({
        "p50": round1(percentile(v, 50.0)),
        "p99": round1(percentile(v, 99.0)),
        "max": round1(v.last().copied().unwrap_or(0.0)),
        "samples": v.len(),
    })
}

/// The live view: a redrawn block on a terminal, a line every few seconds otherwise. Returns
/// how many lines it drew (to redraw over them next time).
#[allow(clippy::too_many_arguments)]
async fn show(
    world: &World,
    engine: &Engine,
    latencies: &Mutex<Latencies>,
    started: Instant,
    run_for: Duration,
    phase: &str,
    tty: bool,
    drawn: usize,
) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let st = engine.stats();
    let d = st.decisions();
    let elapsed = started.elapsed().as_secs_f64();
    let events = st.accepted.load(Relaxed);
    let (p50, p99) = latencies.lock().map_or((0.0, 0.0), |l| {
        let all = all_latencies(&l);
        (percentile(&all, 50.0), percentile(&all, 99.0))
    });
    let conflicts = conflicts(engine);
    let head = format!(
        "presync demo · {phase} · {:.0}/{} s · {} reps\nevents {events} ({:.1}/s) · writes {} · echoes suppressed {} · conflicts {conflicts} · drift repaired {} · latency p50 {p50:.0} ms, p99 {p99:.0} ms",
        elapsed.min(run_for.as_secs_f64()),
        run_for.as_secs(),
        world.reps.len(),
        events as f64 / elapsed.max(0.001),
        st.writes_ok.load(Relaxed),
        d.get("echo").copied().unwrap_or(0),
        drift_repaired(engine),
    );
    if !tty {
        eprintln!("{}", head.replace('\n', " · "));
        return 0;
    }
    let mut lines = vec![String::new()];
    lines.extend(head.lines().map(str::to_owned));
    lines.push(format!(
        "{:<10} {:<24} {:<26} {:<13}",
        "rep", "Dynamics 365", "Teams", "presync"
    ));
    for rep in world.reps.iter().take(12) {
        let Ok(v) = Views::of(world, engine, rep).await else {
            continue;
        };
        lines.push(format!(
            "{:<10} {:<24} {:<26} {:<13} {}",
            rep.0,
            v.d365_label,
            v.teams_native,
            v.presync_text(),
            if v.agree() { "=" } else { "~" }
        ));
    }
    if world.reps.len() > 12 {
        lines.push(format!("... and {} more", world.reps.len() - 12));
    }
    let mut err = std::io::stderr().lock();
    if drawn > 0 {
        let _ = write!(err, "\x1b[{drawn}A");
    }
    for l in &lines {
        let _ = writeln!(err, "\x1b[2K{l}");
    }
    let _ = err.flush();
    lines.len()
}

fn print_summary(s: &serde_json::Value) {
    println!("presync demo summary");
    for key in [
        "reps",
        "duration_s",
        "changes",
        "events",
        "events_per_s",
        "writes",
        "write_retries",
        "echoes_suppressed",
        "conflicts",
        "drift_repaired",
        "lost_webhooks",
        "duplicate_webhooks",
        "rate_limited_responses",
    ] {
        println!("  {key:<24} {}", s[key]);
    }
    for key in [
        "latency_ms",
        "latency_ms_d365_to_teams",
        "latency_ms_teams_to_d365",
    ] {
        println!(
            "  {key:<24} p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            s[key]["p50"], s[key]["p99"], s[key]["max"], s[key]["samples"]
        );
    }
    if s["converged"] == true {
        println!("  converged: every representative shows the same availability in D365, Teams and presync");
    } else {
        println!("  NOT converged:");
        if let Some(d) = s["diverged"].as_array() {
            for line in d {
                println!("    {}", line.as_str().unwrap_or_default());
            }
        }
    }
}
