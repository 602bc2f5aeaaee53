//! `presync sim`: the simulators of the remote systems, on a local address, for the demo,
//! manual testing and the end-to-end tests. Nothing here talks to Microsoft.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use presync_dataverse::config::WebhookAuth;
use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::{Activity, DataverseSim, SimConfig, SimCredential, WebhookTarget};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Both simulators on free loopback ports with signed-in representatives, and a directory
    /// to run presync against them from: `presync.toml` (its secrets in files beside it),
    /// `reps.csv`. Prints the commands to run next; runs until interrupted.
    Up(UpArgs),
    /// The Dynamics 365 Contact Center (Dataverse) simulator: Entra token endpoint, CCaaS presence
    /// APIs, OData reads, presence catalog, and webhooks to a URL.
    Dataverse(DataverseArgs),
    /// The Microsoft Graph presence simulator: Entra token endpoint (app-only and delegated
    /// grants), presence reads and writes with aggregation, fade and expiry, subscriptions with
    /// the validation handshake, and change notifications.
    Teams(TeamsArgs),
}

#[derive(Debug, Args)]
pub struct TeamsArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The Entra tenant id of the token endpoint.
    #[arg(long, default_value = "presync-sim")]
    tenant: String,
    /// presync's application (client) id: also the presence session id it accepts.
    #[arg(long, default_value = "11111111-2222-3333-4444-555555555555")]
    app_id: String,
    /// The client secret it accepts.
    #[arg(long, env = "PRESYNC_SIM_CLIENT_SECRET", hide_env_values = true)]
    client_secret: String,
    /// The delegated service account's user id.
    #[arg(long, default_value = "99999999-0000-0000-0000-000000000001")]
    delegated_account: String,
    /// The refresh token it accepts for the delegated account.
    #[arg(
        long,
        env = "PRESYNC_SIM_REFRESH_TOKEN",
        hide_env_values = true,
        default_value = "presync-sim-refresh-token"
    )]
    refresh_token: String,
    /// Seed this many users, signed in (Available).
    #[arg(long, default_value_t = 0)]
    users: usize,
}

/// The Entra object id of the `i`th seeded Teams user (the same people as the seeded agents).
pub fn seeded_user(i: usize) -> String {
    seeded_agent(i).1
}

#[derive(Debug, Args)]
pub struct DataverseArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The Entra tenant id of the token endpoint.
    #[arg(long, default_value = "presync-sim")]
    tenant: String,
    /// The application (client) id it accepts.
    #[arg(long, default_value = "presync")]
    client_id: String,
    /// The client secret it accepts.
    #[arg(
        long,
        env = "PRESYNC_SIM_CLIENT_SECRET",
        hide_env_values = true,
        conflicts_with = "certificate"
    )]
    client_secret: Option<String>,
    /// A PEM certificate whose key signs the client assertions it accepts.
    #[arg(long)]
    certificate: Option<std::path::PathBuf>,
    /// The organization host sent as `x-ms-dynamics-organization`.
    #[arg(long, default_value = "contoso.crm.dynamics.com")]
    org_host: String,
    /// Where to send webhooks (presync's `/webhooks/dataverse`).
    #[arg(long)]
    webhook_url: Option<String>,
    /// How webhooks authenticate.
    #[arg(long, value_enum, default_value = "header")]
    webhook_auth: HookAuth,
    /// The header or query parameter name (for `header` and `query`).
    #[arg(long, default_value = "x-presync-secret")]
    webhook_name: String,
    /// The webhook secret.
    #[arg(long, env = "PRESYNC_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Seed this many signed-in agents (Available).
    #[arg(long, default_value_t = 0)]
    agents: usize,
    /// Let the agents change presence on their own, one change per this many milliseconds on
    /// average (0: never).
    #[arg(long, default_value_t = 0)]
    activity_ms: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HookAuth {
    /// A request header `NAME: SECRET`.
    Header,
    /// `?code=SECRET` (WebhookKey).
    Key,
    /// `?NAME=SECRET` (HttpQueryString).
    Query,
}

