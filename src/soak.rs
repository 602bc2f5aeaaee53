//! `presync soak`: a chaos soak. The real service (one or more `presync run` processes behind a
//! loopback load balancer, see [`crate::harness`]) runs against both simulators while simulated
//! people work, and faults arrive at configurable rates: 429 with `Retry-After`, 5xx, slow and
//! timed-out responses from both systems; dropped, duplicated and reordered Dataverse webhooks
//! and Graph notifications; and instances killed with SIGKILL at random moments and restarted.
//!
//! At the end the activity and the faults stop, one reconcile pass runs, and the soak checks the
//! outcome against the simulators' own record of the truth:
//!
//! - **converged**: every representative shows, in D365, in Teams and in presync's canonical
//!   state, the availability of what the person is doing at the end (the soak's people do one
//!   thing at a time, so that is unambiguous);
//! - **nothing acknowledged lost**: every webhook delivery presync answered 2xx has its decision
//!   in presync's history;
//! - **no echo propagated**: every write presync made into a system is justified by a genuine
//!   change of that representative in the other system since presync's previous write there, or
//!   is a repeat of that previous write (a retry whose answer was lost, a keep-alive);
//! - **bounded write amplification**: writes into each system per genuine change in the other
//!   stay at or below `--max-amplification`;
//! - **no crash**: no instance exited other than by the soak's own SIGKILL.
//!
//! It prints the figures and exits non-zero when any check fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use presync_dataverse::mapping::{builtin, Catalog};
use presync_engine::store::Store;
use presync_engine::{Availability, NativeState, RepId};
use presync_teams::mapping::{Mapping, Pair};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use crate::harness::{self, Harness, Ingress, Instance, Options};

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

/// How often each fault happens, per minute of activity (per system where both have it).
#[derive(Debug, Clone, Args)]
struct FaultRates {
    /// 429 with a Retry-After of 1 to 3 s.
    #[arg(long, default_value_t = 4.0)]
    rate_limited_per_min: f64,
    /// 500, 502, 503 or 504.
    #[arg(long, default_value_t = 4.0)]
    server_errors_per_min: f64,
    /// A response delayed 0.3 to 1.5 s.
    #[arg(long, default_value_t = 3.0)]
    slow_per_min: f64,
    /// A response delayed past presync's request timeout (the operation itself happens).
    #[arg(long, default_value_t = 2.0)]
    timeouts_per_min: f64,
    /// A webhook and a notification never sent.
    #[arg(long, default_value_t = 3.0)]
    dropped_per_min: f64,
    /// A webhook and a notification sent twice.
    #[arg(long, default_value_t = 6.0)]
    duplicated_per_min: f64,
    /// A few webhooks and notifications sent out of order.
    #[arg(long, default_value_t = 3.0)]
    reordered_per_min: f64,
    /// Mean seconds between two SIGKILLs of an instance; 0 never kills.
    #[arg(long, default_value_t = 45.0)]
    kill_every_secs: f64,
}

/// presync's request timeout toward both systems during a soak, so that timeouts happen.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long the soak waits for everything to settle after the reconcile.
const SETTLE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    Conversation,
    Meeting,
    TeamsDnd,
    D365Dnd,
    SignedOut,
}

