//! `presync soak`: a chaos soak. The real service (one or more `presync run` processes behind a
//! loopback load balancer, see [`crate::harness`]) runs against both simulators while simulated
//! people work, and faults arrive at configurable rates: 429 with `Retry-After`, 5xx, slow and
//! timed-out responses from both systems; dropped, duplicated and reordered Dataverse webhooks
//! and Graph notifications; and instances killed with SIGKILL at random moments and restarted.
//!
//! At the end the activity and the faults stop, one reconcile pass runs, and the soak checks the
//! outcome against the people's truth ([`crate::truth`]: what each system should show, from the
//! simulators' own records of what the people did and each service's documented behaviour):
//!
//! - **follows the people**: every representative shows, in D365, in Teams (presync's own part
//!   there, and the aggregate) and in presync's canonical state, what the truth says; and every
//!   write presync made follows the truth in its order (no echo sent back, no stale state over
//!   a newer one, no hold where none holds);
//! - **routing**: the simulated router offered no conversation to a representative who, by the
//!   truth, should not have been routable for longer than `--reaction-ms` by then;
//! - **nothing acknowledged lost**: every webhook delivery presync answered 2xx has its decision
//!   in presync's history;
//! - **bounded write amplification**: writes into each system per genuine change in the other
//!   stay at or below `--max-amplification`;
//! - **no crash**: no instance exited other than by the soak's own SIGKILL.
//!
//! It prints the figures and exits non-zero when any check fails.

mod chaos;
mod people;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use presync_engine::store::Store;
use presync_engine::Availability;
use serde_json::json;
use tokio::time::Instant;

use crate::harness::{self, Harness, Ingress, Options};
use crate::truth::{checks, latency, offers, Rules, Truth};
use chaos::{inject, kill_and_restart, FaultRates, Fleet, Injected, REQUEST_TIMEOUT_MS};
use people::{drive, Activity};
pub(crate) use watch::{Progress, Watch};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Seconds of activity and faults; then the soak settles, reconciles once and checks.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// How many simulated representatives.
    #[arg(long, default_value_t = 40)]
    reps: usize,
    /// A PostgreSQL server URL (`postgres://USER@HOST/DB`): the soak creates a fresh database
    /// on that server and drops it at the end. By default a temporary SQLite file.
    #[arg(long)]
    database: Option<String>,
    /// How many `presync run` instances (default: 2 on PostgreSQL, 1 on SQLite).
    #[arg(long)]
    instances: Option<usize>,
    /// Seed of the activity and of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bound on writes into a system per genuine change in the other.
    #[arg(long, default_value_t = 1.5)]
    max_amplification: f64,
    /// How long presync may take to make a representative unroutable before an offer of the
    /// simulated router to them counts against it (milliseconds).
    #[arg(long, default_value_t = 1_000)]
    reaction_ms: i64,
    /// Print the figures as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Write the evidence here (instance logs, and for each representative a check flagged,
    /// the genuine changes and presync's writes in order) when a check fails.
    #[arg(long, default_value = "presync-soak-failure")]
    evidence: std::path::PathBuf,
    #[command(flatten)]
    faults: FaultRates,
}

/// How long the soak waits for everything to settle after the reconcile.
const SETTLE: Duration = Duration::from_secs(120);

impl SoakArgs {
    /// The day `presync demo` plays: the soak's people, gentler faults (no kills, no
    /// timeouts), and no evidence kept.
    pub(crate) fn demo(reps: usize, duration: u64, seed: u64) -> SoakArgs {
        SoakArgs {
            duration,
            reps,
            database: None,
            instances: Some(1),
            seed,
            max_amplification: 1.5,
            reaction_ms: 1_000,
            json: false,
            evidence: std::path::PathBuf::new(),
            faults: FaultRates::gentle(),
        }
    }
}

