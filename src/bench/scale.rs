//! Figures 4 and 5, on one service holding the large population: the cost of one full reconcile
//! pass (calls to each system against the minimum, and wall time) and the service's peak
//! resident memory (`VmHWM`) after that pass and some webhook traffic.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::load;
use super::webhook::Source;
use super::{Figure, Outcome, Row, Scale};
use crate::harness::{Harness, Ingress, Options};

/// Graph's `getPresencesByUserId` takes at most this many ids.
const GRAPH_BATCH: usize = 650;
/// Rows per Dataverse page (the connector's default, set explicitly so the minimum is known).
const PAGE_SIZE: usize = 5_000;
const GOAL_MIB: f64 = 150.0;

fn options(reps: usize) -> Options {
    let mut o = Options::new(reps);
    // Passes only when a figure asks for one.
    o.reconcile_on_start = false;
    // Signed out in both systems: the Teams simulator settles every user on each sign-in, which
    // is quadratic in the population at start-up.
    o.signed_in = false;
    o.ingress = Ingress::Polling { secs: 3_600 };
    o.dataverse_toml = format!("page_size = {PAGE_SIZE}");
    o.log_level = "error".into();
    o
}

/// Calls that are not the pass's: presence writes (repairs the pipeline makes, or its other
/// work meanwhile) and the scheduled catalog refresh (`msdyn_presences`, every 10 minutes).
fn is_other_job(path: &str) -> bool {
    [
        "/setPresence",
        "/clearPresence",
        "/setUserPreferredPresence",
        "/clearUserPreferredPresence",
        "/msdyn_presences",
    ]
    .iter()
    .any(|w| path.ends_with(w))
        || path.contains("CCaaS_ModifyAgentPresence")
}

/// Calls each simulator received since the given counts: (Graph, Dataverse) by path. Other
/// jobs' calls ([`is_other_job`]) are counted apart: they are not the cost of the pass.
struct Calls {
    graph_reads: usize,
    graph_other: usize,
    graph_jobs: usize,
    dv_pages: usize,
    dv_other: usize,
    dv_jobs: usize,
    /// The other calls, by system, method and the path's last segment (ids left out).
    others: std::collections::BTreeMap<String, usize>,
}

impl Calls {
    fn others(&self) -> String {
        if self.others.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self
            .others
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        parts.join(", ")
    }
}

fn calls_since(h: &Harness, graph_from: usize, dv_from: usize) -> Calls {
    let graph = h.graph.requests();
    let dv = h.dv.requests();
    let graph = &graph[graph_from.min(graph.len())..];
    let dv = &dv[dv_from.min(dv.len())..];
    let graph_reads = graph
        .iter()
        .filter(|r| r.path.ends_with("/getPresencesByUserId"))
        .count();
    let dv_pages = dv
        .iter()
        .filter(|r| r.path.ends_with("/msdyn_agentstatuses"))
        .count();
    let mut others = std::collections::BTreeMap::new();
    let graph_others = graph
        .iter()
        .filter(|r| !r.path.ends_with("/getPresencesByUserId"))
        .map(|r| ("Teams", &r.method, &r.path));
    let dv_others = dv
        .iter()
        .filter(|r| !r.path.ends_with("/msdyn_agentstatuses"))
        .map(|r| ("Dataverse", &r.method, &r.path));
    for (system, method, path) in graph_others.chain(dv_others) {
        let last = path.rsplit('/').next().unwrap_or_default();
        let last = last.split('(').next().unwrap_or_default();
        *others
            .entry(format!("{system} {method} {last}"))
            .or_insert(0) += 1;
    }
    let graph_jobs = graph.iter().filter(|r| is_other_job(&r.path)).count();
    let dv_jobs = dv.iter().filter(|r| is_other_job(&r.path)).count();
    Calls {
        graph_reads,
        graph_other: graph.len() - graph_reads - graph_jobs,
        graph_jobs,
        dv_pages,
        dv_other: dv.len() - dv_pages - dv_jobs,
        dv_jobs,
        others,
    }
}

/// `POST /admin/reconcile` on the instance at `base`; its report.
pub(super) async fn reconcile(h: &Harness, base: &str) -> anyhow::Result<serde_json::Value> {
    let token = std::fs::read_to_string(h.dir.path().join("admin-token"))?;
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/reconcile"))
        .bearer_auth(token.trim())
        .timeout(Duration::from_secs(1_800))
        .send()
        .await
        .context("POST /admin/reconcile")?;
    anyhow::ensure!(r.status().is_success(), "reconcile answered {}", r.status());
    Ok(r.json().await?)
}

/// A row of calls to one system against its minimum: met when the reads are exactly the
/// minimum and nothing else was called but other jobs' calls.
fn calls_row(name: String, reads: usize, other: usize, jobs: usize, minimum: usize) -> Row {
    let measured = if jobs == 0 {
        (reads + other).to_string()
    } else {
        format!("{} (+ {jobs} of other jobs)", reads + other)
    };
    Row {
        name,
        measured,
        reference: format!("minimum {minimum}"),
        ratio: format!("{:.2}", (reads + other) as f64 / minimum as f64),
        goal: "the minimum".into(),
        met: Some(reads == minimum && other == 0),
    }
}

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