impl Doing {
    /// What every system should show while the person does this.
    fn availability(self) -> Availability {
        match self {
            Doing::Conversation | Doing::Meeting => Availability::Busy,
            Doing::TeamsDnd | Doing::D365Dnd => Availability::DoNotDisturb,
            Doing::SignedOut => Availability::Offline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sys {
    D365,
    Teams,
}

/// A genuine change: made by a person or by D365 itself, not by presync. `at` is how many
/// requests each simulator had received when it happened, which places it among presync's
/// writes.
#[derive(Debug, Clone, Copy)]
struct Change {
    rep: usize,
    system: Sys,
    /// What the system genuinely shows after the change.
    state: Availability,
    dv_at: usize,
    graph_at: usize,
}

/// What the simulated people did.
#[derive(Debug, Default)]
struct Truth {
    changes: Vec<Change>,
    /// What each person is doing now (`None`: nothing, Available everywhere).
    doing: Vec<Option<Doing>>,
}

/// What was injected, counted.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Injected {
    rate_limited: u64,
    server_errors: u64,
    slow: u64,
    timeouts: u64,
    dropped: u64,
    duplicated: u64,
    reordered: u64,
    kills: u64,
    restarts: u64,
    crashes: u64,
}

/// The instances, by index; `None` while one is down.
type Fleet = Arc<tokio::sync::Mutex<Vec<Option<Instance>>>>;

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
    let outcome = soak(&args, &opts, instances).await;
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

async fn soak(
    args: &SoakArgs,
    opts: &Options,
    instances: usize,
) -> anyhow::Result<(bool, serde_json::Value)> {
    let h = Arc::new(Harness::start(opts, instances).await?);
    let fleet: Fleet = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    for i in 0..instances {
        let inst = h.spawn(i)?;
        harness::ready(&inst.url, Duration::from_secs(60)).await?;
        fleet.lock().await.push(Some(inst));
    }
    // The subscriptions exist before the people start.
    let until = Instant::now() + Duration::from_secs(30);
    while h.graph.subscriptions().is_empty() {
        anyhow::ensure!(
            Instant::now() < until,
            "presync created no Teams subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "presync soak: {} reps, {} instance(s) on {}, {} s",
        args.reps,
        instances,
        if opts.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.duration
    );

    // Each representative's initial state counts as a genuine change in both systems: presync
    // adopts it, which may take a first write (its own Teams session, for one).
    let initial = (0..h.reps.len()).flat_map(|rep| {
        [Sys::D365, Sys::Teams].map(|system| Change {
            rep,
            system,
            state: Availability::Available,
            dv_at: 0,
            graph_at: 0,
        })
    });
    let truth = Arc::new(Mutex::new(Truth {
        changes: initial.collect(),
        doing: vec![None; h.reps.len()],
    }));
    let injected = Arc::new(Mutex::new(Injected::default()));
    let started = Instant::now();
    let run_for = Duration::from_secs(args.duration);
    let driver = tokio::spawn(drive(h.clone(), truth.clone(), args.seed, run_for));
    let faults = tokio::spawn(inject(
        h.clone(),
        args.faults.clone(),
        injected.clone(),
        args.seed.wrapping_add(1),
    ));
    let killer = tokio::spawn(kill_and_restart(
        h.clone(),
        fleet.clone(),
        args.faults.kill_every_secs,
        injected.clone(),
        args.seed.wrapping_add(2),
    ));
    let progress = tokio::spawn({
        let (truth, injected) = (truth.clone(), injected.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let changes = truth.lock().map(|t| t.changes.len()).unwrap_or(0);
                let inj = injected.lock().map(|i| i.clone()).unwrap_or_default();
                eprintln!(
                    "  {:>4.0} s: {changes} genuine changes; kills {}, 429 {}, 5xx {}, slow {}, timeouts {}, dropped {}, duplicated {}, reordered {}",
                    started.elapsed().as_secs_f64(),
                    inj.kills, inj.rate_limited, inj.server_errors, inj.slow, inj.timeouts,
                    inj.dropped, inj.duplicated, inj.reordered
                );
            }
        }
    });
    tokio::time::sleep(run_for).await;
    driver.abort();
    faults.abort();
    killer.abort();
    progress.abort();
    let _ = killer.await;
    eprintln!("presync soak: activity over; settling");

    // Every instance up again for the end.
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
    let quiet_until = Instant::now() + Duration::from_secs(60);
    let _ = tokio::time::timeout(Duration::from_secs(60), h.dv.wait_deliveries_idle()).await;
    let _ = tokio::time::timeout(Duration::from_secs(60), h.graph.wait_notifications_idle()).await;
    drained(&first, quiet_until).await;
    let before_reconcile = divergent(&h, &truth, None).await?.len();

    let reconcile = reconcile_once(&h, &first).await?;
    let settle_until = Instant::now() + SETTLE;
    let store = Store::connect(&h.database).await?;
    let diverged = loop {
        drained(&first, settle_until).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(10), h.graph.wait_notifications_idle()).await;
        let d = divergent(&h, &truth, Some(&store)).await?;
        if d.is_empty() || Instant::now() >= settle_until {
            break d;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let lost = acknowledged_lost(&h, &store).await?;
    store.close().await;
    let crashes = {
        let mut f = fleet.lock().await;
        let mut crashed = 0;
        for inst in f.iter_mut().flatten() {
            if inst.exited().is_some() {
                crashed += 1;
            }
        }
        f.clear();
        crashed
    };
    let mut injected = injected.lock().map(|i| i.clone()).unwrap_or_default();
    injected.crashes += crashes;

    let writes = {
        let t = truth.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        audit_writes(&h, &t)
    };
    let amplification_ok = writes
        .iter()
        .map(|(_, w)| w)
        .all(|w| w.amplification() <= args.max_amplification);
    let echoes: u64 = writes.iter().map(|(_, w)| w.unjustified).sum();
    let checks = json!({
        "converged": diverged.is_empty(),
        "nothing_acknowledged_lost": lost.is_empty(),
        "no_echo_propagated": echoes == 0,
        "write_amplification_bounded": amplification_ok,
        "no_crash": injected.crashes == 0,
    });
    let passed = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v == true));
    let deliveries = h.dv.deliveries();
    let notifications = h.graph.notifications();
    let status_count =
        |statuses: &[u16], of: &[u16]| statuses.iter().filter(|s| of.contains(s)).count();
    let dv_status: Vec<u16> = h.dv.requests().iter().map(|r| r.status).collect();
    let graph_status: Vec<u16> = h.graph.requests().iter().map(|r| r.status).collect();
    let (d365_changes, teams_changes) = {
        let t = truth.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (
            t.changes.iter().filter(|c| c.system == Sys::D365).count(),
            t.changes.iter().filter(|c| c.system == Sys::Teams).count(),
        )
    };
    let summary = json!({
        "passed": passed,
        "checks": checks,
        "reps": args.reps,
        "instances": instances,
        "database": if opts.database.is_some() { "postgres" } else { "sqlite" },
        "duration_s": args.duration,
        "wall_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "seed": args.seed,
        "genuine_changes": { "d365": d365_changes, "teams": teams_changes },
        "webhooks": {
            "sent": deliveries.len(),
            "acknowledged": deliveries.iter().filter(|d| d.status.is_some_and(|s| (200..300).contains(&s))).count(),
            "refused_or_unanswered": deliveries.iter().filter(|d| !d.status.is_some_and(|s| (200..300).contains(&s))).count(),
            "dropped": h.dv.dropped_webhooks().len(),
            "acknowledged_lost": lost.len(),
        },
        "notifications": {
            "sent": notifications.len(),
            "accepted": notifications.iter().filter(|n| n.accepted).count(),
            "dropped": h.graph.dropped_notifications().len(),
        },
        "responses": {
            "d365_429": status_count(&dv_status, &[429]),
            "d365_5xx": status_count(&dv_status, &[500, 502, 503, 504]),
            "teams_429": status_count(&graph_status, &[429]),
            "teams_5xx": status_count(&graph_status, &[500, 502, 503, 504]),
        },
        "injected": injected,
        "writes": writes.iter().map(|(k, w)| (k.to_string(), w.json())).collect::<serde_json::Map<_, _>>(),
        "echoes_propagated": echoes,
        "diverged_before_reconcile": before_reconcile,
        "reconcile": reconcile,
        "diverged": diverged.iter().map(|(_, d)| d).collect::<Vec<_>>(),
        "acknowledged_but_lost": lost.iter().take(20).collect::<Vec<_>>(),
    });
    if !passed {
        let flagged: Vec<usize> = diverged
            .iter()
            .map(|(i, _)| *i)
            .chain(writes.iter().flat_map(|(_, w)| w.flagged.iter().copied()))
            .collect();
        let kept = keep_evidence(&h, &truth, &flagged, &args.evidence);
        eprintln!(
            "presync soak FAILED; evidence in {} ({})",
            args.evidence.display(),
            kept.err()
                .map_or("complete".to_owned(), |e| format!("incomplete: {e}"))
        );
    }
    Ok((passed, summary))
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

/// The availability D365 and Teams show for `rep`.
fn shown(h: &Harness, catalog: &Catalog, rep: usize) -> (Availability, Availability) {
    let r = &h.reps[rep];
    let d365 =
        h.dv.presence(&r.agent)
            .and_then(|p| catalog.canonical(&p))
            .unwrap_or(Availability::Offline);
    let (a, act) = h.graph.presence(&r.aad);
    let teams = Mapping::to_canonical(&NativeState::new(Pair::new(&a, &act).code())).availability;
    (d365, teams)
}

/// Representatives not showing what the person is doing, in D365, Teams and (with a store)
/// presync: `rep: expected x; D365 y, Teams z, presync w`.
async fn divergent(
    h: &Harness,
    truth: &Mutex<Truth>,
    store: Option<&Store>,
) -> anyhow::Result<Vec<(usize, String)>> {
    let catalog = Catalog::builtin();
    let doing: Vec<Option<Doing>> = truth
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .doing
        .clone();
    let mut out = Vec::new();
    for (i, d) in doing.iter().enumerate() {
        let expected = d.map_or(Availability::Available, Doing::availability);
        let (d365, teams) = shown(h, &catalog, i);
        let presync = match store {
            Some(s) => s
                .rep_view(&RepId(h.reps[i].id.clone()))
                .await?
                .canonical
                .map(|p| p.availability),
            None => Some(expected),
        };
        if d365 != expected || teams != expected || presync != Some(expected) {
            out.push((
                i,
                format!(
                    "{}: expected {expected} ({d:?}); D365 {d365}, Teams {teams}, presync {}",
                    h.reps[i].id,
                    presync.map_or("-".to_owned(), |p| p.to_string())
                ),
            ));
        }
    }
    Ok(out)
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

/// presync's writes into one system, audited against the genuine changes in the other.
#[derive(Debug, Default)]
struct WriteAudit {
    /// Writes answered 2xx.
    writes: u64,
    /// Of those, repeats of presync's previous write there (lost answers, keep-alive).
    repeats: u64,
    /// Writes no genuine change in the other system since presync's previous write justifies.
    unjustified: u64,
    /// Writes of the target's own genuine state back to it (a repair after a race).
    restores: u64,
    /// Genuine changes in the other system, each representative's initial state included.
    changes: u64,
    examples: Vec<String>,
    /// Representatives with an unjustified write.
    flagged: Vec<usize>,
}

impl WriteAudit {
    fn amplification(&self) -> f64 {
        if self.changes == 0 {
            return if self.writes == 0 { 0.0 } else { f64::INFINITY };
        }
        self.writes as f64 / self.changes as f64
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "writes": self.writes,
            "repeats": self.repeats,
            "unjustified": self.unjustified,
            "restores_of_the_targets_own_state": self.restores,
            "genuine_changes_in_the_other_system": self.changes,
            "amplification": (self.amplification() * 1000.0).round() / 1000.0,
            "unjustified_examples": self.examples,
        })
    }
}

/// What presync wrote into a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Set(Availability),
    /// presync ended its own Teams session (Offline, or its contribution withdrawn).
    Withdraw,
}

