//! Figure 1, ingest: authenticated Dataverse webhooks acknowledged per second, durably, by
//! `presync run` on SQLite and on PostgreSQL, against the baseline (the same HTTP stack that only
//! reads and parses the body and answers 202) measured by the same generator in the same run,
//! before and after the service.

use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;

use super::load::{self, Throughput};
use super::webhook::Source;
use super::{Figure, Outcome, Row, Scale};
use crate::harness::{Ingress, Options};

const IN_FLIGHT: usize = 32;
const GOAL: f64 = 0.5;
/// Webhooks per second of the cost run: a load the service keeps up with on this machine.
const COST_RATE: u32 = 2_000;

/// The resolver never defers to acknowledgements: the run that shows the rate of a sustained
/// overload, once `pipeline.defer_for_ms` is spent.
const NEVER_DEFER: &str = "[engine.pipeline]\ndefer_for_ms = 0";

fn options(reps: usize, database: Option<String>, database_toml: &str) -> Options {
    let mut opts = Options::new(reps);
    opts.database_toml = database_toml.to_owned();
    // Passes only when a figure asks for one.
    opts.reconcile_on_start = false;
    opts.database = database;
    opts.ingress = Ingress::Polling { secs: 3_600 };
    opts.log_level = "error".into();
    opts
}

/// The service's counters of how it grouped its work, from its metrics; subtract two readings
/// with [`Grouping::since`] for a run's.
#[derive(Debug, Clone, Copy)]
struct Grouping {
    accepted: f64,
    commits: f64,
    decisions: f64,
    batches: f64,
}

impl Grouping {
    async fn read(base: &str) -> Grouping {
        let m = |name: &'static str| async move {
            crate::harness::metric_sum(base, name).await.unwrap_or(0.0)
        };
        Grouping {
            accepted: m("presync_events_accepted_total").await,
            commits: m("presync_ingest_commits_total").await,
            decisions: m("presync_decisions_total").await,
            batches: m("presync_resolve_batches_total").await,
        }
    }

    fn since(self, earlier: Grouping) -> Grouping {
        Grouping {
            accepted: self.accepted - earlier.accepted,
            commits: self.commits - earlier.commits,
            decisions: self.decisions - earlier.decisions,
            batches: self.batches - earlier.batches,
        }
    }

    /// `webhooks per inbox commit | events per resolve batch`, as table cells.
    fn cells(&self) -> String {
        let mean = |n: f64, per: f64| if per > 0.0 { n / per } else { 0.0 };
        format!(
            "{:.1} | {:.1}",
            mean(self.accepted, self.commits),
            mean(self.decisions, self.batches)
        )
    }
}

/// What a run of the service acknowledged, how it grouped the work meanwhile, and the CPU
/// time it used per webhook.
#[derive(Debug, Clone, Copy)]
struct Run {
    got: Throughput,
    grouping: Grouping,
    cpu_per_webhook: Option<f64>,
    /// Seconds from the end of the load until every webhook acknowledged was resolved.
    drain_secs: f64,
    /// CPU per webhook from the start of the load until every one was resolved.
    cpu_per_resolved: Option<f64>,
}

/// CPU seconds, user and system, all threads, that process `pid` has used (`/proc/PID/stat`,
/// in clock ticks of 1/100 s on Linux); `None` where there is no such file.
fn cpu_secs(pid: u32) -> Option<f64> {
    stat_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of each kind of thread of process `pid`: tokio's workers, SQLite's connection
/// threads (sqlx runs each connection on a thread of its own), and the rest.
fn cpu_by_thread(pid: u32) -> ThreadCpu {
    let mut cpu = ThreadCpu::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cpu;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(secs) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| stat_secs(&stat))
        else {
            continue;
        };
        let kind = if name.starts_with("tokio-rt-worker") {
            &mut cpu.tokio
        } else if name.starts_with("sqlx-sqlite") {
            &mut cpu.sqlite
        } else {
            &mut cpu.other
        };
        *kind += secs;
    }
    cpu
}

/// User and system time of a `/proc/.../stat` line, in seconds (clock ticks of 1/100 s).
fn stat_secs(stat: &str) -> Option<f64> {
    // After the command name, which may hold spaces: state is the first field, utime the 12th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds by kind of thread ([`cpu_by_thread`]).
#[derive(Debug, Clone, Copy, Default)]
struct ThreadCpu {
    tokio: f64,
    sqlite: f64,
    other: f64,
}

impl ThreadCpu {
    fn since(self, earlier: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            tokio: self.tokio - earlier.tokio,
            sqlite: self.sqlite - earlier.sqlite,
            other: self.other - earlier.other,
        }
    }

    fn total(&self) -> f64 {
        self.tokio + self.sqlite + self.other
    }
}

