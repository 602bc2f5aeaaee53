//! One run of the model: the real engine on a real SQLite store with in-memory systems, the
//! people's genuine changes as they made them, and the checks against them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, user, TestDb, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::connector::WriteSemantics;
use presync_engine::memory::{MemoryFault, MemorySystem};
use presync_engine::store::Enqueued;
use presync_engine::{Availability, Observation, Origin};
use proptest::prelude::*;

#[derive(Debug, Clone)]
pub enum Op {
    /// A person changes their state in one system.
    Change {
        sys: usize,
        rep: usize,
        a: Availability,
    },
    /// A person picks a status in a Teams-like system (its preferred presence, which beats
    /// every session), or resets it (`None`). Changes nothing in an overwrite system.
    Prefer {
        sys: usize,
        rep: usize,
        a: Option<Availability>,
    },
    /// The network delivers one pending delivery, in any order.
    Deliver {
        pick: usize,
    },
    /// The network delivers a copy and keeps the original.
    Duplicate {
        pick: usize,
    },
    /// The network loses one pending delivery.
    Lose {
        pick: usize,
    },
    Resolve,
    Dispatch,
    Reconcile,
    Restart,
    /// The next call to a system fails.
    Fault {
        sys: usize,
        kind: u8,
    },
    Tick {
        ms: i64,
    },
}

pub fn availability() -> impl Strategy<Value = Availability> {
    prop::sample::select(Availability::ALL.to_vec())
}

/// The operations of a run whose systems all overwrite.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..2usize, availability()).prop_map(|(sys, rep, a)| Op::Change { sys, rep, a }),
        6 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Duplicate { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        3 => Just(Op::Resolve),
        3 => Just(Op::Dispatch),
        1 => Just(Op::Reconcile),
        1 => Just(Op::Restart),
        1 => (0..3usize, 0..3u8).prop_map(|(sys, kind)| Op::Fault { sys, kind }),
        1 => (1..5_000i64).prop_map(|ms| Op::Tick { ms }),
    ]
}

/// The operations of a run with a Teams-like system: [`op`], and the person's preferred
/// presence there.
pub fn teams_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        1 => (0..2usize, 0..2usize, prop::option::of(availability()))
            .prop_map(|(sys, rep, a)| Op::Prefer { sys, rep, a }),
    ]
}

/// One genuine change, as the person made it.
#[derive(Debug, Clone)]
struct Genuine {
    rep: usize,
    sys: usize,
    at: i64,
    a: Availability,
    key: String,
    /// A change of the person's own part of a Teams-like aggregate that did not show, because
    /// presync's part lay over it: presync can learn of it only when its part is lowered or
    /// withdrawn and the person's own shows.
    hidden: bool,
    /// A change that showed, but as presync's part (the person reset a status that lay over
    /// it): presync may take what shows for the person's change, or wait to see their own.
    shown_as_presyncs: Option<Availability>,
}

struct Run {
    w: World,
    semantics: Vec<WriteSemantics>,
    /// Per Teams-like system and representative, the person's own part: (preferred, session).
    own: BTreeMap<(usize, usize), (Option<Availability>, Option<Availability>)>,
    n: usize,
    reps: usize,
    network: Vec<Observation>,
    genuine: Vec<Genuine>,
    ingested: HashSet<String>,
    acknowledged: HashSet<String>,
    echoes_ingested: HashSet<String>,
    /// Per system, the times a reconcile read it successfully.
    reads: Vec<Vec<i64>>,
    unknown_outcomes: BTreeMap<usize, usize>,
}

impl Run {
    fn collect(&mut self) {
        self.network.extend(self.w.take_deliveries());
    }