/// A successful presync write: (representative, what it wrote, its index in the requests).
type Write = (usize, Wrote, usize);

/// Audit every write presync made into D365 (`CCaaS_ModifyAgentPresence`) and Teams (presence
/// actions) against the genuine changes.
fn audit_writes(h: &Harness, truth: &Truth) -> Vec<(&'static str, WriteAudit)> {
    let catalog = Catalog::builtin();
    let index_of = |ids: Vec<&str>| -> HashMap<String, usize> {
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| (id.to_owned(), i))
            .collect()
    };
    let by_agent = index_of(h.reps.iter().map(|r| r.agent.as_str()).collect());
    let by_aad = index_of(h.reps.iter().map(|r| r.aad.as_str()).collect());
    let ok = |status: u16| (200..300).contains(&status);
    let d365: Vec<Write> =
        h.dv.requests()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.path.ends_with("CCaaS_ModifyAgentPresence") && ok(r.status))
            .filter_map(|(i, r)| {
                let body = r.body.as_ref()?;
                let rep = *by_agent.get(body.get("AgentId")?.as_str()?)?;
                let presence = body.get("PresenceId")?.as_str()?;
                Some((rep, Wrote::Set(catalog.canonical(presence)?), i))
            })
            .collect();
    let teams: Vec<Write> = h
        .graph
        .requests()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == "POST" && r.path.contains("/presence/") && ok(r.status))
        .filter_map(|(i, r)| {
            // /v1.0/users/{id}/presence/{action}
            let mut parts = r.path.rsplit('/');
            let action = parts.next()?;
            let rep = *by_aad.get(parts.nth(1)?)?;
            let wrote = if action.starts_with("clear") {
                Wrote::Withdraw
            } else {
                let body = r.body.as_ref()?;
                let pair = Pair::new(
                    body.get("availability")?.as_str()?,
                    body.get("activity")?.as_str()?,
                );
                Wrote::Set(Mapping::to_canonical(&NativeState::new(pair.code())).availability)
            };
            Some((rep, wrote, i))
        })
        .collect();
    vec![
        ("d365", audit(&d365, truth, Sys::Teams, |c| c.dv_at)),
        ("teams", audit(&teams, truth, Sys::D365, |c| c.graph_at)),
    ]
}

