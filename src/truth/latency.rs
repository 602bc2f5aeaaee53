//! How long presync took to follow the people: for each change of what a system should show
//! that it did not show by itself (a change made elsewhere), the time until presync's write made
//! it show that. Measured from the simulators' records, against the truth.

use presync_dataverse::sim::ChangeCause as DvCause;
use presync_engine::{Availability, Millis, NativeState};
use presync_teams::mapping::{Mapping, Pair};
use presync_teams::sim::ChangeCause as TeamsCause;

use super::timeline::{Allowed, Timeline};
use super::Truth;
use crate::harness::{Harness, APP_ID};

/// Milliseconds from each change of the truth that needed a write to the write that made the
/// system show it, per system.
#[derive(Debug, Default, Clone)]
pub struct Follow {
    pub to_d365: Vec<f64>,
    pub to_teams: Vec<f64>,
}

impl Follow {
    /// Both systems' samples, sorted.
    pub fn all(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self.to_d365.iter().chain(&self.to_teams).copied().collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

/// The samples of `h`'s day against `truth`.
pub fn follow(h: &Harness, truth: &Truth) -> Follow {
    let d365 = h.dv.changes();
    let edits = h.graph.edits();
    let mut out = Follow::default();
    for (r, t) in h.reps.iter().zip(&truth.reps) {
        // What D365 showed, and whether presync's write put it there.
        let shown: Vec<(Millis, Availability, bool)> = d365
            .iter()
            .filter(|c| c.agent_id.eq_ignore_ascii_case(&r.agent))
            .map(|c| (c.at_ms, c.base, matches!(c.cause, DvCause::Api { .. })))
            .collect();
        out.to_d365.extend(samples(&t.d365, &shown));
        // presync's part in Teams after each of its own edits.
        let ours: Vec<(Millis, Option<Availability>, bool)> = edits
            .iter()
            .filter(|c| c.user.eq_ignore_ascii_case(&r.aad))
            .filter(|c| matches!(&c.cause, TeamsCause::App { app_id } if app_id == APP_ID))
            .map(|c| {
                let part = c
                    .apps
                    .iter()
                    .find(|(app, _)| app.eq_ignore_ascii_case(APP_ID))
                    .map(|(_, (a, b))| {
                        let code = Pair::normalized(a, b).code();
                        Mapping::to_canonical(&NativeState::new(code)).availability
                    });
                (c.at, part, true)
            })
            .collect();
        out.to_teams.extend(samples(&t.session, &ours));
    }
    out
}

/// For each point of `line` the system did not already satisfy, the time until the first
/// write of presync's (`by_presync`) that showed an allowed value, before the next point.
fn samples<T: Clone + PartialEq>(
    line: &Timeline<Allowed<T>>,
    shown: &[(Millis, T, bool)],
) -> Vec<f64> {
    let points = line.points();
    let mut out = Vec::new();
    for (i, (at, allowed)) in points.iter().enumerate().skip(1) {
        let next = points.get(i + 1).map_or(Millis::MAX, |(t, _)| *t);
        let before = shown.partition_point(|(t, _, _)| *t <= *at);
        let already = before
            .checked_sub(1)
            .is_some_and(|j| allowed.contains(&shown[j].1));
        if already {
            continue;
        }
        if let Some((t, _, _)) = shown[before..]
            .iter()
            .take_while(|(t, _, _)| *t < next)
            .find(|(_, v, ours)| *ours && allowed.contains(v))
        {
            out.push((t - at) as f64);
        }
    }
    out
}

/// The `p`th percentile of sorted samples (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `p50`, `p99`, `max` and `samples` of the samples, in ms.
pub fn summary(samples: &[f64]) -> serde_json::Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50": percentile(&sorted, 50.0).round(),
        "p99": percentile(&sorted, 99.0).round(),
        "max": sorted.last().copied().unwrap_or(0.0).round(),
        "samples": sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Availability::*;

    #[test]
    fn a_change_the_system_needed_a_write_for_is_timed_to_that_write() {
        let mut line = Timeline::new(0, Allowed::one(Available));
        line.set(100, Allowed::one(Busy)); // written at 130
        line.set(200, Allowed::one(Away)); // the system's own change: no sample
        line.set(300, Allowed::one(Available)); // never written before the next point
        line.set(400, Allowed::one(Busy));
        let shown = [
            (0, Available, false),
            (130, Busy, true),
            (200, Away, false),
            (450, Busy, true),
        ];
        assert_eq!(samples(&line, &shown), [30.0, 50.0]);
    }
}
