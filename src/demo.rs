//! `presync demo`: the whole service on a laptop. Both simulators on loopback, the real service
//! (`presync run`, this same binary) in front of them on a SQLite database, a directory of
//! simulated representatives, and a working day compressed into `--duration` seconds: the soak's
//! people ([`crate::soak`]) take breaks and sign out in D365, join meetings and calls, present,
//! pick a status in Teams and reset it, and accept and close the conversations D365's router
//! offers them; a few 429s, 5xx, slow answers and lost, reordered and duplicated webhooks and
//! notifications come along.
//!
//! A live table shows, for the first representatives, what D365 and Teams show, whether a hold
//! holds them (a Teams meeting, call or presentation keeping D365 unroutable), and whether each
//! system shows what the people's own actions call for ([`crate::truth`]). At the end the
//! activity stops, presync settles and reconciles once, and the demo checks everyone against
//! that truth and counts the conversations the router offered to someone who should not have
//! been routable. It exits 0 only when everyone follows the people and there were none.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use presync_dataverse::mapping::Catalog;
use presync_engine::Availability;
use presync_teams::mapping::Pair;

use crate::harness::{Harness, Ingress, Options};
use crate::soak::{self, Progress, SoakArgs, Watch};
use crate::truth::{Rules, Truth};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated representatives.
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Seconds of activity; then the demo settles, checks and exits.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Print the summary as one JSON object on stdout (progress still goes to a terminal).
    #[arg(long)]
    json: bool,
    /// Seed of the simulated activity: the same seed plays the same day.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep presync's state in this SQLite database (`sqlite:demo.db`, then `presync explain
    /// rep-000003 --database sqlite:demo.db`); by default a temporary file deleted at the end.
    #[arg(long)]
    database: Option<String>,
}

/// Representatives the live table shows.
const SHOWN: usize = 12;

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let mut opts = Options::new(args.reps);
    // Teams changes arrive by change notifications, as the README's configuration has it; the
    // reconciler runs once at the end of the day, so that what the day shows is the sync's own.
    opts.ingress = Ingress::Subscriptions;
    opts.reconcile_schedule = "0 0 0 1 1 *".to_owned();
    if let Some(url) = &args.database {
        let path = url
            .strip_prefix("sqlite:")
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--database: {url:?} is not sqlite:PATH"))?;
        // The service runs in a directory of its own: the path is made absolute here.
        let path = std::path::absolute(path.trim_start_matches("//"))?;
        // The day starts from new simulators: a database that remembers another day would
        // meet people it has never seen under ids it already knows.
        anyhow::ensure!(
            !path.exists(),
            "--database: {} exists already (an earlier demo's state); the demo starts a new \
             day on a new database: remove the file or name another",
            path.display()
        );
        opts.database = Some(format!("sqlite:{}?mode=rwc", path.display()));
    }
    let play = SoakArgs::demo(args.reps, args.duration, args.seed);
    let mut table = Table {
        tty: std::io::stderr().is_terminal(),
        drawn: 0,
        catalog: Catalog::builtin(),
    };
    let (passed, summary) = soak::play(&play, &opts, 1, &mut table).await?;
    if args.json {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    Ok(passed)
}

/// The live view: a redrawn table on a terminal, a line every few seconds otherwise.
struct Table {
    tty: bool,
    /// Lines drawn last time, to draw over.
    drawn: usize,
    catalog: Catalog,
}

impl Watch for Table {
    fn every(&self) -> Duration {
        Duration::from_secs(if self.tty { 1 } else { 5 })
    }

    fn begin(&mut self, h: &Harness, _: usize, _: &str, duration: u64) {
        eprintln!(
            "presync demo: {} representatives, {duration} s of their day (Ctrl-C stops)",
            h.reps.len()
        );
    }

    fn tick(&mut self, h: &Harness, p: &Progress) {
        let head = format!(
            "{:>3.0}/{} s · {}",
            p.elapsed.as_secs_f64(),
            p.run_for.as_secs(),
            p.line()
        );
        if !self.tty {
            eprintln!("  {head}");
            return;
        }
        let truth = Truth::of(h, Rules::default(), p.start);
        let mut lines = vec![head, String::new()];
        lines.push(format!(
            "{:<11} {:<22} {:<27} {:<5} {}",
            "rep", "Dynamics 365", "Teams", "hold", "follows the people"
        ));
        for (r, t) in h.reps.iter().zip(&truth.reps).take(SHOWN) {
            let d365_id = h.dv.presence(&r.agent);
            let d365 = d365_id
                .as_ref()
                .and_then(|p| self.catalog.canonical(p))
                .unwrap_or(Availability::Offline);
            let label = d365_id
                .as_ref()
                .and_then(|p| self.catalog.entry(p).map(|e| e.name.clone()))
                .unwrap_or_else(|| "?".into());
            let (a, b) = h.graph.presence(&r.aad);
            let follows = if t.d365.last().contains(&d365) {
                "yes".to_owned()
            } else {
                format!("D365 should show {}", t.d365.last())
            };
            lines.push(format!(
                "{:<11} {:<22} {:<27} {:<5} {follows}",
                r.id,
                label,
                Pair::normalized(&a, &b).code(),
                if *t.held.last() { "held" } else { "" },
            ));
        }
        if h.reps.len() > SHOWN {
            lines.push(format!(
                "... and {} more; held now: {}",
                h.reps.len() - SHOWN,
                truth.held()
            ));
        }
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        for l in &lines {
            let _ = writeln!(err, "\x1b[2K{l}");
        }
        let _ = err.flush();
        self.drawn = lines.len();
    }

    fn settling(&mut self) {
        eprintln!("presync demo: the day is over; settling, reconciling and checking");
    }
}

fn print_summary(s: &serde_json::Value) {
    println!("presync demo summary (seed {})", s["seed"]);
    let people = &s["people"];
    println!(
        "  people                   {} D365 and {} Teams actions, {} conversations",
        people["d365_actions"], people["teams_actions"], people["conversations"]
    );
    println!(
        "  genuine changes          {} in D365, {} in Teams",
        s["genuine_changes"]["d365"], s["genuine_changes"]["teams"]
    );
    for (name, key) in [("writes to D365", "d365"), ("writes to Teams", "teams")] {
        println!(
            "  {name:<24} {} ({} per genuine change in the other system)",
            s["writes"][key]["writes"], s["writes"][key]["amplification"]
        );
    }
    let routing = &s["routing"];
    println!(
        "  conversations offered    {}; to someone who should not have been routable: {} \
         (and {} while a service refused or held back presync)",
        routing["offered"],
        routing["offers_while_unavailable"],
        routing["offers_while_a_service_refused_presync"]
    );
    println!("  held at the end          {}", s["held_at_the_end"]);
    for (name, key) in [
        ("latency", "latency_ms"),
        ("  to D365", "latency_ms_to_d365"),
        ("  to Teams", "latency_ms_to_teams"),
    ] {
        println!(
            "  {name:<24} p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            s[key]["p50"], s[key]["p99"], s[key]["max"], s[key]["samples"]
        );
    }
    if s["passed"] == true {
        println!(
            "  every representative follows the people, in D365, in Teams and in presync, and \
             no one was routed a customer they should not have been"
        );
    } else {
        println!("  FAILED:");
        if let Some(checks) = s["checks"].as_object() {
            for (k, v) in checks.iter().filter(|(_, v)| **v != true) {
                println!("    {k}: {v}");
            }
        }
        if let Some(d) = s["diverged"].as_array() {
            for line in d {
                println!("    {}", line.as_str().unwrap_or_default());
            }
        }
    }
}
