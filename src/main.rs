//! `presync`: keeps a contact-center representative's presence consistent across Dynamics 365
//! Contact Center and Microsoft Teams.
//!
//! This binary is the one place that names concrete connectors and database backends: the
//! service (`run`), the demo, the simulators, the benchmarks, the soak, and the operator's
//! commands.

use std::path::PathBuf;
use std::process::ExitCode;

mod admin;
mod bench;
mod config;
mod config_check;
mod demo;
mod harness;
mod listener;
mod reps;
mod scenario;
mod service;
mod sim;
mod soak;
mod truth;
mod webhook_bodies;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use presync_dataverse::mapping::Catalog;
use presync_engine::store::{redact_url, Store};

/// mimalloc instead of glibc's allocator: a webhook allocates and frees many small objects, on
/// which glibc spent about a third of the service's CPU while it ingested, and glibc keeps
/// memory freed after a reconcile pass in per-thread arenas (BENCHMARKS.md, "What changed since
/// 222c2ef").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option for how long freed memory stays with the process before it goes back to
/// the system, and the value `presync run` starts with unless the environment sets it.
/// mimalloc 3 waits 1,000 ms by default (version 2 waited 10): memory one burst of work freed
/// (a reconcile's reads, a poll of every user, a second of webhooks) was still resident while
/// the next burst allocated its own. Holding 100,000 representatives, the peak went from
/// 148-153 MiB to 132.6 MiB at 10 ms (BENCHMARKS.md, "Memory").
#[cfg(unix)]
const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "10");

/// mimalloc reads its options from the environment as the process starts, before `main`, and
/// setting one afterwards takes `unsafe` code, which this workspace forbids. So the service,
/// started without the option, starts itself again (the same process, `exec`) with it set.
/// If that fails it goes on with mimalloc's default; so does it where there is no `exec`.
#[cfg(unix)]
fn with_allocator_options() {
    use std::os::unix::process::CommandExt;

    let (name, value) = PURGE_DELAY;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // Only returns if it failed.
    let error = command.args(args).env(name, value).exec();
    eprintln!("presync: starting again with {name}={value} failed ({error}); going on without");
}

#[cfg(not(unix))]
fn with_allocator_options() {}

