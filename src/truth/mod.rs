//! The people's truth: what each system should show at each moment, from the simulators' own
//! records of what the people did (and what D365's own automation did), and each service's
//! documented behaviour. The soak and the demo check presync against it; none of it comes from
//! presync.
//!
//! - [`replay`]: the rules presync promises, applied to one representative's record.
//! - [`checks`]: every system's final state, every write presync made, and every conversation
//!   the simulated router offered, each against the truth.

pub mod checks;
pub mod evidence;
pub mod latency;
pub mod offers;
pub mod replay;
pub(crate) mod timeline;

use std::collections::HashMap;

use presync_engine::Millis;

pub use replay::{RepRecord, RepTruth, Rules};
pub use timeline::Timeline;

use crate::harness::Harness;

/// The truth of every representative of a harness, by index.
#[derive(Debug)]
pub struct Truth {
    pub reps: Vec<RepTruth>,
    pub rules: Rules,
}

impl Truth {
    /// Replay the simulators' records of `h` from `start` on: every representative starts
    /// signed in to both systems and Available then.
    pub fn of(h: &Harness, rules: Rules, start: Millis) -> Truth {
        let d365 = h.dv.changes();
        // Every edit of the people's Teams sources (theirs, and presync's writes, whether or not
        // Teams showed a change), and what time alone changed (fades, expiries).
        let mut teams = h.graph.edits();
        teams.extend(
            h.graph
                .changes()
                .into_iter()
                .filter(|c| c.cause == presync_teams::sim::ChangeCause::Timer),
        );
        teams.sort_by_key(|c| c.at);
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
        let mut records: Vec<RepRecord> = h.reps.iter().map(|_| RepRecord::default()).collect();
        for c in &d365 {
            if let Some(&i) = by_agent.get(&c.agent_id.to_ascii_lowercase()) {
                records[i].d365.push(c);
            }
        }
        for c in &teams {
            if let Some(&i) = by_user.get(&c.user.to_ascii_lowercase()) {
                records[i].teams.push(c);
            }
        }
        for c in h.dv.conversation_changes() {
            if let Some(&i) = by_agent.get(&c.agent_id.to_ascii_lowercase()) {
                records[i].conversations.push((c.at_ms, c.open));
            }
        }
        // presync's reads of the people's Teams presence, and the notifications it took: when
        // it could first know of each Teams change (Teams dates none).
        for q in h.graph.requests() {
            if q.status != 200 {
                continue;
            }
            let path = q.path.to_ascii_lowercase();
            let users: Vec<String> = if path.ends_with("getpresencesbyuserid") {
                q.body
                    .as_ref()
                    .and_then(|b| b.get("ids"))
                    .and_then(|ids| ids.as_array())
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|v| v.as_str())
                            .map(str::to_ascii_lowercase)
                            .collect()
                    })
                    .unwrap_or_default()
            } else if q.method == "GET" && path.ends_with("/presence") {
                path.rsplit('/')
                    .nth(1)
                    .map(str::to_owned)
                    .into_iter()
                    .collect()
            } else {
                continue;
            };
            // presync has what it read once the answer arrives.
            let answered = q.at_ms + q.delayed_ms.unwrap_or(0);
            for u in users {
                if let Some(&i) = by_user.get(&u) {
                    records[i].reads.push((q.at_ms, answered));
                }
            }
        }
        // A notification tells presync the state only when it carries it (resource data); a
        // basic one only makes it read.
        for n in h.graph.notifications() {
            let user = n.user_id.as_deref().map(str::to_ascii_lowercase);
            let carries_the_state = n.body.contains("encryptedContent");
            if let Some(&i) = user
                .as_ref()
                .and_then(|u| by_user.get(u))
                .filter(|_| n.accepted && carries_the_state)
            {
                records[i].notified.push(n.at_ms);
            }
        }
        for r in &mut records {
            r.reads.sort_unstable();
            r.notified.sort_unstable();
        }
        let reps = records
            .iter()
            .map(|r| replay::replay(r, &rules, start))
            .collect();
        Truth { reps, rules }
    }

    /// Representatives a hold holds at the end.
    pub fn held(&self) -> usize {
        self.reps.iter().filter(|r| *r.held.last()).count()
    }

    /// Genuine changes in D365 and in Teams, over every representative.
    pub fn genuine(&self) -> (u64, u64) {
        self.reps
            .iter()
            .fold((0, 0), |(d, t), r| (d + r.genuine.0, t + r.genuine.1))
    }
}