/// CPU microseconds per request of `pid` between two [`cpu_secs`] readings.
fn per_request(before: Option<f64>, after: Option<f64>, requests: f64) -> Option<f64> {
    Some((after? - before?) / requests * 1e6).filter(|_| requests > 0.0)
}

/// The service on `database`, loaded for `measure`.
async fn presync(
    reps: usize,
    database: Option<String>,
    database_toml: &str,
    extra_toml: &str,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Run> {
    let mut options = options(reps, database, database_toml);
    options.extra_toml = extra_toml.to_owned();
    let source = Source::prepare(&options).await?;
    let h = &source.harness;
    let instance = super::serve(h).await?;
    let t = source.target(&instance.url);
    let body = source.flipping(0);
    let before = Grouping::read(&instance.url).await;
    let cpu_before = cpu_secs(instance.pid());
    let (result, _) = load::throughput(&t, body, IN_FLIGHT, warmup, measure, 0).await?;
    let cpu_after = cpu_secs(instance.pid());
    let grouping = Grouping::read(&instance.url).await.since(before);
    anyhow::ensure!(
        result.ok > 0,
        "presync acknowledged no webhook\n{}",
        h.log_tails(20)
    );
    // What the load left to resolve, resolved with nothing else arriving.
    let drain_secs = drain(&instance.url, Duration::from_millis(250)).await?;
    let cpu_drained = cpu_secs(instance.pid());
    instance.kill();
    Ok(Run {
        got: result,
        grouping,
        cpu_per_webhook: per_request(cpu_before, cpu_after, grouping.accepted),
        drain_secs,
        cpu_per_resolved: per_request(cpu_before, cpu_drained, grouping.accepted),
    })
}

/// Wait until the inbox of the instance at `base` is empty, looking every `every` (each look
/// counts the inbox, which costs the service more the longer the queue); the seconds waited.
async fn drain(base: &str, every: Duration) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let inbox = "presync_queue_depth{queue=\"inbox\"}";
    while crate::harness::metric_sum(base, inbox).await != Some(0.0) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{base}: the inbox was not empty 600 s after the load"
        );
        tokio::time::sleep(every).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// What a steady load of webhooks costs the service: CPU time per webhook, by kind of thread,
/// from the first webhook until the last is resolved.
#[derive(Debug, Clone, Copy)]
struct Cost {
    rate: u32,
    webhooks: u64,
    per_webhook: ThreadCpu,
    /// Seconds from the last webhook sent until the inbox was empty.
    drain_secs: f64,
}

/// Send `rate` webhooks a second for `secs` (open loop, a rate the service keeps up with), wait
/// until every one is resolved, and divide the CPU time the service used meanwhile.
async fn steady_cost(reps: usize, rate: u32, secs: u64) -> anyhow::Result<Cost> {
    let source = Source::prepare(&options(reps, None, "")).await?;
    let instance = super::serve(&source.harness).await?;
    let t = source.target(&instance.url);
    let before = Grouping::read(&instance.url).await;
    let cpu_before = cpu_by_thread(instance.pid());
    let sent = load::paced(&t, source.flipping(0), rate, u64::from(rate) * secs).await?;
    let drain_secs = drain(&instance.url, Duration::from_millis(20)).await?;
    let cpu = cpu_by_thread(instance.pid()).since(cpu_before);
    let grouping = Grouping::read(&instance.url).await.since(before);
    instance.kill();
    let webhooks = sent.iter().filter(|s| s.ok).count() as u64;
    anyhow::ensure!(
        webhooks > 0 && grouping.decisions >= webhooks as f64,
        "{webhooks} webhooks acknowledged, {} resolved",
        grouping.decisions
    );
    let per = |s: f64| s / webhooks as f64 * 1e6;
    Ok(Cost {
        rate,
        webhooks,
        per_webhook: ThreadCpu {
            tokio: per(cpu.tokio),
            sqlite: per(cpu.sqlite),
            other: per(cpu.other),
        },
        drain_secs,
    })
}