#[derive(Debug, Parser)]
#[command(name = "presync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole service on this machine: both simulators on loopback, a SQLite database,
    /// simulated representatives at work, a few faults; live progress, then a summary. Exits 0
    /// only if every system shows what the people's own actions call for and no one was routed
    /// a customer they should not have been.
    Demo(demo::DemoArgs),
    /// Benchmarks: the real service against both simulators on loopback, with its own load
    /// generator and same-run baselines; writes a Markdown report (BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Chaos soak: the real service (one or two `presync run` processes) against both
    /// simulators, with faults injected and the service killed and restarted; checks the end
    /// state against the simulators' truth and exits non-zero on any failure.
    Soak(soak::SoakArgs),
    /// Scenarios: a day of a few representatives, written in a file, played against the
    /// simulators and the real service, with what each system must show.
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Create or upgrade the database schema.
    Migrate {
        /// Database URL: `sqlite:PATH` (embedded default) or `postgres://USER@HOST/DB`.
        #[arg(
            long,
            env = "PRESYNC_DATABASE_URL",
            default_value = "sqlite:presync.db"
        )]
        database: String,
    },
    /// Run the service: webhooks, health, metrics, the engine and the scheduled jobs.
    Run {
        /// The TOML configuration (PRESYNC_SECTION__KEY variables apply on top).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run one reconcile pass, send its repairs, check again, print a summary; exit non-zero if
    /// drift remains. (The service, `presync run`, runs passes on its own schedule.)
    Reconcile {
        /// The TOML configuration (PRESYNC_SECTION__KEY variables apply on top).
        #[arg(long, short)]
        config: PathBuf,
        /// One pass and exit: what this command always does (kept for scripts that say so).
        #[arg(long)]
        once: bool,
    },
    /// The directory of representatives.
    #[command(subcommand)]
    Reps(RepsCommand),
    /// Why a representative's presence is what it is: the canonical state, each system's state,
    /// and the last decisions with their rules.
    Explain {
        /// The representative's id.
        rep: String,
        /// How many decisions to show.
        #[arg(long, default_value_t = 20)]
        last: i64,
        /// Database URL: `sqlite:PATH` or `postgres://USER@HOST/DB` (what `database.url` of
        /// the service's configuration says).
        #[arg(
            long,
            env = "PRESYNC_DATABASE_URL",
            default_value = "sqlite:presync.db"
        )]
        database: String,
    },
    /// Check a configuration file, or print a commented example.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Microsoft Teams: sign in the delegated service account for presence subscriptions.
    #[command(subcommand)]
    Teams(TeamsCommand),
    /// Run a simulator of a remote system on a local address.
    #[command(subcommand)]
    Sim(Box<sim::SimCommand>),
    /// Parse a captured payload and print, as JSON, what presync derives from it.
    Inspect {
        /// The system the payload comes from.
        system: InspectSystem,
        /// The captured body: a Dataverse webhook; a Graph notification delivery, presence
        /// resource (`GET /users/{id}/presence`) or presence collection (`getPresencesByUserId`).
        file: PathBuf,
        /// The delivery carried `x-ms-dynamics-msg-size-exceeded` (Dataverse).
        #[arg(long)]
        size_exceeded: bool,
        /// Decrypt rich Teams notifications with this private key (PEM)...
        #[arg(long, requires = "certificate_id")]
        key: Option<PathBuf>,
        /// ...registered under this `encryptionCertificateId`.
        #[arg(long)]
        certificate_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RepsCommand {
    /// Add or update representatives from a CSV (`id,display_name,<system>...`) or JSON file.
    Import {
        file: PathBuf,
        /// Database URL: `sqlite:PATH` or `postgres://USER@HOST/DB` (what `database.url` of
        /// the service's configuration says).
        #[arg(
            long,
            env = "PRESYNC_DATABASE_URL",
            default_value = "sqlite:presync.db"
        )]
        database: String,
    },
    /// List the directory: id, name, and each system's id.
    List {
        /// Database URL: `sqlite:PATH` or `postgres://USER@HOST/DB` (what `database.url` of
        /// the service's configuration says).
        #[arg(
            long,
            env = "PRESYNC_DATABASE_URL",
            default_value = "sqlite:presync.db"
        )]
        database: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Report every problem of a configuration, with its key path; exit 1 if there is any.
    Check {
        /// The TOML file (PRESYNC_* variables apply on top).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a commented example configuration.
    Default,
}

#[derive(Debug, Subcommand)]
enum TeamsCommand {
    /// Sign in the delegated service account with the device-code flow and store its refresh
    /// token (readable by its owner only) for the running service.
    Login {
        /// The Entra tenant id.
        #[arg(long)]
        tenant: String,
        /// presync's application (client) id.
        #[arg(long)]
        client_id: String,
        /// Where to store the refresh token.
        #[arg(long)]
        store: PathBuf,
        /// The Entra authority (sovereign clouds have their own).
        #[arg(long, default_value = "https://login.microsoftonline.com")]
        authority: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InspectSystem {
    Dataverse,
    Teams,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Inspect {
        system,
        file,
        size_exceeded,
        key,
        certificate_id,
    } = &cli.command
    {
        let key = key.as_ref().zip(certificate_id.as_ref());
        return inspect(*system, file, *size_exceeded, key);
    }
    if matches!(cli.command, Command::Run { .. }) {
        with_allocator_options();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `presync inspect`: one JSON object on stdout; exit 2 with one line on stderr for a body it
/// cannot read.
fn inspect(
    system: InspectSystem,
    file: &PathBuf,
    size_exceeded: bool,
    key: Option<(&PathBuf, &String)>,
) -> ExitCode {
    let body = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("presync inspect: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match system {
        InspectSystem::Dataverse => {
            let catalog = Catalog::builtin();
            match presync_dataverse::inspect::inspect(&body, size_exceeded, &|id| {
                catalog.canonical(id)
            }) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("presync inspect: {}: {e}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        InspectSystem::Teams => {
            let keys = match key {
                Some((path, id)) => {
                    let loaded = std::fs::read_to_string(path)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| {
                            presync_teams::crypto::DecryptionKeys::from_pem(id, &pem)
                                .map_err(|e| e.to_string())
                        });
                    match loaded {
                        Ok(k) => Some(k),
                        Err(e) => {
                            eprintln!("presync inspect: {}: {e}", path.display());
                            return ExitCode::from(2);
                        }
                    }
                }
                None => None,
            };
            match presync_teams::inspect::inspect(&body, keys.as_ref()) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("presync inspect: {}: {e}", file.display());
                    ExitCode::from(2)
                }
            }
        }
    }
}

async fn open_store(url: &str) -> anyhow::Result<Store> {
    Store::open(url)
        .await
        .with_context(|| format!("opening {}", redact_url(url)))
}

/// The configuration in `path`, or every problem it has.
fn checked(path: &std::path::Path) -> anyhow::Result<config::Config> {
    config_check::check(path).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect();
        anyhow::anyhow!(
            "{} problem(s) in the configuration:\n{}",
            problems.len(),
            lines.join("\n")
        )
    })
}