/// Audit `writes` into one system against the genuine changes in `source`, the other system;
/// `at` places a change among the target's requests (a change recorded at `c` happened before
/// request `c` arrived).
///
/// A write of availability A is justified when `source` genuinely showed A at some moment
/// between presync's previous write there and this one, or when the target itself did (presync
/// restoring the person's own state after a race, counted apart). Anything else was not the
/// person's state: an echo, or worse. A withdrawal of presync's own Teams session writes no state and
/// cannot carry an echo.
fn audit(
    writes: &[Write],
    truth: &Truth,
    source: Sys,
    at: impl Fn(&Change) -> usize,
) -> WriteAudit {
    let target = match source {
        Sys::D365 => Sys::Teams,
        Sys::Teams => Sys::D365,
    };
    let mut a = WriteAudit {
        changes: truth.changes.iter().filter(|c| c.system == source).count() as u64,
        ..WriteAudit::default()
    };
    // Per representative and system: (request index, state after) of each genuine change.
    let mut timeline: HashMap<(usize, Sys), Vec<(usize, Availability)>> = HashMap::new();
    for c in &truth.changes {
        timeline
            .entry((c.rep, c.system))
            .or_default()
            .push((at(c), c.state));
    }
    let empty = Vec::new();
    let mut previous: HashMap<usize, (Wrote, usize)> = HashMap::new();
    for &(rep, wrote, index) in writes {
        a.writes += 1;
        let prev = previous.get(&rep).copied();
        let held = |system: Sys| -> Vec<Availability> {
            let line = timeline.get(&(rep, system)).unwrap_or(&empty);
            // The states between the previous write and this one: the one held at the previous
            // write, and every one taken since.
            let from = prev.map_or(0, |(_, p)| {
                line.iter().rposition(|(c, _)| *c <= p).unwrap_or(0)
            });
            line[from.min(line.len())..]
                .iter()
                .filter(|(c, _)| *c <= index)
                .map(|(_, s)| *s)
                .collect()
        };
        let from_source = held(source);
        let justified = match wrote {
            Wrote::Set(v) if from_source.contains(&v) => true,
            // The target's own genuine state, put back: after a race with one of presync's
            // writes whose outcome was unknown, presync restores what the person set there.
            Wrote::Set(v) if held(target).contains(&v) => {
                a.restores += 1;
                true
            }
            Wrote::Set(_) => false,
            // A withdrawal writes no state, so it cannot carry an echo.
            Wrote::Withdraw => true,
        };
        if !justified && prev.is_some_and(|(w, _)| w == wrote) {
            a.repeats += 1;
        } else if !justified {
            a.unjustified += 1;
            a.flagged.push(rep);
            if a.examples.len() < 10 {
                a.examples.push(format!(
                    "rep-{rep:06} got {wrote:?} (request {index}) while the other system showed {from_source:?}"
                ));
            }
        }
        previous.insert(rep, (wrote, index));
    }
    a
}