    /// A person's action in system `sys`, which showed as `o` if it changed what the system
    /// shows. In a system that overwrites, that is the genuine change. In a Teams-like
    /// aggregate the person's change is to their own part (`change`: the preferred presence or
    /// their session): it shows when the aggregate shows that part, and is *hidden* while
    /// presync's part lies over it. A state the aggregate shows only because of presync's part
    /// (the person ended a session or reset a status that lay over it) is no change of theirs.
    fn record(
        &mut self,
        sys: usize,
        rep: usize,
        o: Option<Observation>,
        change: impl FnOnce(&mut (Option<Availability>, Option<Availability>)),
    ) {
        let s = &self.w.systems[sys];
        let u = user(s.name().as_str(), rep);
        let now = self.w.clock.advance(0);
        if self.semantics[sys] != WriteSemantics::Contribution {
            if let Some(o) = o {
                self.genuine.push(Genuine {
                    rep,
                    sys,
                    at: o.source_time,
                    a: s.state(&u).unwrap(),
                    key: o.delivery_key,
                    hidden: false,
                    shown_as_presyncs: None,
                });
            }
            return;
        }
        let own = self.own.entry((sys, rep)).or_default();
        let part = |own: &(Option<Availability>, Option<Availability>)| {
            own.0.or(own.1).unwrap_or(Availability::Offline)
        };
        let before = *own;
        change(own);
        let after = part(own);
        // (Choosing Offline as a status is a change from having no session, though both show
        // Offline where presync contributes nothing.)
        if before == *own {
            return;
        }
        let shown = s.state(&u);
        let presyncs = shown.is_some() && s.presync_session(&u) == shown;
        match o {
            Some(o) if shown == Some(after) && !presyncs => self.genuine.push(Genuine {
                rep,
                sys,
                at: o.source_time,
                a: after,
                key: o.delivery_key,
                hidden: false,
                shown_as_presyncs: None,
            }),
            _ => self.genuine.push(Genuine {
                rep,
                sys,
                at: now,
                a: after,
                key: String::new(),
                hidden: true,
                shown_as_presyncs: shown.filter(|_| o.is_some() && presyncs),
            }),
        }
    }

    async fn ingest(&mut self, o: Observation) {
        let key = o.delivery_key.clone();
        let echo = o.origin == Origin::Unknown;
        if self.w.engine.ingest(o).await.unwrap() == Enqueued::Accepted {
            self.acknowledged.insert(key.clone());
        }
        if echo {
            self.echoes_ingested.insert(key.clone());
        }
        self.ingested.insert(key);
    }

    async fn step(&mut self, op: &Op) {
        self.w.clock.advance(1);
        match *op {
            Op::Change { sys, rep, a } => {
                let sys = sys % self.n;
                let rep = rep % self.reps;
                let s = &self.w.systems[sys];
                let o = s.person_sets(&user(s.name().as_str(), rep), a);
                self.record(sys, rep, o, |own| {
                    own.1 = (a != Availability::Offline).then_some(a)
                });
            }
            Op::Prefer { sys, rep, a } => {
                let sys = sys % self.n;
                let rep = rep % self.reps;
                if self.semantics[sys] == WriteSemantics::Contribution {
                    let s = &self.w.systems[sys];
                    let o = s.person_sets_preferred(&user(s.name().as_str(), rep), a);
                    self.record(sys, rep, o, |own| own.0 = a);
                }
            }
            Op::Deliver { pick } if !self.network.is_empty() => {
                let o = self.network.remove(pick % self.network.len());
                self.ingest(o).await;
            }
            Op::Duplicate { pick } if !self.network.is_empty() => {
                let o = self.network[pick % self.network.len()].clone();
                self.ingest(o).await;
            }
            Op::Lose { pick } if !self.network.is_empty() => {
                self.network.remove(pick % self.network.len());
            }
            Op::Resolve => {
                self.w.engine.resolve_pending().await.unwrap();
            }
            Op::Dispatch => {
                self.w.engine.dispatch_pending().await.unwrap();
            }
            Op::Reconcile => {
                self.reconcile().await;
            }
            Op::Restart => self.w.restart().await,
            Op::Fault { sys, kind } => {
                let sys = sys % self.n;
                let fault = match kind {
                    0 => MemoryFault::RateLimited(Duration::from_millis(1_500)),
                    1 => MemoryFault::ServerError,
                    _ => {
                        *self.unknown_outcomes.entry(sys).or_default() += 1;
                        MemoryFault::TimeoutAfterApply
                    }
                };
                self.w.systems[sys].inject(fault);
            }
            Op::Tick { ms } => {
                self.w.clock.advance(ms);
            }
            Op::Deliver { .. } | Op::Duplicate { .. } | Op::Lose { .. } => {}
        }
        self.collect();
    }

