//! Checks against the truth: every system's final state, every write presync made, and every
//! conversation the simulated router offered.

use std::collections::HashMap;

use presync_dataverse::mapping::Catalog;
use presync_engine::store::Store;
use presync_engine::{Availability, Millis, NativeState, RepId};
use presync_teams::mapping::Mapping;
use serde_json::json;

use super::timeline::Allowed;
use super::{Timeline, Truth};
use crate::harness::{Harness, APP_ID};

fn teams_availability(availability: &str, activity: &str) -> Availability {
    Mapping::to_canonical(&NativeState::new(format!("{availability}/{activity}"))).availability
}

/// What Teams shows for a person's own state `own` (their chosen status when `own_preferred`)
/// and presync's part `ours`: with a session, the higher of the two ranks, the chosen status over
/// both; with a preferred presence, presync's over the person's client.
pub fn aggregate(
    own: Availability,
    own_preferred: bool,
    ours: Option<Availability>,
    preferred_mode: bool,
) -> Availability {
    match (ours, own_preferred, preferred_mode) {
        (None, _, _) | (Some(_), true, false) => own,
        (Some(a), _, true) => a,
        (Some(a), false, false) => {
            if a.aggregate_rank() > own.aggregate_rank() {
                a
            } else {
                own
            }
        }
    }
}

/// Representatives whose systems do not show what the truth says at the end, each with what
/// was expected and what each system showed. With a store, presync's canonical state is checked
/// too.
pub async fn final_states(
    h: &Harness,
    truth: &Truth,
    store: Option<&Store>,
) -> anyhow::Result<Vec<(usize, String)>> {
    let catalog = Catalog::builtin();
    let preferred = truth.rules.preferred_mode;
    let mut out = Vec::new();
    for (i, (r, t)) in h.reps.iter().zip(&truth.reps).enumerate() {
        let d365 =
            h.dv.presence(&r.agent)
                .and_then(|p| catalog.canonical(&p))
                .unwrap_or(Availability::Offline);
        let ours = if preferred {
            h.graph
                .preferred(&r.aad)
                .map(|(a, b)| teams_availability(&a, &b))
        } else {
            h.graph
                .session(&r.aad, APP_ID)
                .map(|s| teams_availability(&s.posted_availability, &s.posted_activity))
        };
        let (oa, ob) = h.graph.own_presence(&r.aad);
        let own = teams_availability(&oa, &ob);
        let own_preferred = !preferred && h.graph.preferred(&r.aad).is_some();
        let (a, b) = h.graph.presence(&r.aad);
        let teams = teams_availability(&a, &b);
        let want_ours = t.session.last();
        let want_teams = want_ours
            .values()
            .iter()
            .map(|w| aggregate(own, own_preferred, *w, preferred))
            .fold(None::<Allowed<Availability>>, |set, a| {
                let one = Allowed::one(a);
                Some(set.map_or(one.clone(), |s| s.or(&one)))
            })
            .unwrap_or_else(|| Allowed::one(own));
        let want = t.canonical.last();
        let presync = match store {
            Some(s) => s
                .rep_view(&RepId(r.id.clone()))
                .await?
                .canonical
                .map(|p| p.availability),
            None => Some(*want.first()),
        };
        let ok = t.d365.last().contains(&d365)
            && want_ours.contains(&ours)
            && want_teams.contains(&teams)
            && presync.is_some_and(|p| want.contains(&p));
        if !ok {
            let show = |a: Option<Availability>| a.map_or("none".to_owned(), |a| a.to_string());
            out.push((
                i,
                format!(
                    "{}: expected D365 {}, presync's Teams part {}, Teams {}, canonical {}{}; \
                     D365 {d365}, presync's Teams part {}, Teams {teams} ({a}/{b}), presync {}",
                    r.id,
                    t.d365.last(),
                    want_ours,
                    want_teams,
                    want,
                    if *t.held.last() { " (held)" } else { "" },
                    show(ours),
                    show(presync),
                ),
            ));
        }
    }
    Ok(out)
}

/// How far apart the two simulators' clocks may be when a write is placed on the truth's
/// timeline: D365's stamps never share a millisecond, so under a burst of changes they run a
/// few milliseconds ahead of the wall clock Graph stamps with, and a write answering a D365
/// change can carry a time just before that change's.
const CLOCKS_APART_MS: Millis = 20;

/// presync's writes into one system, each against the truth.
#[derive(Debug, Default)]
pub struct WriteAudit {
    /// Writes the system took.
    pub writes: u64,
    /// Writes the truth never called for after the one presync followed before: an echo sent
    /// back, a stale state over a newer one, a hold where none holds.
    pub unjustified: u64,
    /// Genuine changes in the other system (each representative's first state counts): what
    /// the writes answer.
    pub changes: u64,
    pub examples: Vec<String>,
    /// Representatives with an unjustified write.
    pub flagged: Vec<usize>,
}

impl WriteAudit {
    /// Writes per genuine change in the other system.
    pub fn amplification(&self) -> f64 {
        if self.changes == 0 {
            return if self.writes == 0 { 0.0 } else { f64::INFINITY };
        }
        self.writes as f64 / self.changes as f64
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "writes": self.writes,
            "unjustified": self.unjustified,
            "genuine_changes_in_the_other_system": self.changes,
            "amplification": (self.amplification() * 1000.0).round() / 1000.0,
            "unjustified_examples": self.examples,
        })
    }
}