/// Copy the instance logs to `dir` and write `timeline.txt`: for each flagged representative,
/// the genuine changes and every request either simulator got about them, in order.
fn keep_evidence(
    h: &Harness,
    truth: &Mutex<Truth>,
    flagged: &[usize],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
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
    let t = truth.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (dv, graph) = (h.dv.requests(), h.graph.requests());
    let mut out = String::new();
    for &rep in flagged.iter().take(10) {
        let r = &h.reps[rep];
        writeln!(out, "== {} (agent {}, user {})", r.id, r.agent, r.aad)?;
        for c in t.changes.iter().filter(|c| c.rep == rep) {
            writeln!(
                out,
                "  change  {:?} -> {} before d365 request {} / teams request {}",
                c.system, c.state, c.dv_at, c.graph_at
            )?;
        }
        for (i, q) in dv.iter().enumerate() {
            let body = q.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            if body.contains(&r.agent) || q.path.contains(&r.agent) {
                writeln!(
                    out,
                    "  d365 #{i} {} {} {} -> {}",
                    q.method, q.path, body, q.status
                )?;
            }
        }
        for (i, q) in graph.iter().enumerate() {
            let body = q.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            if body.contains(&r.aad) || q.path.contains(&r.aad) {
                writeln!(
                    out,
                    "  teams #{i} {} {} {} -> {}",
                    q.method, q.path, body, q.status
                )?;
            }
        }
    }
    std::fs::write(dir.join("timeline.txt"), out)?;
    Ok(())
}