    /// One reconcile pass; true when every system was read.
    async fn reconcile(&mut self) -> bool {
        let at = self.w.clock.advance(0);
        let report = self.w.engine.reconcile().await.unwrap();
        for (i, s) in self.w.systems.iter().enumerate() {
            let ok = report
                .systems
                .iter()
                .any(|r| r.system == s.name() && r.error.is_none());
            if ok {
                self.reads[i].push(at);
            }
        }
        report.complete()
    }

    /// Deliver everything left, let every retry and backoff run out, then reconcile twice.
    async fn drain(&mut self) {
        for _ in 0..40 {
            let pending = std::mem::take(&mut self.network);
            let moved = !pending.is_empty();
            for o in pending {
                self.ingest(o).await;
            }
            let r = self.w.engine.resolve_pending().await.unwrap();
            let d = self.w.engine.dispatch_pending().await.unwrap();
            self.collect();
            let depths = self.w.engine.store().queue_depths().await.unwrap();
            if !moved && r == 0 && d == 0 && depths.inbox == 0 && depths.outbox == 0 {
                return;
            }
            self.w.clock.advance(310_000);
        }
        panic!("the pipeline did not drain");
    }

    /// The winners a correct engine may settle on: the last writer among the genuine changes
    /// it can know of, and, where a change hidden beneath presync's part of a Teams-like
    /// aggregate is newer, that change (presync learns of it if its part is lowered or
    /// withdrawn before the end, and cannot otherwise). A change whose delivery was lost and
    /// which presync's own write overwrote before any reconcile read it is gone from every
    /// system.
    fn winners(&self, rep: usize) -> Vec<Winner> {
        let writes: Vec<Vec<(String, i64, Option<Availability>)>> = self
            .w
            .systems
            .iter()
            .map(|s| {
                s.writes()
                    .into_iter()
                    .map(|r| (r.user.to_string(), r.at, r.desired.availability()))
                    .collect()
            })
            .collect();
        let last = |g: &&Genuine| (g.at, std::cmp::Reverse(g.sys));
        // A change whose delivery was lost is gone once presync's write of another state
        // overwrote it before a reconcile read. In a Teams-like aggregate presync's write only
        // adds its part, which may or may not lie over the person's own: either may be.
        let gone = |g: &Genuine| {
            if self.ingested.contains(&g.key) {
                return false;
            }
            let s = &self.w.systems[g.sys];
            let u = user(s.name().as_str(), g.rep).to_string();
            let read_at = self.reads[g.sys]
                .iter()
                .copied()
                .find(|&r| r >= g.at)
                .unwrap_or(i64::MAX);
            // Only a write of another state hides it: writing the same state changes nothing.
            writes[g.sys]
                .iter()
                .any(|(wu, at, a)| *wu == u && *at > g.at && *at <= read_at && *a != Some(g.a))
        };
        // A person's change to a Teams-like system while presync's write or withdrawal there
        // may be on the wire looks, to presync, like that write's effect: setting the very
        // state presync writes (the README's one ambiguity), or one its withdrawal may reveal.
        // (The model records when a write landed, not when it was decided: any write landing
        // after the change may have been on the wire at the time.)
        let like_presyncs = |g: &Genuine| {
            let s = &self.w.systems[g.sys];
            let u = user(s.name().as_str(), g.rep).to_string();
            self.semantics[g.sys] == WriteSemantics::Contribution
                && writes[g.sys]
                    .iter()
                    .find(|(wu, at, _)| *wu == u && *at >= g.at)
                    .is_some_and(|(_, _, a)| {
                        a.is_none_or(|a| a == g.a || a == Availability::Offline)
                    })
        };
        let mut winners: Vec<Winner> = Vec::new();
        let modes = [false, true].into_iter().flat_map(|a| {
            [false, true]
                .into_iter()
                .flat_map(move |b| [false, true].map(|c| (a, b, c)))
        });
        for (strict, as_shown, ambiguous_mine) in modes {
            // A change that showed as presync's part is taken for what showed (`as_shown`), or
            // for the person's own part beneath it, hidden.
            let known = self
                .genuine
                .iter()
                .filter(|g| g.rep == rep)
                .filter(|g| !g.hidden || (as_shown && g.shown_as_presyncs.is_some()))
                .filter(|g| !(ambiguous_mine && like_presyncs(g)))
                .filter(|g| {
                    !gone(g) || (!strict && self.semantics[g.sys] == WriteSemantics::Contribution)
                })
                .max_by_key(last)
                .map(|g| Won {
                    sys: g.sys,
                    a: g.shown_as_presyncs.filter(|_| as_shown).unwrap_or(g.a),
                    // A newer change of the person's there, left out here, shows instead.
                    shown_as_presyncs: (as_shown && g.shown_as_presyncs.is_some())
                        || (ambiguous_mine
                            && self.genuine.iter().any(|o| {
                                o.rep == rep && o.sys == g.sys && o.at > g.at && like_presyncs(o)
                            })),
                    at: g.at,
                });
            let hidden = self
                .genuine
                .iter()
                .filter(|g| g.rep == rep && g.hidden)
                .filter(|g| !(as_shown && g.shown_as_presyncs.is_some()))
                .max_by_key(last)
                .filter(|h| {
                    known.is_none_or(|k| {
                        (h.at, std::cmp::Reverse(h.sys)) > (k.at, std::cmp::Reverse(k.sys))
                    })
                })
                .map(|g| Won {
                    sys: g.sys,
                    a: g.a,
                    shown_as_presyncs: false,
                    at: g.at,
                });
            for w in [Some(known), hidden.map(Some)].into_iter().flatten() {
                if !winners.contains(&w) {
                    winners.push(w);
                }
            }
        }
        winners
    }
}