/// The baseline process, loaded for `measure` with the same bodies: what it answered, and its
/// CPU time per request.
async fn baseline(
    reps: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<(Throughput, Option<f64>)> {
    let source = Source::prepare(&options(reps, None, "")).await?;
    let b = load::Baseline::spawn().await?;
    let mut t = source.target("");
    t.url = b.url.clone();
    let cpu_before = cpu_secs(b.pid());
    let (result, sent) =
        load::throughput(&t, source.flipping(0), IN_FLIGHT, warmup, measure, 0).await?;
    let cpu = per_request(cpu_before, cpu_secs(b.pid()), sent as f64);
    Ok((result, cpu))
}

/// A fresh database on the PostgreSQL server of `admin`, dropped by [`drop_database`].
async fn create_database(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("presync_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn row(name: &str, got: Throughput, base: f64, goal: Option<f64>) -> Row {
    let ratio = got.per_sec() / base;
    Row {
        name: name.into(),
        measured: format!("{:.0} webhooks/s", got.per_sec()),
        reference: format!("baseline {base:.0}/s"),
        ratio: format!("{ratio:.2}"),
        goal: goal.map_or("-".into(), |g| format!("ratio >= {g}")),
        met: goal.map(|g| ratio >= g),
    }
}

pub async fn run(scale: Scale, postgres: Option<&str>) -> anyhow::Result<Outcome> {
    let reps = scale.pick(10_000, 1_000);
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(scale.pick(6, 2));
    let (before, before_cpu) = baseline(reps, warmup, measure).await?;
    let sqlite = presync(reps, None, "", "", warmup, measure).await?;
    let never_defers = presync(reps, None, "", NEVER_DEFER, warmup, measure).await?;
    let normal = presync(reps, None, super::SQLITE_NORMAL, "", warmup, measure).await?;
    let pg = match postgres {
        Some(admin) => {
            let (url, name) = create_database(admin).await?;
            let result = presync(reps, Some(url), "", "", warmup, measure).await;
            drop_database(admin, &name).await?;
            Some(result?)
        }
        None => None,
    };
    let (after, after_cpu) = baseline(reps, warmup, measure).await?;
    let cost = steady_cost(reps, COST_RATE, measure.as_secs()).await?;
    let base = (before.per_sec() + after.per_sec()) / 2.0;
    let mut rows = vec![
        row("Ingest, SQLite", sqlite.got, base, Some(GOAL)),
        row(
            "Ingest, SQLite, resolver never defers (defer_for_ms = 0)",
            never_defers.got,
            base,
            None,
        ),
        row(
            "Ingest, SQLite, sqlite_synchronous = normal (opt-in)",
            normal.got,
            base,
            None,
        ),
    ];
    if let Some(pg) = pg {
        rows.push(row("Ingest, PostgreSQL", pg.got, base, None));
    }
    let mut details = format!(
        "Authenticated Dataverse webhooks (real `RemoteExecutionContext` bodies captured from the \
         Dataverse simulator, each a distinct change: new row version, newer presence time, \
         Busy/Available flipping) POSTed to a spawned `presync run` process by {IN_FLIGHT} \
         keep-alive connections for {m} s after a {w} s warm-up; only 2xx answers count (presync \
         answers 202 once the event is durable in its inbox). {reps} representatives; the \
         service runs its whole pipeline meanwhile (resolver, and dispatch to the Teams \
         simulator within Graph's limit). The baseline is the same HTTP stack (axum/hyper/tokio, \
         its own process) whose handler reads and parses the JSON body and answers 202, loaded \
         with the same bodies by the same generator before ({b1:.0}/s) and after ({b2:.0}/s) \
         the service runs; the reference is their mean. SQLite runs with its default, \
         `sqlite_synchronous = \"full\"`: every commit of the intake, where webhooks are \
         acknowledged, waits for an fsync of its write-ahead log, so an acknowledged webhook \
         survives a power loss. The `normal` row is the opt-in whose commits survive a crash \
         of presync but not of the machine: the difference between the two is what waiting \
         for the disk costs.\n\n\
         The load is an overload: it saturates the machine's two cores. Under overload presync \
         acknowledges first (`engine.pipeline.defer_for_ms`, 10 s by default): with webhooks \
         queueing for the disk and a backlog waiting, the resolver resolves one batch every \
         `defer_pause_ms` (250 ms) instead of taking its share of the CPU, for at most that \
         long, then catches up at full speed. The {m} s load falls within those 10 s, so the \
         SQLite row is the rate at which presync absorbs an overload of up to 10 s; the \
         `defer_for_ms = 0` row is the same load with the resolver never deferring, the rate \
         of a sustained overload once the 10 s are spent (and of the versions before the \
         policy). The decisions the deferral postpones are in the drained-after column.\n\n\
         Webhooks per commit and events per resolve batch are means over the load, warm-up \
         included, from the service's `presync_ingest_commits_total` and \
         `presync_resolve_batches_total`. CPU per webhook is the process's user and system \
         time (all its threads, from `/proc/PID/stat`) over the load, warm-up included, divided \
         by the webhooks it acknowledged (the baseline: answered) meanwhile; for presync it \
         includes the pipeline's work on them, and on PostgreSQL it leaves out the server's \
         own processes. It varies from run to run about as much as the rate does.\n\n\
         Acknowledged is not resolved: the resolver works off the inbox beside the load, and \
         what it has not resolved when the load stops it resolves after, with nothing else \
         arriving. Resolved during the load is the share of the acknowledged webhooks resolved \
         by then; drained is how long the rest took; CPU per webhook until resolved is the \
         process's CPU time from the start of the load until the inbox was empty, per webhook: \
         what a webhook costs, acknowledged and resolved.\n\n\
         | Run | 2xx/s | 2xx | not 2xx | webhooks per inbox commit | events per resolve batch | CPU per webhook | resolved during the load | drained after | CPU per webhook until resolved |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        m = measure.as_secs(),
        w = warmup.as_secs(),
        b1 = before.per_sec(),
        b2 = after.per_sec(),
    );
    let us = |cpu: Option<f64>| cpu.map_or("-".into(), |us| format!("{us:.0} µs"));
    let mut line = |name: &str, t: Throughput, cpu: Option<f64>, service: Option<&Run>| {
        let cells = service.map_or("- | -".into(), |r| r.grouping.cells());
        let resolved = service.map_or("- | - | -".into(), |r| {
            format!(
                "{:.0}% | {:.1} s | {}",
                100.0 * r.grouping.decisions / r.grouping.accepted.max(1.0),
                r.drain_secs,
                us(r.cpu_per_resolved)
            )
        });
        details.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {cells} | {} | {resolved} |\n",
            t.per_sec(),
            t.ok,
            t.failed,
            us(cpu),
        ));
    };
    line("baseline (before)", before, before_cpu, None);
    let mut service = |name: &str, r: Run| line(name, r.got, r.cpu_per_webhook, Some(&r));
    service("presync, SQLite", sqlite);
    service("presync, SQLite, defer_for_ms = 0", never_defers);
    service("presync, SQLite, synchronous = normal", normal);
    if let Some(pg) = pg {
        service("presync, PostgreSQL", pg);
    }
    line("baseline (after)", after, after_cpu, None);
    details.push_str(&format!(
        "\nWhat a webhook costs the service, SQLite, at a steady {rate}/s (open loop, {n} \
         webhooks of the same kind, a load it keeps up with): its CPU time from the first \
         webhook until the last was resolved ({drain:.2} s after it was sent), per webhook, by \
         the threads that spent it. Tokio's workers run HTTP, parsing, the handler and the \
         pipeline's own code; each SQLite connection runs on a thread of its own (the intake's \
         and the store's).\n\n\
         | Threads | CPU per webhook |\n|---|---|\n\
         | tokio workers | {t:.1} µs |\n| SQLite connections | {q:.1} µs |\n| other | {o:.1} µs |\n\
         | all | {a:.1} µs |\n",
        rate = cost.rate,
        n = cost.webhooks,
        drain = cost.drain_secs,
        t = cost.per_webhook.tokio,
        q = cost.per_webhook.sqlite,
        o = cost.per_webhook.other,
        a = cost.per_webhook.total(),
    ));
    if postgres.is_none() {
        details.push_str(
            "\nPostgreSQL skipped: give `--postgres URL` or set `PRESYNC_TEST_POSTGRES_URL`.\n",
        );
    }
    Ok(Outcome {
        figure: Figure::Ingest,
        rows,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields read are the CPU times: this process's reading grows while it computes.
    #[test]
    fn a_process_cpu_time_grows_while_it_computes() {
        let pid = std::process::id();
        let start = cpu_secs(pid).expect("this process has a /proc entry");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_secs(pid).unwrap() < start + 0.05 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time did not grow"
            );
        }
        assert_eq!(per_request(Some(1.0), Some(1.5), 1_000.0), Some(500.0));
        assert_eq!(per_request(Some(1.0), None, 1_000.0), None);
        assert_eq!(per_request(Some(1.0), Some(1.5), 0.0), None);
    }
}
