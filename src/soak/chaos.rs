//! The soak's faults: what the simulators answer badly, and SIGKILLs of the instances.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::harness::{self, Harness, Instance};

/// How often each fault happens, per minute of activity (per system where both have it).
#[derive(Debug, Clone, Args)]
pub(super) struct FaultRates {
    /// 429 with a Retry-After of 1 to 3 s.
    #[arg(long, default_value_t = 4.0)]
    rate_limited_per_min: f64,
    /// 500, 502, 503 or 504.
    #[arg(long, default_value_t = 4.0)]
    server_errors_per_min: f64,
    /// A response delayed 0.3 to 1.5 s.
    #[arg(long, default_value_t = 3.0)]
    slow_per_min: f64,
    /// A response delayed past presync's request timeout (the operation itself happens).
    #[arg(long, default_value_t = 2.0)]
    timeouts_per_min: f64,
    /// A webhook and a notification never sent.
    #[arg(long, default_value_t = 3.0)]
    dropped_per_min: f64,
    /// A webhook and a notification sent twice.
    #[arg(long, default_value_t = 6.0)]
    duplicated_per_min: f64,
    /// A few webhooks and notifications sent out of order.
    #[arg(long, default_value_t = 3.0)]
    reordered_per_min: f64,
    /// Mean seconds between two SIGKILLs of an instance; 0 never kills.
    #[arg(long, default_value_t = 45.0)]
    pub(super) kill_every_secs: f64,
}

impl FaultRates {
    /// The demo's faults: a few of each that presync absorbs, no time-outs, no kills.
    pub(super) fn gentle() -> FaultRates {
        FaultRates {
            rate_limited_per_min: 2.0,
            server_errors_per_min: 2.0,
            slow_per_min: 2.0,
            timeouts_per_min: 0.0,
            dropped_per_min: 2.0,
            duplicated_per_min: 4.0,
            reordered_per_min: 2.0,
            kill_every_secs: 0.0,
        }
    }
}

/// presync's request timeout toward both systems during a soak, so that timeouts happen.
pub(super) const REQUEST_TIMEOUT_MS: u64 = 2_000;

/// What was injected, counted.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Injected {
    pub(crate) rate_limited: u64,
    pub(super) server_errors: u64,
    pub(super) slow: u64,
    pub(super) timeouts: u64,
    pub(super) dropped: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) kills: u64,
    pub(super) restarts: u64,
    pub(super) crashes: u64,
    /// When no instance was up: (from the kill, to the restarted one's readiness).
    #[serde(skip)]
    pub(crate) outages: Vec<(presync_engine::Millis, presync_engine::Millis)>,
}

/// The instances, by index; `None` while one is down.
pub(super) type Fleet = Arc<tokio::sync::Mutex<Vec<Option<Instance>>>>;

/// Inject faults at their rates, until aborted. Once a second, each kind happens with
/// probability rate / 60.
pub(super) async fn inject(
    h: Arc<Harness>,
    rates: FaultRates,
    injected: Arc<Mutex<Injected>>,
    seed: u64,
) {
    use presync_dataverse::sim::Fault as DvFault;
    use presync_teams::sim::Fault as GraphFault;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS + 1_000);
    loop {
        tick.tick().await;
        let mut hit = |rate: f64| rng.random::<f64>() < rate / 60.0;
        let (a, b, c, d, e, f, g) = (
            hit(rates.rate_limited_per_min),
            hit(rates.server_errors_per_min),
            hit(rates.slow_per_min),
            hit(rates.timeouts_per_min),
            hit(rates.dropped_per_min),
            hit(rates.duplicated_per_min),
            hit(rates.reordered_per_min),
        );
        let retry_after = rng.random_range(1..=3u64);
        let status = [500u16, 502, 503, 504][rng.random_range(0..4)];
        let slow = Duration::from_millis(rng.random_range(300..1_500));
        let Ok(mut n) = injected.lock() else { return };
        let n = &mut *n;
        // Each kind in both systems at once: (drawn, D365's fault, Teams's, its count).
        let kinds = [
            (
                a,
                DvFault::RateLimited {
                    retry_after_secs: retry_after,
                },
                GraphFault::RateLimited {
                    retry_after: retry_after as f64,
                },
                &mut n.rate_limited,
            ),
            (
                b,
                DvFault::ServerError(status),
                GraphFault::ServerError(status),
                &mut n.server_errors,
            ),
            (c, DvFault::Slow(slow), GraphFault::Slow(slow), &mut n.slow),
            (
                d,
                DvFault::Slow(timeout),
                GraphFault::Slow(timeout),
                &mut n.timeouts,
            ),
            (
                e,
                DvFault::DropWebhooks(1),
                GraphFault::DropNotifications(1),
                &mut n.dropped,
            ),
            (
                f,
                DvFault::DuplicateWebhooks(1),
                GraphFault::DuplicateNotifications(1),
                &mut n.duplicated,
            ),
            (
                g,
                DvFault::ReorderWebhooks(3),
                GraphFault::ReorderNotifications(1),
                &mut n.reordered,
            ),
        ];
        for (drawn, dv, graph, count) in kinds {
            if drawn {
                h.dv.inject(dv);
                h.graph.inject(graph);
                *count += 2;
            }
        }
    }
}

/// Kill a random instance with SIGKILL every `mean` seconds on average (0: never), restart it
/// after a moment, and restart any instance that died on its own (counted as a crash).
pub(super) async fn kill_and_restart(
    h: Arc<Harness>,
    fleet: Fleet,
    mean: f64,
    injected: Arc<Mutex<Injected>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_kill = (mean > 0.0)
        .then(|| Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean));
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut f = fleet.lock().await;
        for (i, slot) in f.iter_mut().enumerate() {
            if slot.as_mut().is_some_and(|inst| inst.exited().is_some()) {
                *slot = None;
                if let Ok(mut n) = injected.lock() {
                    n.crashes += 1;
                }
                eprintln!("  instance {i} exited on its own; restarting it");
                if let Ok(inst) = h.spawn(i) {
                    let _ = harness::ready(&inst.url, Duration::from_secs(60)).await;
                    *slot = Some(inst);
                }
            }
        }
        let Some(at) = next_kill else { continue };
        if Instant::now() < at {
            continue;
        }
        let i = rng.random_range(0..f.len());
        let mut killed_at = None;
        if let Some(inst) = f[i].take() {
            inst.kill();
            if let Ok(mut n) = injected.lock() {
                n.kills += 1;
            }
            killed_at = Some(super::wall_ms());
        }
        // No other instance takes the work meanwhile.
        let alone = f.iter().all(Option::is_none);
        // Down for a moment, as a supervisor's restart takes.
        tokio::time::sleep(Duration::from_secs_f64(rng.random_range(0.2..2.0))).await;
        if let Ok(inst) = h.spawn(i) {
            let _ = harness::ready(&inst.url, Duration::from_secs(60)).await;
            f[i] = Some(inst);
            if let Ok(mut n) = injected.lock() {
                n.restarts += 1;
                if let (Some(at), true) = (killed_at, alone) {
                    n.outages.push((at, super::wall_ms()));
                }
            }
        }
        next_kill =
            Some(Instant::now() + Duration::from_secs_f64(rng.random_range(0.5..1.5) * mean));
    }
}