/// Check `writes` (representative, when, what) into one system against `expected`: each write
/// must say a value the truth held at or after the one presync's previous write there followed,
/// and no later than the write. Skipping values is fine (changes coalesced), repeating the one
/// followed is fine (a retry, a keep-alive), going back is not.
fn audit<T: Clone + PartialEq + std::fmt::Debug>(
    writes: &[(usize, Millis, T)],
    expected: impl Fn(usize) -> Option<Timeline<Allowed<T>>>,
    changes: u64,
) -> WriteAudit {
    let mut a = WriteAudit {
        changes,
        ..WriteAudit::default()
    };
    let mut followed: HashMap<usize, usize> = HashMap::new();
    let mut timelines: HashMap<usize, Option<Timeline<Allowed<T>>>> = HashMap::new();
    for (rep, at, value) in writes {
        a.writes += 1;
        let Some(line) = timelines
            .entry(*rep)
            .or_insert_with(|| expected(*rep))
            .as_ref()
            .map(Timeline::points)
        else {
            continue;
        };
        let from = followed.get(rep).copied().unwrap_or(0);
        let by = at.saturating_add(CLOCKS_APART_MS);
        let next = line
            .iter()
            .enumerate()
            .skip(from)
            .take_while(|(_, (t, _))| *t <= by)
            .find(|(_, (_, v))| v.contains(value))
            .map(|(k, _)| k);
        match next {
            Some(k) => {
                followed.insert(*rep, k);
            }
            None => {
                a.unjustified += 1;
                if !a.flagged.contains(rep) {
                    a.flagged.push(*rep);
                }
                if a.examples.len() < 10 {
                    let since: Vec<String> = line
                        .iter()
                        .skip(from)
                        .take_while(|(t, _)| *t <= by)
                        .map(|(_, v)| v.to_string())
                        .collect();
                    a.examples.push(format!(
                        "rep {rep} was written {value:?} at {at}; the truth since the write \
                         before: {since:?}"
                    ));
                }
            }
        }
    }
    a
}

/// Every write presync made into D365 (`CCaaS_ModifyAgentPresence`, from D365's record) and into
/// Teams (presence actions of presync's application that Graph took), against the truth.
pub fn audit_writes(h: &Harness, truth: &Truth) -> Vec<(&'static str, WriteAudit)> {
    let by_agent: HashMap<String, usize> = h
        .reps
        .iter()
        .enumerate()
        .map(|(i, r)| (r.agent.to_ascii_lowercase(), i))
        .collect();
    let by_user: HashMap<String, usize> = h
        .reps
        .iter()
        .enumerate()
        .map(|(i, r)| (r.aad.to_ascii_lowercase(), i))
        .collect();
    let d365: Vec<(usize, Millis, Availability)> =
        h.dv.changes()
            .into_iter()
            .filter(|c| !c.cause.is_genuine())
            .filter_map(|c| {
                Some((
                    *by_agent.get(&c.agent_id.to_ascii_lowercase())?,
                    c.at_ms,
                    c.base,
                ))
            })
            .collect();
    let ok = |status: u16| (200..300).contains(&status);
    let teams: Vec<(usize, Millis, Option<Availability>)> = h
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/presence/") && ok(r.status))
        .filter_map(|r| {
            // /v1.0/users/{id}/presence/{action}
            let mut parts = r.path.rsplit('/');
            let action = parts.next()?;
            let rep = *by_user.get(&parts.nth(1)?.to_ascii_lowercase())?;
            let wrote = if action.starts_with("clear") {
                None
            } else {
                let body = r.body.as_ref()?;
                Some(teams_availability(
                    body.get("availability")?.as_str()?,
                    body.get("activity")?.as_str()?,
                ))
            };
            Some((rep, r.at_ms, wrote))
        })
        .collect();
    let (genuine_d365, genuine_teams) = truth.genuine();
    let reps = truth.reps.len() as u64;
    vec![
        (
            "d365",
            audit(
                &d365,
                |i| truth.reps.get(i).map(|t| t.d365.clone()),
                genuine_teams + reps,
            ),
        ),
        (
            "teams",
            audit(
                &teams,
                |i| truth.reps.get(i).map(|t| t.session.clone()),
                genuine_d365 + reps,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Availability::*;

    #[test]
    fn teams_shows_the_higher_rank_of_a_session_and_the_person_and_a_chosen_status_over_both() {
        assert_eq!(aggregate(Available, false, Some(Away), false), Available);
        assert_eq!(aggregate(Available, false, Some(Busy), false), Busy);
        assert_eq!(aggregate(Away, true, Some(Busy), false), Away);
        assert_eq!(aggregate(Busy, false, None, false), Busy);
        assert_eq!(aggregate(Available, false, Some(Away), true), Away);
    }

    #[test]
    fn writes_must_follow_the_truth_in_order() {
        let mut line = Timeline::new(0, Allowed::one(Available));
        line.set(1_000, Allowed::one(Busy));
        line.set(2_000, Allowed::one(Available));
        let expected = |_| Some(line.clone());
        let ok = audit(
            &[(0, 1_100, Busy), (0, 1_200, Busy), (0, 2_100, Available)],
            expected,
            2,
        );
        assert_eq!((ok.writes, ok.unjustified), (3, 0));
        // Busy again after Available: going back.
        let back = audit(
            &[(0, 1_100, Busy), (0, 2_100, Available), (0, 2_200, Busy)],
            expected,
            2,
        );
        assert_eq!(back.unjustified, 1);
        assert_eq!(back.flagged, vec![0]);
        // A write before the truth called for it.
        let early = audit(&[(0, 500, Busy)], expected, 2);
        assert_eq!(early.unjustified, 1);
        // One stamped a moment before the D365 change it answers: the clocks are apart.
        let skewed = audit(&[(0, 998, Busy)], expected, 2);
        assert_eq!(skewed.unjustified, 0);
    }
}