pub async fn run(args: SoakArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let pg = match &args.database {
        Some(url) if url.starts_with("postgres") => {
            Some(harness::FreshPostgres::create(url).await?)
        }
        Some(other) => {
            anyhow::bail!("--database: {other:?} is not a postgres:// URL (SQLite is the default)")
        }
        None => None,
    };
    let instances = args.instances.unwrap_or(if pg.is_some() { 2 } else { 1 });
    anyhow::ensure!(instances >= 1, "--instances must be at least 1");
    let mut opts = Options::new(args.reps);
    opts.database = pg.as_ref().map(|p| p.url.clone());
    opts.ingress = Ingress::Subscriptions;
    opts.reconcile_schedule = "0 0 0 1 1 *".to_owned();
    opts.dataverse_toml = format!("request_timeout_ms = {REQUEST_TIMEOUT_MS}");
    opts.teams_graph_toml = format!("request_timeout_ms = {REQUEST_TIMEOUT_MS}");
    opts.extra_toml = "[engine.pipeline]\npoll_interval_ms = 50\nlease_ms = 5000\n".to_owned();
    let outcome = play(&args, &opts, instances, &mut watch::Lines).await;
    if let Some(pg) = pg {
        pg.drop_database().await;
    }
    let (passed, summary) = outcome?;
    if args.json {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    Ok(passed)
}

/// Play the soak's day with `args` on a harness built from `opts`: the people and the faults
/// for `args.duration`, then settle and check against the truth. `watch` sees the progress as it
/// goes. Returns whether every check passed, and the figures.
pub(crate) async fn play(
    args: &SoakArgs,
    opts: &Options,
    instances: usize,
    watch: &mut dyn Watch,
) -> anyhow::Result<(bool, serde_json::Value)> {
    let h = Arc::new(Harness::start(opts, instances).await?);
    let fleet = start_fleet(&h, instances, opts.ingress).await?;
    h.wait_adopted(&h.instance_url(0), Duration::from_secs(60))
        .await?;
    // Everyone is signed in to both systems and Available, and presync knows it: the truth
    // starts now.
    let start = wall_ms();
    watch.begin(&h, instances, database_name(opts), args.duration);
    let done = Arc::new(Mutex::new(Activity::default()));
    let injected = Arc::new(Mutex::new(Injected::default()));
    let started = Instant::now();
    activity(&h, &fleet, &done, &injected, args, start, watch).await;
    watch.settling();
    let end = settle(&h, &fleet, start).await?;
    let mut injected = injected.lock().map(|i| i.clone()).unwrap_or_default();
    injected.crashes += end.crashes;
    let truth = Truth::of(&h, Rules::default(), start);
    let writes = checks::audit_writes(&h, &truth);
    let routable = [Availability::Available, Availability::Busy];
    let offers = offers::offers(
        &offers::Records::of(&h),
        &truth,
        &routable,
        args.reaction_ms,
        &injected.outages,
    );
    let amplification_ok = writes
        .iter()
        .all(|(_, w)| w.amplification() <= args.max_amplification);
    let unjustified: u64 = writes.iter().map(|(_, w)| w.unjustified).sum();
    let checks = json!({
        "follows_the_people": end.diverged.is_empty() && unjustified == 0,
        "routing": offers.while_unavailable.is_empty(),
        "nothing_acknowledged_lost": end.lost.is_empty(),
        "write_amplification_bounded": amplification_ok,
        "no_crash": injected.crashes == 0,
    });
    let passed = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v == true));
    let ok = |s: Option<u16>| s.is_some_and(|s| (200..300).contains(&s));
    let deliveries = h.dv.deliveries();
    let notifications = h.graph.notifications();
    let count = |statuses: &[u16], of: &[u16]| statuses.iter().filter(|s| of.contains(s)).count();
    let dv_status: Vec<u16> = h.dv.requests().iter().map(|r| r.status).collect();
    let graph_status: Vec<u16> = h.graph.requests().iter().map(|r| r.status).collect();
    let (genuine_d365, genuine_teams) = truth.genuine();
    let follow = crate::truth::latency::follow(&h, &truth);
    let did = done.lock().map(|d| *d).unwrap_or_default();
    let summary = json!({
        "passed": passed,
        "checks": checks,
        "reps": args.reps,
        "instances": instances,
        "database": database_name(opts),
        "duration_s": args.duration,
        "wall_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "seed": args.seed,
        "people": {
            "d365_actions": did.d365,
            "teams_actions": did.teams,
            "conversations": did.conversations,
        },
        "genuine_changes": { "d365": genuine_d365, "teams": genuine_teams },
        "held_at_the_end": truth.held(),
        "latency_ms": latency::summary(&follow.all()),
        "latency_ms_to_d365": latency::summary(&follow.to_d365),
        "latency_ms_to_teams": latency::summary(&follow.to_teams),
        "routing": offers.json(),
        "webhooks": {
            "sent": deliveries.len(),
            "acknowledged": deliveries.iter().filter(|d| ok(d.status)).count(),
            "refused_or_unanswered": deliveries.iter().filter(|d| !ok(d.status)).count(),
            "dropped": h.dv.dropped_webhooks().len(),
            "acknowledged_lost": end.lost.len(),
        },
        "notifications": {
            "sent": notifications.len(),
            "accepted": notifications.iter().filter(|n| n.accepted).count(),
            "dropped": h.graph.dropped_notifications().len(),
        },
        "responses": {
            "d365_429": count(&dv_status, &[429]),
            "d365_5xx": count(&dv_status, &[500, 502, 503, 504]),
            "teams_429": count(&graph_status, &[429]),
            "teams_5xx": count(&graph_status, &[500, 502, 503, 504]),
        },
        "injected": injected,
        "writes": writes.iter().map(|(k, w)| (k.to_string(), w.json())).collect::<serde_json::Map<_, _>>(),
        "unjustified_writes": unjustified,
        "diverged_before_reconcile": end.before_reconcile,
        "reconcile": end.reconcile,
        "diverged": end.diverged.iter().map(|(_, d)| d).collect::<Vec<_>>(),
        "acknowledged_but_lost": end.lost.iter().take(20).collect::<Vec<_>>(),
    });
    if !passed && !args.evidence.as_os_str().is_empty() {
        let flagged: Vec<usize> = end
            .diverged
            .iter()
            .map(|(i, _)| *i)
            .chain(writes.iter().flat_map(|(_, w)| w.flagged.iter().copied()))
            .chain(offers.while_unavailable.iter().map(|(r, _, _)| *r))
            .collect();
        let kept = keep_evidence(&h, &truth, &flagged, start, &args.evidence);
        eprintln!(
            "presync soak FAILED; evidence in {} ({})",
            args.evidence.display(),
            kept.err()
                .map_or("complete".to_owned(), |e| format!("incomplete: {e}"))
        );
    }
    Ok((passed, summary))
}

