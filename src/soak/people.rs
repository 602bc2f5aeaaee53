//! The soak's simulated people, and the customers D365's router offers them.
//!
//! Each person lives two lives at once, one in each system, and the two overlap as they do at
//! work: in D365 they take breaks, pick Do not disturb, sign out at the end of a shift (Teams
//! stays open) and lose their connection for a moment; in Teams they join meetings (and present
//! in some), take calls, pick a status and reset it, and sign out. Customers arrive all along:
//! the router offers each to an agent it finds routable, who accepts it a moment later (D365
//! recalculates) and closes it after a while, during a meeting or a break as it happens.
//!
//! What they did is in the simulators' own records, which the truth reads
//! ([`crate::truth`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use presync_dataverse::mapping::builtin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::harness::Harness;

/// What a person is doing in one system, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum D365Doing {
    Break,
    Dnd,
    SignedOut,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TeamsDoing {
    Meeting { presenting: bool },
    Call,
    Status,
    SignedOut,
}

/// A person's two lives.
#[derive(Debug)]
struct Person {
    d365: Option<D365Doing>,
    d365_until: Instant,
    teams: Option<TeamsDoing>,
    teams_until: Instant,
    /// When presenting starts within a meeting.
    presenting_at: Option<Instant>,
}

/// Counts of what the people did, for the progress line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Activity {
    pub d365: u64,
    pub teams: u64,
    pub offers: u64,
    pub conversations: u64,
}

fn secs(rng: &mut StdRng, range: std::ops::Range<f64>) -> Duration {
    Duration::from_secs_f64(rng.random_range(range))
}