/// Who won, as a correct engine may have it (`None`: nobody changed anything).
type Winner = Option<Won>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Won {
    sys: usize,
    a: Availability,
    at: i64,
    /// Taken for what showed, which was presync's part: presync may have withdrawn it since
    /// to see the person's own, so the system may show anything.
    shown_as_presyncs: bool,
}

/// A run of `n` systems that overwrite.
pub fn run_case(n: usize, reps: usize, ops: Vec<Op>) {
    run_systems(vec![WriteSemantics::Overwrite; n], reps, ops);
}

/// A run of one system per entry of `semantics`, `reps` representatives, through `ops`; then
/// drain, reconcile and check.
pub fn run_systems(semantics: Vec<WriteSemantics>, reps: usize, ops: Vec<Op>) {
    let n = semantics.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = TestDb::sqlite();
        let clock = Arc::new(ManualClock::new(T0));
        let systems: Vec<MemorySystem> = semantics
            .iter()
            .enumerate()
            .map(|(i, s)| MemorySystem::new(format!("s{i}"), clock.clone()).with_semantics(*s))
            .collect();
        let mut cfg = EngineConfig::default();
        cfg.rules.system_priority = systems.iter().map(|s| s.name()).collect();
        // The in-memory systems share presync's clock: no skew. (Within the skew bound of one
        // of presync's writes, a person setting the very state written is taken for its echo.)
        cfg.rules.max_clock_skew_ms = 0;
        // A failed reconcile read fails the pass here, as the model expects: retries within a
        // pass wait in real time, which this manual clock does not control (the pipeline
        // suite covers them).
        cfg.pipeline.reconcile_read_attempts = 1;
        let w = World::with_clock(&db.url(), clock, &systems, reps, cfg).await;
        let mut run = Run {
            w,
            semantics,
            own: BTreeMap::new(),
            n,
            reps,
            network: Vec::new(),
            genuine: Vec::new(),
            ingested: HashSet::new(),

            acknowledged: HashSet::new(),
            echoes_ingested: HashSet::new(),
            reads: vec![Vec::new(); n],
            unknown_outcomes: BTreeMap::new(),
        };
        for op in &ops {
            run.step(op).await;
        }
        run.drain().await;
        // Reconcile until two passes read every system (injected faults may fail a read, as
        // they would make a scheduled pass fail and the next one run).
        let mut complete = 0;
        for _ in 0..20 {
            run.w.clock.advance(1);
            if run.reconcile().await {
                complete += 1;
            }
            run.drain().await;
            if complete == 2 {
                break;
            }
        }
        assert_eq!(complete, 2, "reconcile kept failing");
        check(&run).await;
    });
}