pub async fn run(scale: Scale) -> anyhow::Result<Vec<Outcome>> {
    let reps = scale.pick(100_000, 5_000);
    let source = Source::prepare(&options(reps)).await?;
    let h = &source.harness;
    let instance = super::serve(h).await?;
    // Polling mode reads every Teams user once at start to learn where it stands; that read is
    // the poller's, not the pass's: let it finish before counting.
    let graph_min = reps.div_ceil(GRAPH_BATCH);
    let waited = Instant::now();
    while calls_since(h, 0, 0).graph_reads < graph_min
        && waited.elapsed() < Duration::from_secs(900)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first pass meets every representative for the first time and feeds each state to
    // the pipeline; the second is the scheduled pass of every day, over states presync knows.
    let (g0, d0) = (h.graph.requests().len(), h.dv.requests().len());
    let started = Instant::now();
    let first_report = reconcile(h, &instance.url).await?;
    let first_took = started.elapsed().as_secs_f64();
    let first_calls = calls_since(h, g0, d0);
    super::quiet(&instance.url, Duration::from_secs(1_800)).await?;
    let first_settled = started.elapsed().as_secs_f64();
    let (g0, d0) = (h.graph.requests().len(), h.dv.requests().len());
    let started = Instant::now();
    let report = reconcile(h, &instance.url).await?;
    let took = started.elapsed().as_secs_f64();
    let calls = calls_since(h, g0, d0);
    let traffic = Duration::from_secs(scale.pick(5, 2));
    let (sent, _) = load::throughput(
        &source.target(&instance.url),
        source.flipping(0),
        16,
        Duration::ZERO,
        traffic,
        0,
    )
    .await?;
    let (peak, now) = memory(instance.pid())?;
    instance.kill();
    let dv_min = reps.div_ceil(PAGE_SIZE);
    let minimal = calls.graph_reads == graph_min
        && calls.dv_pages == dv_min
        && calls.graph_other == 0
        && calls.dv_other == 0;
    let cost = Outcome {
        figure: Figure::Reconcile,
        rows: vec![
            calls_row(
                format!("Reconcile {reps}, Teams calls"),
                calls.graph_reads,
                calls.graph_other,
                calls.graph_jobs,
                graph_min,
            ),
            calls_row(
                format!("Reconcile {reps}, Dataverse calls"),
                calls.dv_pages,
                calls.dv_other,
                calls.dv_jobs,
                dv_min,
            ),
            Row {
                name: format!("Reconcile {reps}, first pass: calls (Teams + Dataverse), wall time"),
                measured: format!(
                    "{} + {}, {first_took:.1} s (pipeline settled after {first_settled:.1} s)",
                    first_calls.graph_reads + first_calls.graph_other,
                    first_calls.dv_pages + first_calls.dv_other
                ),
                reference: format!("minimum {graph_min} + {dv_min}"),
                ratio: "-".into(),
                goal: "-".into(),
                met: None,
            },
            Row {
                name: format!("Reconcile {reps}, wall time"),
                measured: format!("{took:.1} s"),
                reference: "-".into(),
                ratio: "-".into(),
                goal: "-".into(),
                met: None,
            },
        ],
        details: format!(
            "One full pass (`POST /admin/reconcile` on a spawned `presync run`, SQLite) over \
             {reps} representatives, consistent in both simulators (all signed out, Offline). Calls counted from the \
             simulators' request logs during the pass: Teams {} `getPresencesByUserId` + {} \
             other; Dataverse {} `msdyn_agentstatuses` pages + {} other. Minimum: ceil({reps}/\
             {GRAPH_BATCH}) = {graph_min} Teams reads and ceil({reps}/{PAGE_SIZE}) = {dv_min} \
             Dataverse pages at page size {PAGE_SIZE}. Minimal: {minimal}. The rows above are the \
             second pass, over states presync already knows (the scheduled pass of every day); \
             the first pass, which meets every state for the first time and feeds it to the \
             pipeline, is reported on its own row (after the Teams poller's own first read of \
             every user at start, which is waited for and not counted). The second pass's report: `{report}`; the \
             first's: `{first_report}`. Other calls during the second pass: {}; during the \
             first: {}.",
            calls.graph_reads,
            calls.graph_other,
            calls.dv_pages,
            calls.dv_other,
            calls.others(),
            first_calls.others()
        ),
    };
    let memory = Outcome {
        figure: Figure::Memory,
        rows: vec![Row {
            name: format!("Peak RSS holding {reps}"),
            measured: format!("{peak:.1} MiB"),
            reference: "-".into(),
            ratio: format!("{:.2} of goal", peak / GOAL_MIB),
            goal: format!("< {GOAL_MIB} MiB"),
            met: Some(peak < GOAL_MIB),
        }],
        details: format!(
            "`VmHWM` of the spawned `presync run` (SQLite) holding {reps} representatives, read \
             from /proc after start-up, one full reconcile pass and {} s of webhooks ({} \
             acknowledged, 16 in flight). Resident at the end: {now:.1} MiB.",
            traffic.as_secs(),
            sent.ok
        ),
    };
    Ok(vec![cost, memory])
}