/// A person who is not busy with anything starts something new this often (seconds).
const IDLE: std::ops::Range<f64> = 1.0..4.0;
/// How long something lasts (seconds).
const LENGTH: std::ops::Range<f64> = 2.0..8.0;

/// The simulated people, until aborted: one thing at a time each, every change recorded.
async fn drive(h: Arc<Harness>, truth: Arc<Mutex<Truth>>, seed: u64, run_for: Duration) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let n = h.reps.len();
    let mut until: Vec<Instant> = (0..n)
        .map(|_| start + Duration::from_secs_f64(rng.random_range(0.0..2.0)))
        .collect();
    // What the person now does, as a genuine change in `system`.
    let record = |rep: usize, system: Sys, doing: Option<Doing>| {
        let change = Change {
            rep,
            system,
            state: doing.map_or(Availability::Available, Doing::availability),
            dv_at: h.dv.request_count(),
            graph_at: h.graph.request_count(),
        };
        if let Ok(mut t) = truth.lock() {
            t.changes.push(change);
            t.doing[rep] = doing;
        }
    };
    let current = |rep: usize| truth.lock().ok().and_then(|t| t.doing[rep]);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // Activities start until shortly before the end; what is under way then stays.
    let last_start = start + run_for.mul_f64(0.97);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for (i, due) in until.iter_mut().enumerate() {
            if now < *due {
                continue;
            }
            let r = &h.reps[i];
            if let Some(doing) = current(i) {
                // End it. The change is recorded before it is made: presync cannot have
                // written because of it before it happened.
                match doing {
                    Doing::Conversation => {
                        // D365 Busy unless presync changed it meanwhile, which the final check
                        // would show.
                        record(i, Sys::D365, None);
                        h.dv.system_sets(&r.agent, builtin::AVAILABLE);
                    }
                    Doing::Meeting => {
                        record(i, Sys::Teams, None);
                        h.graph.person_leaves_meeting(&r.aad);
                    }
                    Doing::TeamsDnd => {
                        record(i, Sys::Teams, None);
                        h.graph.person_clears_preferred(&r.aad);
                    }
                    Doing::D365Dnd => {
                        record(i, Sys::D365, None);
                        h.dv.agent_sets(&r.agent, builtin::AVAILABLE);
                    }
                    Doing::SignedOut => {
                        record(i, Sys::D365, None);
                        h.dv.sign_in(&r.agent, builtin::AVAILABLE);
                        record(i, Sys::Teams, None);
                        h.graph.person_signs_in(&r.aad);
                    }
                }
                *due = now + Duration::from_secs_f64(rng.random_range(IDLE));
                continue;
            }
            if now >= last_start {
                continue;
            }
            let roll: f64 = rng.random();
            if roll < 0.4 {
                // D365 routes a conversation only to an agent it shows Available.
                if h.dv.presence(&r.agent).as_deref() != Some(builtin::AVAILABLE) {
                    *due = now + Duration::from_millis(500);
                    continue;
                }
                record(i, Sys::D365, Some(Doing::Conversation));
                h.dv.system_sets(&r.agent, builtin::BUSY);
            } else if roll < 0.65 {
                record(i, Sys::Teams, Some(Doing::Meeting));
                h.graph.person_joins_meeting(&r.aad);
            } else if roll < 0.78 {
                record(i, Sys::Teams, Some(Doing::TeamsDnd));
                h.graph
                    .person_sets_preferred(&r.aad, "DoNotDisturb", "DoNotDisturb");
            } else if roll < 0.92 {
                record(i, Sys::D365, Some(Doing::D365Dnd));
                h.dv.agent_sets(&r.agent, builtin::BUSY_DND);
            } else {
                record(i, Sys::D365, Some(Doing::SignedOut));
                h.dv.sign_out(&r.agent);
                record(i, Sys::Teams, Some(Doing::SignedOut));
                h.graph.person_signs_out(&r.aad);
            }
            *due = now + Duration::from_secs_f64(rng.random_range(LENGTH));
        }
    }
}

