//! Figure 2, end-to-end latency: from a Dataverse webhook sent to presync to the `setPresence`
//! it causes arriving at the Teams simulator (its receive time, [`RecordedRequest::received`]),
//! at 100 and at 1,000 events per second, open loop. Each event is a different representative
//! going Busy, so each causes exactly one write and the write names whose event it was.
//!
//! [`RecordedRequest::received`]: presync_teams::sim::RecordedRequest::received

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::load::{self, Sent};
use super::webhook::Source;
use super::{quantile, set_presence, unthrottled, Figure, Outcome, Row, Scale};

const GOAL_P99_MS: f64 = 20.0;

/// Latencies (ms) of one paced run, and how many events got no write.
struct Run {
    rate: u32,
    /// The setting under test, appended to the figure's name ("" for the defaults).
    label: &'static str,
    latencies: Vec<f64>,
    missing: usize,
    failed: usize,
}

/// The user id of a `/v1.0/users/{id}/presence/setPresence` path.
fn user_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    parts.find(|p| *p == "users")?;
    parts.next()
}

/// Send `count` events at `rate`/s starting with agent `first`; wait for their writes.
async fn paced(
    source: &Source,
    base: &str,
    rate: u32,
    count: u64,
    first: usize,
) -> anyhow::Result<Run> {
    let graph = &source.harness.graph;
    let target = source.target(base);
    let sent: Vec<Sent> = load::paced(&target, source.busy_from(first), rate, count).await?;
    let aad = |s: &Sent| {
        source.agents[(first + s.seq as usize) % source.agents.len()]
            .aad
            .clone()
    };
    let wanted: HashMap<String, Instant> = sent
        .iter()
        .filter(|s| s.ok)
        .map(|s| (aad(s), s.at))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let arrived = loop {
        let mut arrived: HashMap<String, Instant> = HashMap::new();
        for r in set_presence(graph) {
            if let Some(user) = user_of(&r.path).filter(|u| wanted.contains_key(*u)) {
                arrived.entry(user.to_owned()).or_insert(r.received);
            }
        }
        if arrived.len() == wanted.len() || Instant::now() > deadline {
            break arrived;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut latencies: Vec<f64> = wanted
        .iter()
        .filter_map(|(user, at)| {
            let got = arrived.get(user)?;
            Some(got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Run {
        rate,
        label: "",
        missing: wanted.len() - latencies.len(),
        failed: sent.len() - wanted.len(),
        latencies,
    })
}

fn row(run: &Run) -> Row {
    let p99 = quantile(&run.latencies, 0.99);
    let goal = (run.rate >= 1_000 && run.label.is_empty()).then_some(GOAL_P99_MS);
    Row {
        name: format!("Latency at {}/s{}", run.rate, run.label),
        measured: format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            quantile(&run.latencies, 0.5),
            p99,
            quantile(&run.latencies, 1.0)
        ),
        reference: "-".into(),
        ratio: "-".into(),
        goal: goal.map_or("-".into(), |g| format!("p99 < {g} ms")),
        met: goal.map(|g| p99 < g && run.missing == 0 && run.failed == 0),
    }
}

pub async fn run(scale: Scale) -> anyhow::Result<Outcome> {
    let secs: u64 = scale.pick(10, 3);
    let rates = [100u32, 1_000];
    let reps = rates
        .iter()
        .map(|r| *r as usize * secs as usize)
        .sum::<usize>()
        + 1;
    let mut runs = Vec::new();
    // The defaults, then the opt-in that does not wait for the disk at each commit.
    for (label, database_toml) in [
        ("", ""),
        (
            ", sqlite_synchronous = normal (opt-in)",
            super::SQLITE_NORMAL,
        ),
    ] {
        let mut options = unthrottled(reps);
        options.database_toml = database_toml.to_owned();
        let source = Source::prepare(&options).await?;
        let instance = super::serve(&source.harness).await?;
        // Agent 0 carries the captured event; the runs use the others, each once.
        let mut first = 1;
        for rate in rates {
            let count = u64::from(rate) * secs;
            let mut run = paced(&source, &instance.url, rate, count, first).await?;
            run.label = label;
            runs.push(run);
            first += count as usize;
        }
        instance.kill();
    }
    let mut details = format!(
        "Open-loop load: one authenticated webhook started every 1/rate s for {secs} s, each a \
         different representative (of {reps}) going Busy in Dataverse, sent straight to a \
         spawned `presync run` (SQLite). Latency is from the moment the POST is started (so it \
         includes the acknowledgement) to the Teams simulator receiving the `setPresence` for that \
         user. Simulator throttles and presync's own limits are set out of the way: this figure \
         is the pipeline's own latency (the burst figure is the one under real limits). Run \
         twice, each on a new service and database: with the defaults (`sqlite_synchronous = \
         \"full\"`, every commit waits for the disk), then with the opt-in `normal`.\n\n\
         | Rate | events | p50 ms | p90 ms | p99 ms | max ms | no write within 30 s | not 2xx |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for r in &runs {
        let q = |p| quantile(&r.latencies, p);
        details.push_str(&format!(
            "| {}/s{} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            r.rate,
            r.label,
            r.latencies.len() + r.missing + r.failed,
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            r.missing,
            r.failed
        ));
    }
    Ok(Outcome {
        figure: Figure::Latency,
        rows: runs.iter().map(row).collect(),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_read_from_a_set_presence_path() {
        assert_eq!(
            user_of("/v1.0/users/aad-1/presence/setPresence"),
            Some("aad-1")
        );
        assert_eq!(user_of("/v1.0/communications/getPresencesByUserId"), None);
    }
}
