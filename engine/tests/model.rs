//! The model test: the real engine on a real SQLite store, with two or three in-memory systems,
//! driven through random interleavings of people's changes, delivered, duplicated, reordered and
//! lost webhooks, echoes of presync's own writes, faults, reconciles and engine restarts.
//!
//! After every run it checks, against the systems' own record:
//! - every representative converged, in every system, to the last-writer-wins winner among the
//!   genuine (people's) changes;
//! - no echo of presync's own writes caused a write;
//! - each target received at most one write per genuine change (plus one per write whose
//!   outcome was unknown);
//! - every acknowledged delivery was resolved.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{user, TestDb, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::memory::{MemoryFault, MemorySystem};
use presync_engine::store::Enqueued;
use presync_engine::{Availability, Observation, Origin};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A person changes their state in one system.
    Change {
        sys: usize,
        rep: usize,
        a: Availability,
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

fn availability() -> impl Strategy<Value = Availability> {
    prop::sample::select(Availability::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
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

/// One genuine change, as the person made it.
#[derive(Debug, Clone)]
struct Genuine {
    rep: usize,
    sys: usize,
    at: i64,
    a: Availability,
    key: String,
}

struct Run {
    w: World,
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
                if let Some(o) = s.person_sets(&user(s.name().as_str(), rep), a) {
                    self.genuine.push(Genuine {
                        rep,
                        sys,
                        at: o.source_time,
                        a,
                        key: o.delivery_key,
                    });
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

    /// The winner among the genuine changes that a correct engine can know of: a change whose
    /// delivery was lost and which presync's own write overwrote before any reconcile read it
    /// is gone from every system.
    fn winner(&self, rep: usize) -> Option<&Genuine> {
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
        self.genuine
            .iter()
            .filter(|g| g.rep == rep)
            .filter(|g| {
                if self.ingested.contains(&g.key) {
                    return true;
                }
                let s = &self.w.systems[g.sys];
                let u = user(s.name().as_str(), g.rep).to_string();
                let read_at = self.reads[g.sys]
                    .iter()
                    .copied()
                    .find(|&r| r >= g.at)
                    .unwrap_or(i64::MAX);
                // Only a write of another state hides it: writing the same state changes nothing.
                !writes[g.sys]
                    .iter()
                    .any(|(wu, at, a)| *wu == u && *at > g.at && *at <= read_at && *a != Some(g.a))
            })
            .max_by_key(|g| (g.at, std::cmp::Reverse(g.sys)))
    }
}

fn run_case(n: usize, reps: usize, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = TestDb::sqlite();
        let clock = Arc::new(ManualClock::new(T0));
        let systems: Vec<MemorySystem> = (0..n)
            .map(|i| MemorySystem::new(format!("s{i}"), clock.clone()))
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
        let states = run.w.states(rep);
        let expected = run.winner(rep).map_or(Availability::Offline, |g| g.a);
        let history = store.history(&common::rep(rep), 200).await.unwrap();
        assert!(
            states.iter().all(|s| *s == Some(expected)),
            "rep {rep} did not converge to {expected:?}: {states:?}\nwinner: {:?}\ngenuine: {:?}\nhistory (newest first): {:#?}",
            run.winner(rep),
            run.genuine.iter().filter(|g| g.rep == rep).collect::<Vec<_>>(),
            history.iter().map(|h| format!("{} {} {} {:?} {:?} {}", h.at - T0, h.system, h.rule, h.availability, h.writes, h.detail)).collect::<Vec<_>>()
        );
        let view = store.rep_view(&common::rep(rep)).await.unwrap();
        if let Some(c) = view.canonical {
            assert_eq!(c.availability, expected, "canonical state of rep {rep}");
        }
    }
    for key in &run.echoes_ingested {
        for h in store.history_for_delivery(key).await.unwrap() {
            assert!(h.writes.is_empty(), "an echo was propagated: {h:?}");
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

/// A fixed seed, so that the suite is deterministic: `PROPTEST_RNG_SEED=N` picks another and
/// `PROPTEST_RNG_SEED=random` explores (what a soak does; what it finds is pinned below).
fn seed() -> proptest::test_runner::RngSeed {
    use proptest::test_runner::RngSeed;
    match std::env::var("PROPTEST_RNG_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(n) => n.parse().map(RngSeed::Fixed).unwrap_or(RngSeed::Random),
        None => RngSeed::Fixed(20_261_121),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        rng_seed: seed(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn two_systems_converge_to_the_last_writer_without_propagating_echoes(
        reps in 1..=2usize,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_case(2, reps, ops);
    }

    #[test]
    fn three_systems_converge_to_the_last_writer_without_propagating_echoes(
        reps in 1..=2usize,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_case(3, reps, ops);
    }
}

/// Counterexamples the model test found, each pinned as it was shrunk.
mod regressions {
    use super::Op::*;
    use super::*;
    use presync_engine::Availability::*;

    fn change(sys: usize, rep: usize, a: Availability) -> Op {
        Change { sys, rep, a }
    }

    #[test]
    fn a_reconcile_never_writes_to_a_system_it_could_not_read() {
        run_case(2, 2, vec![Fault { sys: 0, kind: 0 }, Deliver { pick: 0 }]);
    }

    #[test]
    fn a_reconcile_read_equal_to_the_last_observation_still_checks_for_drift() {
        let ops = vec![
            change(2, 0, Away),
            change(2, 0, Available),
            change(1, 0, Away),
            Deliver {
                pick: 5120845828247626232,
            },
        ];
        run_case(2, 1, ops);
    }

    #[test]
    fn an_echo_seen_by_a_reconcile_then_delivered_by_webhook_is_not_propagated() {
        let ops = vec![
            change(0, 0, Available),
            Deliver { pick: 0 },
            Resolve,
            change(0, 0, Busy),
            Dispatch,
            Reconcile,
            change(0, 0, Available),
        ];
        run_case(3, 2, ops);
    }

    #[test]
    fn agreement_makes_the_newer_system_the_source() {
        let ops = vec![
            change(2, 0, Away),
            Deliver { pick: 0 },
            change(2, 0, Available),
            change(1, 0, Away),
            Deliver {
                pick: 7653567911732317511,
            },
        ];
        run_case(2, 1, ops);
    }

    #[test]
    fn a_persons_change_after_a_newer_write_is_not_a_late_echo() {
        let ops = vec![
            change(2, 0, DoNotDisturb),
            Deliver { pick: 0 },
            change(1, 0, Busy),
            change(0, 0, Available),
            change(0, 0, Available),
            change(2, 0, Available),
            Resolve,
            change(2, 0, Busy),
            Dispatch,
            Deliver {
                pick: 4656079897494956126,
            },
        ];
        run_case(2, 1, ops);
    }

    #[test]
    fn a_write_of_unknown_outcome_completes_when_its_attempt_returns() {
        let ops = vec![
            change(1, 0, Available),
            Fault { sys: 0, kind: 2 },
            Deliver { pick: 0 },
            change(1, 0, Offline),
            Deliver { pick: 0 },
            Resolve,
            Dispatch,
            change(2, 0, Available),
            change(0, 0, Offline),
        ];
        run_case(2, 1, ops);
    }

    #[test]
    fn an_agreement_overwritten_by_presync_still_advances_the_timestamp() {
        let ops = vec![
            change(0, 0, DoNotDisturb),
            Deliver { pick: 0 },
            change(1, 0, Offline),
            change(0, 1, Available),
            Deliver { pick: 0 },
            Reconcile,
            change(2, 0, Busy),
            change(0, 0, DoNotDisturb),
            change(1, 0, Busy),
            Deliver {
                pick: 3224166980991949965,
            },
            Dispatch,
            change(0, 1, Busy),
            Deliver {
                pick: 7857038282911714241,
            },
        ];
        run_case(2, 2, ops);
    }

    #[test]
    fn a_lost_change_still_visible_to_a_reconcile_is_recovered() {
        let ops = vec![
            change(2, 0, Busy),
            Deliver { pick: 0 },
            change(0, 0, Available),
            change(0, 0, Busy),
            Resolve,
            Lose {
                pick: 6856513989643987,
            },
            Dispatch,
            Reconcile,
        ];
        run_case(3, 2, ops);
    }

    #[test]
    fn a_reconcile_whose_reads_fail_is_retried_until_every_system_is_read() {
        let ops = vec![
            change(2, 1, Available),
            Deliver { pick: 0 },
            Fault { sys: 2, kind: 0 },
            change(0, 0, Available),
            change(2, 0, DoNotDisturb),
            change(0, 0, Available),
            change(2, 1, Busy),
            Lose {
                pick: 2871056115490365898,
            },
            Fault { sys: 2, kind: 0 },
        ];
        run_case(2, 2, ops);
    }

    #[test]
    fn a_reconcile_replaces_an_older_write_queued_for_an_unread_system() {
        let ops = vec![
            change(2, 1, Available),
            Deliver { pick: 0 },
            change(2, 1, Busy),
            Reconcile,
            change(2, 0, Available),
            Deliver {
                pick: 3588922186592392615,
            },
            Resolve,
            Deliver { pick: 0 },
            Dispatch,
            Lose {
                pick: 11202313742419736144,
            },
            change(0, 0, Busy),
        ];
        run_case(2, 2, ops);
    }

    #[test]
    fn a_reconcile_read_of_presyncs_own_write_does_not_advance_the_watermark() {
        let ops = vec![
            change(0, 0, Available),
            Deliver { pick: 0 },
            change(0, 0, Busy),
            change(1, 0, DoNotDisturb),
            Resolve,
            Dispatch,
            Deliver {
                pick: 3873505141387150018,
            },
            Deliver {
                pick: 3847583497945004108,
            },
            Reconcile,
        ];
        run_case(3, 1, ops);
    }

    #[test]
    fn a_completed_write_that_did_not_stick_does_not_block_drift_repair() {
        let ops = vec![
            change(2, 0, Available),
            change(0, 0, Offline),
            Lose {
                pick: 3309560339075492406,
            },
            Deliver { pick: 0 },
            change(2, 0, Available),
            change(0, 0, Available),
            Resolve,
            Dispatch,
            Reconcile,
            Deliver { pick: 0 },
        ];
        run_case(2, 2, ops);
    }

    #[test]
    fn a_reconcile_feeds_a_state_set_again_after_a_lost_delivery() {
        let ops = vec![
            change(0, 0, Away),
            Reconcile,
            change(0, 0, Available),
            change(1, 0, Busy),
            change(0, 0, Away),
            Lose {
                pick: 7949854563369309731,
            },
            Reconcile,
            Deliver { pick: 0 },
        ];
        run_case(3, 1, ops);
    }

    #[test]
    fn a_persons_change_just_before_a_write_of_the_same_state_is_theirs() {
        let ops = vec![
            Fault { sys: 1, kind: 2 },
            change(0, 0, Available),
            change(0, 0, Available),
            change(2, 0, Busy),
            change(0, 0, Available),
            Deliver { pick: 0 },
            change(1, 0, Available),
            Resolve,
            Dispatch,
        ];
        run_case(3, 1, ops);
    }
}