/// Inject faults at their rates, until aborted. Once a second, each kind happens with
/// probability rate / 60.
async fn inject(h: Arc<Harness>, rates: FaultRates, injected: Arc<Mutex<Injected>>, seed: u64) {
    use presync_dataverse::sim::Fault as DvFault;
    use presync_teams::sim::Fault as GraphFault;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS + 1_000);
    loop {
        tick.tick().await;
        let mut hit = |rate: f64| rng.random::<f64>() < rate / 60.0;
        let (a, b, c, d, e, f, g) = (
            hit(rates.rate_limited_per_min),
            hit(rates.server_errors_per_min),
            hit(rates.slow_per_min),
            hit(rates.timeouts_per_min),
            hit(rates.dropped_per_min),
            hit(rates.duplicated_per_min),
            hit(rates.reordered_per_min),
        );
        let retry_after = rng.random_range(1..=3u64);
        let status = [500u16, 502, 503, 504][rng.random_range(0..4)];
        let slow = Duration::from_millis(rng.random_range(300..1_500));
        let Ok(mut n) = injected.lock() else { return };
        if a {
            h.dv.inject(DvFault::RateLimited {
                retry_after_secs: retry_after,
            });
            h.graph.inject(GraphFault::RateLimited {
                retry_after: retry_after as f64,
            });
            n.rate_limited += 2;
        }
        if b {
            h.dv.inject(DvFault::ServerError(status));
            h.graph.inject(GraphFault::ServerError(status));
            n.server_errors += 2;
        }
        if c {
            h.dv.inject(DvFault::Slow(slow));
            h.graph.inject(GraphFault::Slow(slow));
            n.slow += 2;
        }
        if d {
            h.dv.inject(DvFault::Slow(timeout));
            h.graph.inject(GraphFault::Slow(timeout));
            n.timeouts += 2;
        }
        if e {
            h.dv.inject(DvFault::DropWebhooks(1));
            h.graph.inject(GraphFault::DropNotifications(1));
            n.dropped += 2;
        }
        if f {
            h.dv.inject(DvFault::DuplicateWebhooks(1));
            h.graph.inject(GraphFault::DuplicateNotifications(1));
            n.duplicated += 2;
        }
        if g {
            h.dv.inject(DvFault::ReorderWebhooks(3));
            h.graph.inject(GraphFault::ReorderNotifications(1));
            n.reordered += 2;
        }
    }
}

/// Kill a random instance with SIGKILL every `mean` seconds on average (0: never), restart it
/// after a moment, and restart any instance that died on its own (counted as a crash).
async fn kill_and_restart(
    h: Arc<Harness>,
    fleet: Fleet,
    mean: f64,
    injected: Arc<Mutex<Injected>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_kill = (mean > 0.0)
        .then(|| Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean));
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut f = fleet.lock().await;
        for (i, slot) in f.iter_mut().enumerate() {
            if slot.as_mut().is_some_and(|inst| inst.exited().is_some()) {
                *slot = None;
                if let Ok(mut n) = injected.lock() {
                    n.crashes += 1;
                }
                eprintln!("  instance {i} exited on its own; restarting it");
                if let Ok(inst) = h.spawn(i) {
                    let _ = harness::ready(&inst.url, Duration::from_secs(60)).await;
                    *slot = Some(inst);
                }
            }
        }
        let Some(at) = next_kill else { continue };
        if Instant::now() < at {
            continue;
        }
        let i = rng.random_range(0..f.len());
        if let Some(inst) = f[i].take() {
            inst.kill();
            if let Ok(mut n) = injected.lock() {
                n.kills += 1;
            }
        }
        // Down for a moment, as a supervisor's restart takes.
        tokio::time::sleep(Duration::from_secs_f64(rng.random_range(0.2..2.0))).await;
        if let Ok(inst) = h.spawn(i) {
            let _ = harness::ready(&inst.url, Duration::from_secs(60)).await;
            f[i] = Some(inst);
            if let Ok(mut n) = injected.lock() {
                n.restarts += 1;
            }
        }
        next_kill =
            Some(Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean));
    }
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
        "genuine_changes",
        "webhooks",
        "notifications",
        "responses",
        "injected",
        "writes",
        "echoes_propagated",
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