/// The people at work until aborted; they start nothing new after `run_for` x 0.97.
pub(super) async fn drive(
    h: Arc<Harness>,
    activity: Arc<Mutex<Activity>>,
    seed: u64,
    run_for: Duration,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let last_start = start + run_for.mul_f64(0.97);
    let mut people: Vec<Person> = (0..h.reps.len())
        .map(|_| Person {
            d365: None,
            d365_until: start + secs(&mut rng, 0.0..3.0),
            teams: None,
            teams_until: start + secs(&mut rng, 0.0..3.0),
            presenting_at: None,
        })
        .collect();
    let count = |f: fn(&mut Activity)| {
        if let Ok(mut a) = activity.lock() {
            f(&mut a);
        }
    };
    let customers = tokio::spawn(customers(
        h.clone(),
        activity.clone(),
        seed.wrapping_add(7),
        last_start,
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        for (i, p) in people.iter_mut().enumerate() {
            let r = &h.reps[i];
            let (agent, aad) = (r.agent.as_str(), r.aad.as_str());
            if p.presenting_at.is_some_and(|at| now >= at) {
                h.graph.person_starts_presenting(aad);
                p.presenting_at = None;
                count(|a| a.teams += 1);
            }
            if now >= p.d365_until {
                match p.d365.take() {
                    Some(D365Doing::Break | D365Doing::Dnd) => {
                        h.dv.agent_sets(agent, builtin::AVAILABLE);
                        count(|a| a.d365 += 1);
                    }
                    Some(D365Doing::SignedOut) => {
                        h.dv.sign_in(agent, builtin::AVAILABLE);
                        count(|a| a.d365 += 1);
                    }
                    Some(D365Doing::Disconnected) => {
                        let _ = h.dv.reconnect(agent);
                        count(|a| a.d365 += 1);
                    }
                    None if now < last_start => {
                        let roll: f64 = rng.random();
                        let doing = match roll {
                            r if r < 0.30 => Some((D365Doing::Break, builtin::AWAY)),
                            r if r < 0.45 => Some((D365Doing::Dnd, builtin::BUSY_DND)),
                            r if r < 0.55 => Some((D365Doing::SignedOut, builtin::OFFLINE)),
                            r if r < 0.60 => Some((D365Doing::Disconnected, builtin::OFFLINE)),
                            _ => None,
                        };
                        match doing {
                            Some((d @ D365Doing::SignedOut, _)) => {
                                // Signing out closes every conversation.
                                h.dv.sign_out(agent);
                                p.d365 = Some(d);
                            }
                            Some((d @ D365Doing::Disconnected, _)) => {
                                let _ = h.dv.disconnect(agent);
                                p.d365 = Some(d);
                            }
                            Some((d, presence)) => {
                                h.dv.agent_sets(agent, presence);
                                p.d365 = Some(d);
                            }
                            None => {}
                        }
                        if p.d365.is_some() {
                            count(|a| a.d365 += 1);
                        }
                    }
                    None => {}
                }
                let length = match p.d365 {
                    Some(D365Doing::Disconnected) => secs(&mut rng, 0.5..2.0),
                    Some(_) => secs(&mut rng, 2.0..7.0),
                    None => secs(&mut rng, 1.0..4.0),
                };
                p.d365_until = now + length;
            }
            if now >= p.teams_until {
                match p.teams.take() {
                    Some(TeamsDoing::Meeting { presenting }) => {
                        if presenting {
                            h.graph.person_stops_presenting(aad);
                        }
                        p.presenting_at = None;
                        h.graph.person_leaves_meeting(aad);
                        count(|a| a.teams += 1);
                    }
                    Some(TeamsDoing::Call) => {
                        h.graph.person_leaves_call(aad);
                        count(|a| a.teams += 1);
                    }
                    Some(TeamsDoing::Status) => {
                        h.graph.person_clears_preferred(aad);
                        count(|a| a.teams += 1);
                    }
                    Some(TeamsDoing::SignedOut) => {
                        h.graph.person_signs_in(aad);
                        count(|a| a.teams += 1);
                    }
                    None if now < last_start => {
                        let roll: f64 = rng.random();
                        p.teams = match roll {
                            r if r < 0.35 => {
                                let presenting = rng.random::<f64>() < 0.3;
                                h.graph.person_joins_meeting(aad);
                                if presenting {
                                    p.presenting_at = Some(now + secs(&mut rng, 0.5..1.5));
                                }
                                Some(TeamsDoing::Meeting { presenting })
                            }
                            r if r < 0.50 => {
                                h.graph.person_joins_call(aad);
                                Some(TeamsDoing::Call)
                            }
                            r if r < 0.65 => {
                                let (a, b) = match rng.random::<f64>() {
                                    x if x < 0.6 => ("DoNotDisturb", "DoNotDisturb"),
                                    x if x < 0.8 => ("Away", "Away"),
                                    x if x < 0.9 => ("BeRightBack", "BeRightBack"),
                                    _ => ("Busy", "Busy"),
                                };
                                h.graph.person_sets_preferred(aad, a, b);
                                Some(TeamsDoing::Status)
                            }
                            r if r < 0.70 => {
                                h.graph.person_signs_out(aad);
                                Some(TeamsDoing::SignedOut)
                            }
                            _ => None,
                        };
                        if p.teams.is_some() {
                            count(|a| a.teams += 1);
                        }
                    }
                    None => {}
                }
                let length = match p.teams {
                    Some(_) => secs(&mut rng, 2.0..8.0),
                    None => secs(&mut rng, 1.0..4.0),
                };
                p.teams_until = now + length;
            }
        }
        if now >= last_start && people.iter().all(|p| p.d365.is_none() && p.teams.is_none()) {
            break;
        }
    }
    let _ = customers.await;
}

/// Customers, until `until`: every 250 ms the router offers one to the agent it finds
/// routable and has offered least recently, who accepts it 0.2 to 0.6 s later (if D365 still
/// lets them) and closes it 2 to 8 s after that.
async fn customers(h: Arc<Harness>, activity: Arc<Mutex<Activity>>, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut open = Vec::new();
    while Instant::now() < until {
        tick.tick().await;
        let Some(agent) = h.dv.route_next() else {
            continue;
        };
        if let Ok(mut a) = activity.lock() {
            a.offers += 1;
        }
        let (accept_in, close_in) = (secs(&mut rng, 0.2..0.6), secs(&mut rng, 2.0..8.0));
        let (h, activity) = (h.clone(), activity.clone());
        open.push(tokio::spawn(async move {
            tokio::time::sleep(accept_in).await;
            if h.dv.accept(&agent).is_err() {
                return;
            }
            if let Ok(mut a) = activity.lock() {
                a.conversations += 1;
            }
            tokio::time::sleep(close_in).await;
            // Closed, unless D365 closed it already (a sign-out closes every conversation).
            let _ = h.dv.close(&agent);
        }));
    }
    for c in open {
        let _ = c.await;
    }
}
