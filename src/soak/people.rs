//! The soak's simulated people and the record of what they genuinely did.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presync_dataverse::mapping::builtin;
use presync_engine::Availability;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::harness::Harness;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Doing {
    Conversation,
    Meeting,
    TeamsDnd,
    D365Dnd,
    SignedOut,
}

impl Doing {
    /// What every system should show while the person does this.
    pub(super) fn availability(self) -> Availability {
        match self {
            Doing::Conversation | Doing::Meeting => Availability::Busy,
            Doing::TeamsDnd | Doing::D365Dnd => Availability::DoNotDisturb,
            Doing::SignedOut => Availability::Offline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Sys {
    D365,
    Teams,
}

/// A genuine change: made by a person or by D365 itself, not by presync. `at` is how many
/// requests each simulator had received when it happened, which places it among presync's
/// writes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Change {
    pub rep: usize,
    pub system: Sys,
    /// What the system genuinely shows after the change.
    pub state: Availability,
    pub dv_at: usize,
    pub graph_at: usize,
}

/// What the simulated people did.
#[derive(Debug, Default)]
pub(super) struct Truth {
    pub changes: Vec<Change>,
    /// What each person is doing now (`None`: nothing, Available everywhere).
    pub doing: Vec<Option<Doing>>,
}

impl Truth {
    /// `reps` people doing nothing yet. Each one's initial state (Available) counts as a
    /// genuine change in both systems: presync adopts it, which may take a first write (its own
    /// Teams session, for one).
    pub(super) fn new(reps: usize) -> Truth {
        let initial = (0..reps).flat_map(|rep| {
            [Sys::D365, Sys::Teams].map(|system| Change {
                rep,
                system,
                state: Availability::Available,
                dv_at: 0,
                graph_at: 0,
            })
        });
        Truth {
            changes: initial.collect(),
            doing: vec![None; reps],
        }
    }
}

/// A person who is not busy with anything starts something new this often (seconds).
const IDLE: std::ops::Range<f64> = 1.0..4.0;
/// How long something lasts (seconds).
const LENGTH: std::ops::Range<f64> = 2.0..8.0;

/// The simulated people, until aborted: one thing at a time each, every change recorded.
pub(super) async fn drive(h: Arc<Harness>, truth: Arc<Mutex<Truth>>, seed: u64, run_for: Duration) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let n = h.reps.len();
    let mut until: Vec<Instant> = (0..n)
        .map(|_| start + Duration::from_secs_f64(rng.random_range(0.0..2.0)))
        .collect();
    // What the person now does, as a genuine change in `system`.
    let record = |rep: usize, system: Sys, doing: Option<Doing>| {
        let change = Change {
            rep,
            system,
            state: doing.map_or(Availability::Available, Doing::availability),
            dv_at: h.dv.request_count(),
            graph_at: h.graph.request_count(),
        };
        if let Ok(mut t) = truth.lock() {
            t.changes.push(change);
            t.doing[rep] = doing;
        }
    };
    let current = |rep: usize| truth.lock().ok().and_then(|t| t.doing[rep]);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // Activities start until shortly before the end; what is under way then stays.
    let last_start = start + run_for.mul_f64(0.97);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for (i, due) in until.iter_mut().enumerate() {
            if now < *due {
                continue;
            }
            let r = &h.reps[i];
            if let Some(doing) = current(i) {
                // End it. The change is recorded before it is made: presync cannot have
                // written because of it before it happened.
                match doing {
                    Doing::Conversation => {
                        // D365 Busy unless presync changed it meanwhile, which the final check
                        // would show.
                        record(i, Sys::D365, None);
                        h.dv.system_sets(&r.agent, builtin::AVAILABLE);
                    }
                    Doing::Meeting => {
                        record(i, Sys::Teams, None);
                        h.graph.person_leaves_meeting(&r.aad);
                    }
                    Doing::TeamsDnd => {
                        record(i, Sys::Teams, None);
                        h.graph.person_clears_preferred(&r.aad);
                    }
                    Doing::D365Dnd => {
                        record(i, Sys::D365, None);
                        h.dv.agent_sets(&r.agent, builtin::AVAILABLE);
                    }
                    Doing::SignedOut => {
                        record(i, Sys::D365, None);
                        h.dv.sign_in(&r.agent, builtin::AVAILABLE);
                        record(i, Sys::Teams, None);
                        h.graph.person_signs_in(&r.aad);
                    }
                }
                *due = now + Duration::from_secs_f64(rng.random_range(IDLE));
                continue;
            }
            if now >= last_start {
                continue;
            }
            let roll: f64 = rng.random();
            if roll < 0.4 {
                // D365 routes a conversation only to an agent it shows Available.
                if h.dv.presence(&r.agent).as_deref() != Some(builtin::AVAILABLE) {
                    *due = now + Duration::from_millis(500);
                    continue;
                }
                record(i, Sys::D365, Some(Doing::Conversation));
                h.dv.system_sets(&r.agent, builtin::BUSY);
            } else if roll < 0.65 {
                record(i, Sys::Teams, Some(Doing::Meeting));
                h.graph.person_joins_meeting(&r.aad);
            } else if roll < 0.78 {
                record(i, Sys::Teams, Some(Doing::TeamsDnd));
                h.graph
                    .person_sets_preferred(&r.aad, "DoNotDisturb", "DoNotDisturb");
            } else if roll < 0.92 {
                record(i, Sys::D365, Some(Doing::D365Dnd));
                h.dv.agent_sets(&r.agent, builtin::BUSY_DND);
            } else {
                record(i, Sys::D365, Some(Doing::SignedOut));
                h.dv.sign_out(&r.agent);
                record(i, Sys::Teams, Some(Doing::SignedOut));
                h.graph.person_signs_out(&r.aad);
            }
            *due = now + Duration::from_secs_f64(rng.random_range(LENGTH));
        }
    }
}
