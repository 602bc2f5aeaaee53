//! The echo audit: every write presync made, checked against what the people genuinely did.

use std::collections::HashMap;

use presync_dataverse::mapping::Catalog;
use presync_engine::{Availability, NativeState};
use presync_teams::mapping::{Mapping, Pair};
use serde_json::json;

use super::people::{Change, Sys, Truth};
use crate::harness::Harness;

/// presync's writes into one system, audited against the genuine changes in the other.
#[derive(Debug, Default)]
pub(super) struct WriteAudit {
    /// Writes answered 2xx.
    writes: u64,
    /// Writes no genuine change in the other system since presync's previous write justifies.
    pub(super) unjustified: u64,
    /// Writes of the target's own genuine state back to it (a repair after a race).
    restores: u64,
    /// Genuine changes in the other system, each representative's initial state included.
    changes: u64,
    examples: Vec<String>,
    /// Representatives with an unjustified write.
    pub(super) flagged: Vec<usize>,
}

impl WriteAudit {
    pub(super) fn amplification(&self) -> f64 {
        if self.changes == 0 {
            return if self.writes == 0 { 0.0 } else { f64::INFINITY };
        }
        self.writes as f64 / self.changes as f64
    }

    pub(super) fn json(&self) -> serde_json::Value {
        json!({
            "writes": self.writes,
            "unjustified": self.unjustified,
            "restores_of_the_targets_own_state": self.restores,
            "genuine_changes_in_the_other_system": self.changes,
            "amplification": (self.amplification() * 1000.0).round() / 1000.0,
            "unjustified_examples": self.examples,
        })
    }
}

/// What presync wrote into a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Set(Availability),
    /// presync ended its own Teams session (Offline, or its contribution withdrawn).
    Withdraw,
}

/// A successful presync write: (representative, what it wrote, its index in the requests).
type Write = (usize, Wrote, usize);

/// Audit every write presync made into D365 (`CCaaS_ModifyAgentPresence`) and Teams (presence
/// actions) against the genuine changes.
pub(super) fn audit_writes(h: &Harness, truth: &Truth) -> Vec<(&'static str, WriteAudit)> {
    let catalog = Catalog::builtin();
    let index_of = |ids: Vec<&str>| -> HashMap<String, usize> {
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| (id.to_owned(), i))
            .collect()
    };
    let by_agent = index_of(h.reps.iter().map(|r| r.agent.as_str()).collect());
    let by_aad = index_of(h.reps.iter().map(|r| r.aad.as_str()).collect());
    let ok = |status: u16| (200..300).contains(&status);
    let d365: Vec<Write> =
        h.dv.requests()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.path.ends_with("CCaaS_ModifyAgentPresence") && ok(r.status))
            .filter_map(|(i, r)| {
                let body = r.body.as_ref()?;
                let rep = *by_agent.get(body.get("AgentId")?.as_str()?)?;
                let presence = body.get("PresenceId")?.as_str()?;
                Some((rep, Wrote::Set(catalog.canonical(presence)?), i))
            })
            .collect();
    let teams: Vec<Write> = h
        .graph
        .requests()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == "POST" && r.path.contains("/presence/") && ok(r.status))
        .filter_map(|(i, r)| {
            // /v1.0/users/{id}/presence/{action}
            let mut parts = r.path.rsplit('/');
            let action = parts.next()?;
            let rep = *by_aad.get(parts.nth(1)?)?;
            let wrote = if action.starts_with("clear") {
                Wrote::Withdraw
            } else {
                let body = r.body.as_ref()?;
                let pair = Pair::new(
                    body.get("availability")?.as_str()?,
                    body.get("activity")?.as_str()?,
                );
                Wrote::Set(Mapping::to_canonical(&NativeState::new(pair.code())).availability)
            };
            Some((rep, wrote, i))
        })
        .collect();
    vec![
        ("d365", audit(&d365, truth, Sys::Teams, |c| c.dv_at)),
        ("teams", audit(&teams, truth, Sys::D365, |c| c.graph_at)),
    ]
}