async fn check(run: &Run) {
    let store = run.w.engine.store();
    for rep in 0..run.reps {
        let winners = run.winners(rep);
        let history = store.history(&common::rep(rep), 200).await.unwrap();
        let canonical = store
            .rep_view(&common::rep(rep))
            .await
            .unwrap()
            .canonical
            .map(|c| c.availability);
        let follows = |winner: Winner| {
            let expected = winner.map_or(Availability::Offline, |g| g.a);
            canonical.is_none_or(|c| c == expected)
                && run.w.systems.iter().enumerate().all(|(i, s)| {
                    let u = user(s.name().as_str(), rep);
                    match run.semantics[i] {
                        WriteSemantics::Overwrite => s.state(&u) == Some(expected),
                        // A Teams-like aggregate shows the person's own choice when it won;
                        // otherwise it holds presync's part of the winner (what the aggregate
                        // makes of it with the person's own sessions is Teams' precedence).
                        _ => {
                            s.state(&u) == Some(expected)
                                || winner.is_some_and(|g| g.sys == i && g.shown_as_presyncs)
                                || (winner.is_some_and(|g| g.sys != i)
                                    && s.presync_session(&u)
                                        == Some(expected).filter(|a| *a != Availability::Offline))
                        }
                    }
                })
        };
        assert!(
            winners.iter().any(|w| follows(*w)),
            "rep {rep} follows none of the winners {:?}: {:?}, canonical {canonical:?} (presync's parts {:?})\ngenuine: {:?}\nhistory (newest first): {:#?}",
            winners,
            run.w.states(rep),
            run.w.systems.iter().map(|s| s.presync_session(&user(s.name().as_str(), rep))).collect::<Vec<_>>(),
            run.genuine.iter().filter(|g| g.rep == rep).collect::<Vec<_>>(),
            history.iter().map(|h| format!("{} {} {} {} {:?} {:?} {}", h.at - T0, h.system, h.rule, h.outcome, h.availability, h.writes, h.detail)).collect::<Vec<_>>()
        );
    }
    for key in &run.echoes_ingested {
        for h in store.history_for_delivery(key).await.unwrap() {
            // (Withdrawing presync's own part again from a Teams-like aggregate, after a
            // withdrawal whose outcome was unknown, sends the echo nowhere.)
            let contribution = run
                .w
                .systems
                .iter()
                .position(|s| s.name().as_str() == h.system)
                .is_some_and(|i| run.semantics[i] == WriteSemantics::Contribution);
            let elsewhere = h.writes.iter().any(|w| !(contribution && *w == h.system));
            assert!(!elsewhere, "an echo was propagated: {h:?}");
        }
    }
    for (i, s) in run.w.systems.iter().enumerate() {
        for rep in 0..run.reps {
            let u = user(s.name().as_str(), rep);
            let writes = s.writes().iter().filter(|r| r.user == u).count();
            let changes = run.genuine.iter().filter(|g| g.rep == rep).count();
            let slack = run.unknown_outcomes.get(&i).copied().unwrap_or(0);
            assert!(
                writes <= changes + slack,
                "{} received {writes} writes for rep {rep}, with {changes} genuine changes",
                s.name()
            );
        }
    }
    for key in &run.acknowledged {
        let h = store.history_for_delivery(key).await.unwrap();
        assert!(
            !h.is_empty(),
            "acknowledged delivery {key} was never resolved"
        );
    }
    assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
}