/// The id of the `i`th seeded agent, and of their Entra user.
pub fn seeded_agent(i: usize) -> (String, String) {
    (
        format!("5e000000-0000-4000-8000-{i:012x}"),
        format!("aad00000-0000-4000-8000-{i:012x}"),
    )
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The directory to write `presync.toml`, its secrets and `reps.csv` to (created if need
    /// be; presync's SQLite database goes there too).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// How many representatives, signed in and Available in both systems.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// `presync sim up`.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    if args.dir.join("presync.toml").exists() {
        anyhow::bail!(
            "{} already holds a presync.toml: give an empty or new directory",
            args.dir.display()
        );
    }
    let mut opts = crate::harness::Options::new(args.reps);
    opts.operator_dir = Some(args.dir.clone());
    // An operator's first hour: reconcile every five minutes, as the service does by default.
    opts.reconcile_schedule = crate::config::default_schedule();
    let h = crate::harness::Harness::start(&opts, 1).await?;
    let dir = h.dir.path();
    let exe = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "presync".to_owned());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Simulators up with {} representatives: Dynamics 365 (Dataverse) at {}, Teams (Graph) at {}.",
        h.reps.len(),
        h.dv_url, h.graph_url
    )?;
    writeln!(
        out,
        "Wrote {0}/presync.toml (secrets in files beside it) and {0}/reps.csv.",
        dir.display()
    )?;
    writeln!(out, "Next, in another terminal:")?;
    writeln!(
        out,
        "  {exe} reps import {}/reps.csv --database {}",
        dir.display(),
        h.database
    )?;
    writeln!(out, "  {exe} run --config {}/presync.toml", dir.display())?;
    writeln!(
        out,
        "presync will listen on {}. Ctrl-C stops the simulators.",
        h.instance_url(0)
    )?;
    out.flush()?;
    drop(out);
    shutdown_signal().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::Up(args) => up(args).await,
        SimCommand::Dataverse(args) => dataverse(args).await,
        SimCommand::Teams(args) => teams(args).await,
    }
}

async fn dataverse(args: DataverseArgs) -> anyhow::Result<()> {
    let credential = match (&args.client_secret, &args.certificate) {
        (_, Some(path)) => SimCredential::CertificatePem(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (Some(secret), None) => SimCredential::ClientSecret(secret.clone()),
        (None, None) => {
            anyhow::bail!("give --client-secret (or PRESYNC_SIM_CLIENT_SECRET) or --certificate")
        }
    };
    let mut config = SimConfig::new(
        args.tenant.clone(),
        args.client_id.clone(),
        credential,
        args.org_host.clone(),
    );
    if let Some(url) = &args.webhook_url {
        let secret = args
            .webhook_secret
            .clone()
            .context("--webhook-url needs --webhook-secret (or PRESYNC_SIM_WEBHOOK_SECRET)")?;
        let auth = match args.webhook_auth {
            HookAuth::Header => WebhookAuth::HttpHeader {
                name: args.webhook_name.clone(),
                value: secret,
            },
            HookAuth::Key => WebhookAuth::WebhookKey { value: secret },
            HookAuth::Query => WebhookAuth::HttpQueryString {
                name: args.webhook_name.clone(),
                value: secret,
            },
        };
        config.webhook = Some(WebhookTarget::new(url.clone(), auth));
    }
    let sim = DataverseSim::try_new(config).context("starting the Dataverse simulator")?;
    for i in 0..args.agents {
        let (agent, aad) = seeded_agent(i);
        sim.add_agent(
            &agent,
            &aad,
            &format!("Agent {i}"),
            builtin::AVAILABLE,
            true,
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // A closed stdout must not stop a running simulator.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "Dataverse simulator on http://{addr}");
    let _ = writeln!(
        out,
        "  token endpoint: http://{addr}/{}/oauth2/v2.0/token",
        args.tenant
    );
    let _ = writeln!(out, "  Web API:        http://{addr}/api/data/v9.2");
    let _ = out.flush();
    if args.activity_ms > 0 {
        sim.start_activity(Activity::new(
            0x5eed,
            Duration::from_millis(args.activity_ms),
        ));
    }
    sim.serve_with_shutdown(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

async fn teams(args: TeamsArgs) -> anyhow::Result<()> {
    use presync_teams::sim::{GraphSim, GraphSimConfig};
    let config = GraphSimConfig::new(
        args.tenant.clone(),
        args.app_id.clone(),
        args.client_secret.clone(),
        args.delegated_account.clone(),
        args.refresh_token.clone(),
    );
    let sim = GraphSim::new(
        config,
        std::sync::Arc::new(presync_engine::clock::SystemClock),
    );
    for i in 0..args.users {
        let user = seeded_user(i);
        sim.add_user(&user);
        sim.person_signs_in(&user);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "Graph simulator on http://{addr}");
    let _ = writeln!(
        out,
        "  token endpoint: http://{addr}/{}/oauth2/v2.0/token",
        args.tenant
    );
    let _ = writeln!(out, "  Graph:          http://{addr}/v1.0");
    let _ = out.flush();
    sim.serve_with_shutdown(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