/// [`open_store`] for a command that only reads: a database that is not there is refused.
async fn open_existing_store(url: &str) -> anyhow::Result<Store> {
    Store::open_existing(url)
        .await
        .with_context(|| format!("opening {}", redact_url(url)))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    // The demo draws on the terminal: only errors interrupt it unless RUST_LOG asks for more.
    let default_level = match cli.command {
        Command::Demo(_) | Command::Bench(_) | Command::Soak(_) | Command::Scenario(_) => "error",
        // The scheduler library says at INFO what presync's own jobs say better.
        _ => "info,tokio_cron_scheduler=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file or read by a collector is text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match cli.command {
        Command::Migrate { database } => {
            let shown = redact_url(&database);
            let store = Store::open(&database)
                .await
                .with_context(|| format!("migrating {shown}"))?;
            store.close().await;
            println!("{shown}: schema is up to date");
        }
        Command::Sim(command) => sim::run(*command).await?,
        Command::Demo(args) => {
            if !demo::run(args).await? {
                anyhow::bail!(
                    "the demo failed: not every representative follows the people (see the summary)"
                );
            }
        }
        Command::Bench(args) => {
            if !bench::run(args).await? {
                anyhow::bail!("a benchmark missed its goal (see the report)");
            }
        }
        Command::Soak(args) => {
            if !soak::run(args).await? {
                anyhow::bail!("the soak failed a check");
            }
        }
        Command::Scenario(command) => {
            if !scenario::run(command).await? {
                anyhow::bail!("the scenario failed");
            }
        }
        Command::Config(ConfigCommand::Default) => print!("{}", config::EXAMPLE),
        Command::Reconcile {
            config: path,
            once: _,
        } => {
            let cfg = checked(&path)?;
            if !service::reconcile_once(cfg).await? {
                anyhow::bail!("drift remains after the reconcile");
            }
        }
        Command::Run { config: path } => {
            let cfg = checked(&path)?;
            service::run(cfg).await?;
        }
        Command::Reps(RepsCommand::Import { file, database }) => {
            let store = open_store(&database).await?;
            let now = presync_engine::clock::Clock::now(&presync_engine::clock::SystemClock);
            let n = reps::import(&store, &file, now).await?;
            println!("{n} representative(s) imported from {}", file.display());
        }
        Command::Reps(RepsCommand::List { database }) => {
            let store = open_existing_store(&database).await?;
            print!("{}", reps::list(&store).await?);
        }
        Command::Explain {
            rep,
            last,
            database,
        } => {
            let store = open_existing_store(&database).await?;
            print!(
                "{}",
                reps::explain(
                    &store,
                    &presync_engine::RepId(reps::normalise_id(&rep)),
                    last
                )
                .await?
            );
        }
        Command::Config(ConfigCommand::Check { config: path }) => {
            if let Err(problems) = config_check::check(&path) {
                for p in &problems {
                    eprintln!("{}: {p}", path.display());
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), path.display());
            }
            println!("{}: ok", path.display());
        }
        Command::Teams(TeamsCommand::Login {
            tenant,
            client_id,
            store,
            authority,
        }) => {
            let login = presync_teams::login::DeviceLogin::new(authority, tenant, client_id)?;
            let code = login.start().await?;
            println!("{}", code.message);
            login.wait(&code, &store).await?;
            println!(
                "Signed in; the refresh token is stored at {}",
                store.display()
            );
        }
        Command::Inspect { .. } => unreachable!("handled before the runtime starts"),
    }
    Ok(())
}
