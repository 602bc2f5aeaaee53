//! `presync bench`: the benchmarks of issue 6. Each figure drives the real service (`presync
//! run`, spawned through [`crate::harness`]) against both simulators on loopback, with load this
//! process generates, and measures its reference in the same run, because the machine is shared
//! and noisy: the ratios are the headline, the absolute times context.
//!
//! Start at [`run`]; each figure is a module ([`ingest`], [`latency`], [`burst`], [`scale`] for
//! reconcile cost and memory, [`amplification`]) that returns [`Row`]s and a paragraph for the
//! report ([`report`]).

mod amplification;
mod burst;
mod ingest;
mod latency;
mod load;
mod report;
mod scale;
mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::harness::{self, Harness, Instance, Options};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The figures to run, comma-separated: ingest, latency, burst, reconcile, memory,
    /// amplification (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Write the Markdown report here (it is printed on stdout either way).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A short smoke run: smaller populations, shorter runs, a scaled-down throttle. The
    /// figures are not the report's.
    #[arg(long)]
    quick: bool,
    /// PostgreSQL server for the ingest figure (a fresh database is created on it and dropped).
    /// Without it, PostgreSQL is skipped with a note.
    #[arg(long, env = "PRESYNC_TEST_POSTGRES_URL")]
    postgres: Option<String>,
    /// Internal: serve the ingest baseline on this address (what the bench spawns).
    #[arg(long, hide = true)]
    baseline_listen: Option<String>,
}

/// One figure of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Figure {
    Ingest,
    Latency,
    Burst,
    Reconcile,
    Memory,
    Amplification,
}

impl Figure {
    const ALL: [Figure; 6] = [
        Figure::Ingest,
        Figure::Latency,
        Figure::Burst,
        Figure::Reconcile,
        Figure::Memory,
        Figure::Amplification,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Figure::Ingest => "ingest",
            Figure::Latency => "latency",
            Figure::Burst => "burst",
            Figure::Reconcile => "reconcile",
            Figure::Memory => "memory",
            Figure::Amplification => "amplification",
        }
    }
}

/// One line of the headline table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub measured: String,
    pub reference: String,
    pub ratio: String,
    pub goal: String,
    /// `None`: no goal (context only).
    pub met: Option<bool>,
}

/// What one figure found: its lines of the headline table and its section of the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub figure: Figure,
    pub rows: Vec<Row>,
    /// Markdown: what was measured and how, the details.
    pub details: String,
}

/// The sizes of a run: the report's, or the smoke run's.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub quick: bool,
}

impl Scale {
    /// `full` for the report, `quick` for the smoke run.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// The command that reproduces `figure` at this scale.
    pub fn command(self, figure: Figure) -> String {
        let quick = if self.quick { " --quick" } else { "" };
        let pg = if figure == Figure::Ingest {
            " --postgres postgres://postgres@127.0.0.1:5432/test"
        } else {
            ""
        };
        format!(
            "cargo run --release -- bench --only {}{quick}{pg}",
            figure.name()
        )
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    if let Some(listen) = &args.baseline_listen {
        load::serve_baseline(listen).await?;
        return Ok(true);
    }
    let scale = Scale { quick: args.quick };
    let figures: Vec<Figure> = if args.only.is_empty() {
        Figure::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let postgres = args.postgres.clone().filter(|u| !u.is_empty());
    let started = std::time::Instant::now();
    let mut outcomes = Vec::new();
    // Reconcile cost and memory share one service holding the large population.
    if figures.contains(&Figure::Reconcile) || figures.contains(&Figure::Memory) {
        outcomes.extend(scale::run(scale).await?);
    }
    for figure in figures {
        eprintln!("bench: {} ...", figure.name());
        let outcome = match figure {
            Figure::Ingest => ingest::run(scale, postgres.as_deref()).await?,
            Figure::Latency => latency::run(scale).await?,
            Figure::Burst => burst::run(scale).await?,
            Figure::Amplification => amplification::run(scale).await?,
            Figure::Reconcile | Figure::Memory => continue,
        };
        outcomes.push(outcome);
    }
    outcomes.retain(|o| args.only.is_empty() || args.only.contains(&o.figure));
    outcomes.sort_by_key(|o| o.figure);
    let text = report::render(scale, &outcomes, started.elapsed());
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(outcomes
        .iter()
        .flat_map(|o| &o.rows)
        .all(|r| r.met != Some(false)))
}

/// Start instance 0 of `h`, wait until it is ready and has worked off what it does at start-up
/// (the first Teams poll queues one observation per representative), so a figure measures
/// only its own load.
async fn serve(h: &Harness) -> anyhow::Result<Instance> {
    let instance = h.spawn(0)?;
    if let Err(e) = harness::ready(&instance.url, Duration::from_secs(60)).await {
        anyhow::bail!("{e}\n{}", h.log_tails(20));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    quiet(&instance.url, Duration::from_secs(600)).await?;
    Ok(instance)
}

/// Wait until the instance at `base` has no inbox or outbox row waiting.
async fn quiet(base: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if harness::metric_sum(base, "presync_queue_depth").await == Some(0.0) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{base} still had work queued after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Options for figures that are not about limits: throttles out of the way (simulators and
/// presync's own), Teams polled rarely, keep-alive never due.
/// `[database]` key of the opt-in that trades power-loss durability for speed: commits that do
/// not wait for the disk.
const SQLITE_NORMAL: &str = "sqlite_synchronous = \"normal\"";

fn unthrottled(reps: usize) -> Options {
    let mut o = Options::new(reps);
    // Passes only when a figure asks for one.
    o.reconcile_on_start = false;
    o.ingress = harness::Ingress::Polling { secs: 3_600 };
    o.graph_limit = (100_000_000, Duration::from_secs(30));
    o.teams_graph_toml = "rate_limit = 100000000".into();
    o.extra_toml = "[engine.dispatch_default]\nrate_limit = 100000000\nmax_in_flight = 32".into();
    o.log_level = "error".into();
    o
}

/// The `q`-quantile (0..=1) of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The Teams `setPresence` requests the Graph simulator received.
fn set_presence(graph: &presync_teams::sim::GraphSim) -> Vec<presync_teams::sim::RecordedRequest> {
    graph
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/presence/setPresence"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn every_figure_has_a_reproducing_command() {
        let s = Scale { quick: false };
        assert_eq!(
            s.command(Figure::Burst),
            "cargo run --release -- bench --only burst"
        );
        assert!(Scale { quick: true }
            .command(Figure::Ingest)
            .contains("--only ingest --quick --postgres"));
    }
}
