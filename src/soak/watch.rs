//! What a soak shows while it plays: a progress line every 10 s ([`Lines`]), or whatever a
//! [`Watch`] of the caller's draws (the demo's live table).

use std::time::Duration;

use presync_engine::Millis;

use super::chaos::Injected;
use super::people::Activity;
use crate::harness::Harness;

/// Where the day is.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub elapsed: Duration,
    pub run_for: Duration,
    /// When the truth starts (ms since the epoch).
    pub start: Millis,
    pub done: Activity,
    pub injected: Injected,
}

impl Progress {
    /// The people's actions, conversations and the faults so far, on one line.
    pub(crate) fn line(&self) -> String {
        let (d, i) = (&self.done, &self.injected);
        format!(
            "{} D365 and {} Teams actions, {} conversations; kills {}, 429 {}, 5xx {}, slow {}, \
             timeouts {}, dropped {}, duplicated {}, reordered {}",
            d.d365,
            d.teams,
            d.conversations,
            i.kills,
            i.rate_limited,
            i.server_errors,
            i.slow,
            i.timeouts,
            i.dropped,
            i.duplicated,
            i.reordered
        )
    }
}

/// Sees a soak's day as it goes.
pub(crate) trait Watch: Send {
    /// How often [`Watch::tick`] is called during the activity.
    fn every(&self) -> Duration;
    /// The harness is up and presync knows everyone: the activity starts.
    fn begin(&mut self, h: &Harness, instances: usize, database: &str, duration: u64);
    fn tick(&mut self, h: &Harness, progress: &Progress);
    /// The activity is over; the soak settles and checks.
    fn settling(&mut self);
}

/// The soak's own: a line at the start, every 10 s, and when it settles.
#[derive(Debug, Default)]
pub(crate) struct Lines;

impl Watch for Lines {
    fn every(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn begin(&mut self, h: &Harness, instances: usize, database: &str, duration: u64) {
        eprintln!(
            "presync soak: {} reps, {instances} instance(s) on {database}, {duration} s",
            h.reps.len()
        );
    }

    fn tick(&mut self, _: &Harness, p: &Progress) {
        eprintln!("  {:>4.0} s: {}", p.elapsed.as_secs_f64(), p.line());
    }

    fn settling(&mut self) {
        eprintln!("presync soak: activity over; settling");
    }
}
