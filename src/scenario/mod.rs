//! `presync scenario run FILE`: a day of a few representatives, written in a file
//! ([`mod@format`]), played against both simulators and the real service, with what each system
//! must show checked as it goes. Used to try a policy (a hold, a one-way sync) before it runs
//! for real, and in CI for every rule presync promises (`fixtures/scenarios/`).
//!
//! The run: both simulators and one `presync run` on loopback ([`crate::harness`]), Teams
//! polled every second unless the file says `ingress = "subscriptions"`. Time 0 is when the
//! service is ready and every representative has settled, signed in to both systems and
//! Available. Each step is played at its time; every representative an expectation names is
//! sampled every 50 ms; then each expectation is checked against the samples of its time
//! ([`check`]). Exit status: 0 when every expectation held.

mod check;
pub mod format;
mod play;

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `presync scenario`.
#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Play a scenario file against the simulators and the real service; exit non-zero and say
    /// which expectation failed, with what each system showed, when one does.
    Run(RunArgs),
}

/// `presync scenario run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (TOML; see fixtures/scenarios/ and the README).
    pub file: PathBuf,
    /// Print the outcome as one JSON object: name, passed, expectations (at, rep, want, got,
    /// passed).
    #[arg(long)]
    pub json: bool,
    /// When an expectation fails, keep the evidence here: the service's log, its SQLite
    /// database (for `presync explain rep-N --database sqlite:DIR/presync.db`) and
    /// `explain-rep-N.txt` for each representative that failed.
    #[arg(long, value_name = "DIR")]
    pub evidence: Option<PathBuf>,
}

/// Run the command; whether every expectation held.
pub async fn run(command: ScenarioCommand) -> anyhow::Result<bool> {
    match command {
        ScenarioCommand::Run(args) => {
            let scenario = format::Scenario::load(&args.file)?;
            let played = play::play(&scenario, args.evidence.as_deref()).await?;
            let outcome = check::check(&scenario, &played);
            if args.json {
                println!("{}", outcome.json());
            } else {
                print!("{}", outcome.text());
            }
            Ok(outcome.passed())
        }
    }
}
