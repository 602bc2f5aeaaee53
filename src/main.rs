//! `presync`: keeps a contact-center representative's presence consistent across Dynamics 365
//! Contact Center and Microsoft Teams.
//!
//! This binary is the one place that names concrete connectors and database backends. Today it
//! offers the commands the engine alone supports; the service, connectors and simulators arrive
//! with their issues.

use anyhow::Context;
use clap::{Parser, Subcommand};
use presync_engine::store::{redact_url, Store};

#[derive(Debug, Parser)]
#[command(name = "presync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Migrate { database } => {
            let shown = redact_url(&database);
            let store = Store::open(&database)
                .await
                .with_context(|| format!("migrating {shown}"))?;
            store.close().await;
            println!("{shown}: schema is up to date");
        }
    }
    Ok(())
}