/// Audit `writes` into one system against the genuine changes in `source`, the other system;
/// `at` places a change among the target's requests (a change recorded at `c` happened before
/// request `c` arrived).
///
/// presync's writes of each representative must follow the source's genuine states in their
/// order: a write of availability A is justified by the first state A the source took at or
/// after the state the previous write followed, and before the write arrived. Skipping states is
/// fine (changes coalesced), repeating the followed one is fine (a retry, a keep-alive), going
/// back is not: that is a stale state overwriting a newer one, or presync's own write coming
/// back as an echo. A write of the target's own genuine state since presync's previous write
/// there is a restore after a race, counted apart. A withdrawal of presync's own Teams session writes no state and
/// cannot carry an echo.
fn audit(
    writes: &[Write],
    truth: &Truth,
    source: Sys,
    at: impl Fn(&Change) -> usize,
) -> WriteAudit {
    let target = match source {
        Sys::D365 => Sys::Teams,
        Sys::Teams => Sys::D365,
    };
    let mut a = WriteAudit {
        changes: truth.changes.iter().filter(|c| c.system == source).count() as u64,
        ..WriteAudit::default()
    };
    // Per representative and system: (request index, state after) of each genuine change.
    let mut timeline: HashMap<(usize, Sys), Vec<(usize, Availability)>> = HashMap::new();
    for c in &truth.changes {
        timeline
            .entry((c.rep, c.system))
            .or_default()
            .push((at(c), c.state));
    }
    let empty = Vec::new();
    // Per representative: where in the source's sequence of states presync's writes have got.
    let mut followed: HashMap<usize, usize> = HashMap::new();
    let mut previous: HashMap<usize, usize> = HashMap::new();
    for &(rep, wrote, index) in writes {
        a.writes += 1;
        let source_line = timeline.get(&(rep, source)).unwrap_or(&empty);
        let from = followed.get(&rep).copied().unwrap_or(0);
        // The source's states from the one presync last followed on, that had happened when
        // this write arrived.
        let candidates = source_line[from.min(source_line.len())..]
            .iter()
            .take_while(|(c, _)| *c <= index);
        let next = candidates
            .clone()
            .position(|(_, s)| wrote == Wrote::Set(*s))
            .map(|k| from + k);
        let justified = match (wrote, next) {
            // A withdrawal writes no state, so it cannot carry an echo.
            (Wrote::Withdraw, _) => true,
            (_, Some(k)) => {
                followed.insert(rep, k);
                true
            }
            // The target's own genuine state, put back: after a race with one of presync's
            // writes whose outcome was unknown, presync restores what the person set there.
            (Wrote::Set(v), None) => {
                let target_line = timeline.get(&(rep, target)).unwrap_or(&empty);
                let since = previous.get(&rep).map_or(0, |&p| {
                    target_line.iter().rposition(|(c, _)| *c <= p).unwrap_or(0)
                });
                let restored = target_line[since.min(target_line.len())..]
                    .iter()
                    .take_while(|(c, _)| *c <= index)
                    .any(|(_, s)| *s == v);
                a.restores += u64::from(restored);
                restored
            }
        };
        if !justified {
            a.unjustified += 1;
            a.flagged.push(rep);
            if a.examples.len() < 10 {
                let shown: Vec<Availability> = candidates.map(|(_, s)| *s).collect();
                a.examples.push(format!(
                    "rep-{rep:06} got {wrote:?} (request {index}); the other system's states since the last one followed: {shown:?}"
                ));
            }
        }
        previous.insert(rep, index);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use Availability::{Available, Busy, DoNotDisturb, Offline};

    /// Rep 0's genuine changes: (system, state, index among the D365 requests).
    fn truth(changes: &[(Sys, Availability, usize)]) -> Truth {
        let mut t = Truth::new(1);
        t.changes
            .extend(changes.iter().map(|&(system, state, at)| Change {
                rep: 0,
                system,
                state,
                dv_at: at,
                graph_at: 0,
            }));
        t
    }

    fn d365(writes: &[(Availability, usize)], t: &Truth) -> WriteAudit {
        let writes: Vec<Write> = writes.iter().map(|&(a, i)| (0, Wrote::Set(a), i)).collect();
        audit(&writes, t, Sys::Teams, |c| c.dv_at)
    }

    #[test]
    fn a_write_of_a_genuine_change_in_the_other_system_is_justified() {
        let t = truth(&[(Sys::Teams, Busy, 5), (Sys::Teams, Available, 9)]);
        let a = d365(&[(Busy, 6), (Available, 10)], &t);
        assert_eq!((a.writes, a.unjustified, a.restores), (2, 0, 0));
    }

    #[test]
    fn a_state_the_other_system_never_showed_since_the_last_write_is_an_echo() {
        // Teams was Busy, presync wrote it, Teams went back to Available and presync wrote that;
        // then Busy again, with no change in Teams: presync's own Busy came back.
        let t = truth(&[(Sys::Teams, Busy, 5), (Sys::Teams, Available, 9)]);
        let a = d365(&[(Busy, 6), (Available, 10), (Busy, 14)], &t);
        assert_eq!(a.unjustified, 1);
        assert_eq!(a.flagged, [0]);
    }

    #[test]
    fn delayed_writes_that_follow_the_states_in_order_are_justified() {
        // Teams: Available (meeting over), Offline (signed out), Available (back), all before
        // presync wrote any of them: three late writes in the same order.
        let t = truth(&[
            (Sys::Teams, Busy, 2),
            (Sys::Teams, Available, 5),
            (Sys::Teams, Offline, 5),
            (Sys::Teams, Available, 6),
        ]);
        let a = d365(
            &[(Busy, 3), (Available, 7), (Offline, 8), (Available, 9)],
            &t,
        );
        assert_eq!(a.unjustified, 0);
    }

    #[test]
    fn a_state_written_after_a_newer_one_is_flagged() {
        // Teams went Busy, then Available; presync wrote both, then the older Busy again.
        let t = truth(&[(Sys::Teams, Busy, 2), (Sys::Teams, Available, 3)]);
        assert_eq!(
            d365(&[(Busy, 4), (Available, 5), (Busy, 6)], &t).unjustified,
            1
        );
    }

    #[test]
    fn changes_coalesced_into_one_write_justify_any_of_their_states() {
        let t = truth(&[(Sys::Teams, Busy, 5), (Sys::Teams, DoNotDisturb, 6)]);
        assert_eq!(d365(&[(Busy, 8)], &t).unjustified, 0);
        assert_eq!(d365(&[(DoNotDisturb, 8)], &t).unjustified, 0);
    }

    #[test]
    fn a_write_before_the_change_happened_is_not_justified_by_it() {
        // The change was made when D365 had received 7 requests: request 6 came before it.
        let t = truth(&[(Sys::Teams, Busy, 7)]);
        assert_eq!(d365(&[(Busy, 6)], &t).unjustified, 1);
    }

    #[test]
    fn a_repeat_of_a_state_still_held_is_justified_and_a_restore_is_counted_apart() {
        // A retry whose first answer was lost, or a keep-alive: Teams still shows Busy.
        let t = truth(&[(Sys::Teams, Busy, 5), (Sys::D365, DoNotDisturb, 8)]);
        let a = d365(&[(Busy, 6), (Busy, 7), (DoNotDisturb, 9)], &t);
        assert_eq!((a.restores, a.unjustified), (1, 0));
    }
}