/// The wall clock both simulators stamp their records with.
fn wall_ms() -> presync_engine::Millis {
    presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock)
}

fn database_name(opts: &Options) -> &'static str {
    if opts.database.is_some() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// Start every instance and wait until presync has its Teams subscriptions (when it learns of
/// Teams changes by them).
async fn start_fleet(h: &Harness, instances: usize, ingress: Ingress) -> anyhow::Result<Fleet> {
    let fleet: Fleet = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    for i in 0..instances {
        let inst = h.spawn(i)?;
        harness::ready(&inst.url, Duration::from_secs(60)).await?;
        fleet.lock().await.push(Some(inst));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while ingress == Ingress::Subscriptions && h.graph.subscriptions().is_empty() {
        anyhow::ensure!(
            Instant::now() < until,
            "presync created no Teams subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(fleet)
}

/// The people at work, the faults and the kills, for `--duration`, shown to `watch` as it goes.
async fn activity(
    h: &Arc<Harness>,
    fleet: &Fleet,
    done: &Arc<Mutex<Activity>>,
    injected: &Arc<Mutex<Injected>>,
    args: &SoakArgs,
    start: presync_engine::Millis,
    watch: &mut dyn Watch,
) {
    let started = Instant::now();
    let run_for = Duration::from_secs(args.duration);
    let tasks = [
        tokio::spawn(drive(h.clone(), done.clone(), args.seed, run_for)),
        tokio::spawn(inject(
            h.clone(),
            args.faults.clone(),
            injected.clone(),
            args.seed.wrapping_add(1),
        )),
        tokio::spawn(kill_and_restart(
            h.clone(),
            fleet.clone(),
            args.faults.kill_every_secs,
            injected.clone(),
            args.seed.wrapping_add(2),
        )),
    ];
    let every = watch.every();
    let mut tick = tokio::time::interval_at(started + every, every);
    while started.elapsed() < run_for {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(started + run_for) => break,
        }
        let progress = Progress {
            elapsed: started.elapsed(),
            run_for,
            start,
            done: done.lock().map(|d| *d).unwrap_or_default(),
            injected: injected.lock().map(|i| i.clone()).unwrap_or_default(),
        };
        watch.tick(h, &progress);
    }
    for t in tasks {
        t.abort();
        // The killer may hold the fleet while it restarts an instance: wait until it let go.
        let _ = t.await;
    }
}

/// How the end went.
struct End {
    before_reconcile: usize,
    reconcile: serde_json::Value,
    diverged: Vec<(usize, String)>,
    lost: Vec<String>,
    crashes: u64,
}

/// Every instance up, the queues drained, one reconcile pass, and then until every
/// representative shows the truth (or [`SETTLE`] is up).
async fn settle(h: &Harness, fleet: &Fleet, start: presync_engine::Millis) -> anyhow::Result<End> {
    // The truth follows what presync's writes reveal in Teams too: read it anew each time.
    let truth = || Truth::of(h, Rules::default(), start);
    {
        let mut f = fleet.lock().await;
        for (i, slot) in f.iter_mut().enumerate() {
            if slot.as_mut().is_none_or(|inst| inst.exited().is_some()) {
                let inst = h.spawn(i)?;
                harness::ready(&inst.url, Duration::from_secs(60)).await?;
                *slot = Some(inst);
            }
        }
    }
    let first = h.instance_url(0);
    let quiet = Duration::from_secs(60);
    let _ = tokio::time::timeout(quiet, h.dv.wait_deliveries_idle()).await;
    let _ = tokio::time::timeout(quiet, h.graph.wait_notifications_idle()).await;
    drained(&first, Instant::now() + quiet).await;
    let before_reconcile = checks::final_states(h, &truth(), None).await?.len();

    let reconcile = reconcile_once(h, &first).await?;
    let settle_until = Instant::now() + SETTLE;
    let store = Store::connect(&h.database).await?;
    let diverged = loop {
        drained(&first, settle_until).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(10), h.graph.wait_notifications_idle()).await;
        let d = checks::final_states(h, &truth(), Some(&store)).await?;
        if d.is_empty() || Instant::now() >= settle_until {
            break d;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let lost = acknowledged_lost(h, &store).await?;
    store.close().await;
    let mut f = fleet.lock().await;
    let crashes = f
        .iter_mut()
        .flatten()
        .filter_map(|inst| inst.exited())
        .count() as u64;
    f.clear();
    Ok(End {
        before_reconcile,
        reconcile,
        diverged,
        lost,
        crashes,
    })
}

/// Wait until presync's inbox and outbox are empty (or `until`).
async fn drained(base: &str, until: Instant) {
    while Instant::now() < until {
        let inbox = harness::metric_sum(base, "presync_queue_depth{queue=\"inbox\"}").await;
        let outbox = harness::metric_sum(base, "presync_queue_depth{queue=\"outbox\"}").await;
        if inbox == Some(0.0) && outbox == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One reconcile pass through the admin API; its report.
async fn reconcile_once(h: &Harness, base: &str) -> anyhow::Result<serde_json::Value> {
    let token = std::fs::read_to_string(h.dir.path().join("admin-token"))?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = http
            .post(format!("{base}/admin/reconcile"))
            .bearer_auth(token.trim())
            .send()
            .await
            .context("asking for a reconcile pass")?;
        // 409: another instance holds the reconcile lease (a pass it started); try again.
        if r.status() == 409 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        anyhow::ensure!(r.status().is_success(), "reconcile answered {}", r.status());
        return Ok(r.json().await?);
    }
}

/// Delivery keys of webhooks presync acknowledged (2xx) that have no decision in its history.
async fn acknowledged_lost(h: &Harness, store: &Store) -> anyhow::Result<Vec<String>> {
    use presync_dataverse::context::{agent_status, parse, Derived};
    let mut lost = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in h.dv.deliveries() {
        if !d.status.is_some_and(|s| (200..300).contains(&s)) {
            continue;
        }
        let Ok(ctx) = parse(d.body.as_bytes()) else {
            continue;
        };
        if let Derived::Change(c) = agent_status(&ctx, d.size_exceeded()) {
            if seen.insert(c.delivery_key.clone())
                && store
                    .history_for_delivery(&c.delivery_key)
                    .await?
                    .is_empty()
            {
                lost.push(c.delivery_key);
            }
        }
    }
    Ok(lost)
}

/// Copy the instance logs to `dir` and write `timeline.txt`: for each flagged representative
/// (at most 10), their day: what happened in each system, what presync wrote, what the router
/// offered, and what the truth expected, in time order.
fn keep_evidence(
    h: &Harness,
    truth: &Truth,
    flagged: &[usize],
    start: presync_engine::Millis,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0.. {
        let log = h.log_path(i);
        if !log.exists() {
            break;
        }
        std::fs::copy(&log, dir.join(format!("instance-{i}.log")))?;
    }
    // A SQLite database, for `presync explain --database sqlite:DIR/presync.db`.
    for entry in std::fs::read_dir(h.dir.path())?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("presync.db") {
            std::fs::copy(entry.path(), dir.join(&name))?;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for &rep in flagged.iter().filter(|r| seen.insert(**r)).take(10) {
        out.push_str(&crate::truth::evidence::day(h, truth, rep, start));
        out.push('\n');
    }
    std::fs::write(dir.join("timeline.txt"), out)?;
    Ok(())
}

fn print_summary(s: &serde_json::Value) {
    println!(
        "presync soak: {} ({} reps, {} instance(s) on {}, {} s, seed {})",
        if s["passed"] == true {
            "PASSED"
        } else {
            "FAILED"
        },
        s["reps"],
        s["instances"],
        s["database"],
        s["duration_s"],
        s["seed"]
    );
    if let Some(checks) = s["checks"].as_object() {
        for (k, v) in checks {
            println!("  {:<30} {}", k, if v == true { "ok" } else { "FAILED" });
        }
    }
    for key in [
        "people",
        "genuine_changes",
        "held_at_the_end",
        "routing",
        "latency_ms",
        "webhooks",
        "notifications",
        "responses",
        "injected",
        "writes",
        "unjustified_writes",
        "diverged_before_reconcile",
        "reconcile",
    ] {
        println!("  {key:<30} {}", s[key]);
    }
    if let Some(d) = s["diverged"].as_array().filter(|d| !d.is_empty()) {
        println!("  diverged:");
        for line in d {
            println!("    {}", line.as_str().unwrap_or_default());
        }
    }
    if let Some(d) = s["acknowledged_but_lost"]
        .as_array()
        .filter(|d| !d.is_empty())
    {
        println!("  acknowledged but lost: {d:?}");
    }
}
