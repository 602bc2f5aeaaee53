//! Figure 3, burst under real limits: every representative changes presence in Dynamics 365
//! within a second while the Teams simulator enforces Graph's throttle, once at the 10,000
//! requests per 30 s Graph documents for presence since September 2025 and once at the older
//! 1,500. The time until Teams shows every change is compared with the floor (writes needed
//! divided by the limit), and the 429s the simulator answered are counted against the throttle
//! windows.

use std::time::{Duration, Instant};

use presync_dataverse::mapping::builtin;

use super::{Figure, Outcome, Row, Scale};
use crate::harness::{Harness, Ingress, Options};

const GOAL_RATIO: f64 = 1.1;

fn options(reps: usize, limit: u32, window: Duration) -> Options {
    let mut o = Options::new(reps);
    // Passes only when a figure asks for one.
    o.reconcile_on_start = false;
    o.ingress = Ingress::Polling { secs: 3_600 };
    o.graph_limit = (limit, window);
    let secs = window.as_secs();
    // presync told the limit it must live within, as an operator would (its Teams writes are
    // paced to it too).
    o.teams_graph_toml = format!("rate_limit = {limit}\nrate_window_secs = {secs}");
    o.log_level = "error".into();
    o
}

/// How many representatives Teams shows Busy.
fn busy_in_teams(h: &Harness) -> usize {
    h.reps
        .iter()
        .filter(|r| h.graph.presence_internal(&r.aad).0 == "Busy")
        .count()
}

pub async fn run(scale: Scale) -> anyhow::Result<Outcome> {
    let reps = scale.pick(10_000, 600);
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for (limit, window) in scale.pick([(10_000, 30), (1_500, 30)], [(1_000, 3), (150, 3)]) {
        let (r, d) = burst(reps, limit, Duration::from_secs(window)).await?;
        rows.extend(r);
        details.push(d);
    }
    Ok(Outcome {
        figure: Figure::Burst,
        rows,
        details: details.join(" "),
    })
}

/// One burst of `reps` changes under a limit of `limit` requests per `window`.
async fn burst(reps: usize, limit: u32, window: Duration) -> anyhow::Result<(Vec<Row>, String)> {
    let h = Harness::start(&options(reps, limit, window), 1).await?;
    let instance = super::serve(&h).await?;
    let floor = reps as f64 / f64::from(limit) * window.as_secs_f64();
    let seen_before = h.graph.requests().len();
    let started = Instant::now();
    for r in &h.reps {
        h.dv.system_sets(&r.agent, builtin::BUSY);
    }
    let changed_in = started.elapsed();
    let deadline = started + Duration::from_secs_f64(floor * 3.0 + 30.0);
    let mut busy = 0;
    while Instant::now() < deadline {
        busy = busy_in_teams(&h);
        if busy == reps {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = started.elapsed().as_secs_f64();
    instance.kill();
    let during = &h.graph.requests()[seen_before..];
    let throttled = during.iter().filter(|r| r.status == 429).count();
    let writes = during
        .iter()
        .filter(|r| r.path.ends_with("/presence/setPresence"))
        .count();
    let windows = (converged / window.as_secs_f64()).ceil() as usize;
    let ratio = converged / floor;
    let all = busy == reps;
    let rows = vec![
        Row {
            name: format!(
                "Burst of {reps} at {limit} / {} s, time to converge",
                window.as_secs()
            ),
            measured: if all {
                format!("{converged:.1} s")
            } else {
                format!("{busy} of {reps} after {converged:.0} s")
            },
            reference: format!("floor {floor:.1} s"),
            ratio: format!("{ratio:.2}"),
            goal: format!("<= {GOAL_RATIO} x floor"),
            met: Some(all && ratio <= GOAL_RATIO),
        },
        Row {
            name: format!("Burst at {limit} / {} s, 429s received", window.as_secs()),
            measured: throttled.to_string(),
            reference: format!("{windows} throttle windows"),
            ratio: format!("{:.2}", throttled as f64 / windows.max(1) as f64),
            goal: "<= 1 per window".into(),
            met: Some(throttled <= windows),
        },
    ];
    let details = format!(
        "{reps} representatives change to Busy in the Dataverse simulator in {:.2} s (it delivers \
         its webhooks one at a time, as Dataverse's webhook step does, through the load balancer \
         to a spawned `presync run` on SQLite). The Teams simulator throttles at {limit} requests \
         per {} s, sliding, and answers 429 with Retry-After beyond. presync is configured with \
         the same limit (`[teams.graph] rate_limit`, which paces its Teams writes too). \
         Converged = Teams shows every representative Busy, timed from the first change. Floor = \
         {reps} writes / {limit} per {} s = {floor:.1} s. The Teams simulator received {} \
         requests meanwhile, {writes} of them `setPresence`, {throttled} answered 429.",
        changed_in.as_secs_f64(),
        window.as_secs(),
        window.as_secs(),
        during.len(),
    );
    Ok((rows, details))
}
