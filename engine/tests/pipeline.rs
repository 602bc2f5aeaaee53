//! The whole pipeline (ingest, inbox, resolver, outbox, dispatcher, reconciler) on a real store,
//! with in-memory systems. Every scenario runs on SQLite, and on PostgreSQL when
//! `PRESYNC_TEST_POSTGRES_URL` is set.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{rep, user, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::{DebounceOffline, EngineConfig};
use presync_engine::memory::{MemoryFault, MemorySystem};
use presync_engine::store::Enqueued;
use presync_engine::Availability::*;
use presync_engine::{Desired, WriteSemantics};

fn systems(clock: &Arc<ManualClock>) -> Vec<MemorySystem> {
    vec![
        MemorySystem::new("d365", clock.clone()),
        MemorySystem::new("teams", clock.clone()),
    ]
}

async fn world(url: &str) -> World {
    world_with(url, EngineConfig::default()).await
}

async fn world_with(url: &str, config: EngineConfig) -> World {
    let clock = Arc::new(ManualClock::new(T0));
    World::with_clock(url, clock.clone(), &systems(&clock), 2, config).await
}

/// Webhooks that arrive before the committer takes its next batch are stored together. On a
/// current-thread runtime the order is fixed: all 64 are queued before the committer first
/// runs, and one commit stores them.
#[tokio::test]
async fn concurrent_ingests_share_commits() {
    use std::sync::atomic::Ordering::Relaxed;
    let db = common::TestDb::sqlite();
    let w = world(&db.url()).await;
    let observations: Vec<_> = (0..64)
        .map(|i| {
            w.clock.advance(1);
            let a = if i % 2 == 0 { Busy } else { Available };
            w.system("d365").person_sets(&user("d365", 0), a).unwrap()
        })
        .collect();
    let outcomes =
        futures::future::join_all(observations.into_iter().map(|o| w.engine.ingest(o))).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(Enqueued::Accepted))),
        "{outcomes:?}"
    );
    assert_eq!(w.engine.store().queue_depths().await.unwrap().inbox, 64);
    assert_eq!(w.engine.stats().ingest_commits.load(Relaxed), 1);
}

fn writes_to(w: &World, system: &str) -> usize {
    w.system(system).writes().len()
}

async fn a_change_reaches_the_other_system_and_its_echo_is_not_propagated(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
    assert_eq!(writes_to(&w, "teams"), 1);
    assert_eq!(
        writes_to(&w, "d365"),
        0,
        "the echo from Teams must not come back to D365"
    );
    let echoes = w
        .engine
        .stats()
        .decisions()
        .get("echo")
        .copied()
        .unwrap_or(0);
    assert_eq!(echoes, 1);
    let history = w.engine.store().history(&rep(0), 10).await.unwrap();
    assert!(history.iter().any(|h| h.rule == "echo"), "{history:?}");
    assert!(history
        .iter()
        .any(|h| h.rule == "write" && h.outcome == "ok"));
}

async fn a_redelivered_webhook_is_accepted_once(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    let d = w
        .system("d365")
        .person_sets(&user("d365", 0), Busy)
        .unwrap();
    w.system("d365").take_deliveries();
    assert_eq!(
        w.engine.ingest(d.clone()).await.unwrap(),
        Enqueued::Accepted
    );
    assert_eq!(
        w.engine.ingest(d.clone()).await.unwrap(),
        Enqueued::Duplicate
    );
    w.settle().await;
    assert_eq!(
        w.engine.ingest(d.clone()).await.unwrap(),
        Enqueued::Duplicate
    );
    assert_eq!(
        w.engine
            .store()
            .history_for_delivery(&d.delivery_key)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(writes_to(&w, "teams"), 1);
}

async fn a_burst_for_one_person_becomes_one_write(url: String) {
    let w = world(&url).await;
    for a in [Busy, Available, DoNotDisturb, Away, Busy] {
        w.clock.advance(10);
        w.system("d365").person_sets(&user("d365", 0), a);
    }
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    assert_eq!(w.engine.store().queue_depths().await.unwrap().outbox, 1);
    w.settle().await;
    assert_eq!(writes_to(&w, "teams"), 1);
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
}

async fn a_lost_webhook_is_repaired_by_the_next_reconcile(url: String) {
    let w = world(&url).await;
    w.engine.reconcile().await.unwrap(); // a baseline: every user observed once
    w.settle().await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 1), DoNotDisturb);
    w.take_deliveries(); // lost
    w.settle().await;
    assert_eq!(w.states(1), vec![Some(DoNotDisturb), Some(Offline)]);
    let report = w.engine.reconcile().await.unwrap();
    assert!(report.complete());
    assert_eq!(report.missed_changes(), 1, "{report:?}");
    w.settle().await;
    assert_eq!(w.states(1), vec![Some(DoNotDisturb), Some(DoNotDisturb)]);
    let again = w.engine.reconcile().await.unwrap();
    assert_eq!(
        again.decisions.values().sum::<u64>(),
        0,
        "in sync: nothing fed: {again:?}"
    );
}

/// Found by `presync soak`: a 502 or a 429 on the reconcile read cost the whole pass, and what
/// the pass was to repair stayed wrong until the next one.
async fn a_reconcile_read_that_fails_transiently_is_retried_within_the_pass(url: String) {
    let w = world(&url).await;
    w.engine.reconcile().await.unwrap();
    w.settle().await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 1), DoNotDisturb);
    w.take_deliveries(); // lost
    w.settle().await;
    w.system("d365").inject(MemoryFault::ServerError);
    w.system("d365")
        .inject(MemoryFault::RateLimited(std::time::Duration::from_millis(
            20,
        )));
    let report = w.engine.reconcile().await.unwrap();
    assert!(report.complete(), "{report:?}");
    assert_eq!(report.missed_changes(), 1, "{report:?}");
    w.settle().await;
    assert_eq!(w.states(1), vec![Some(DoNotDisturb), Some(DoNotDisturb)]);

    // A failure that will not pass is not retried: one read, and the pass reports it.
    w.system("d365").inject(MemoryFault::Reject);
    let report = w.engine.reconcile().await.unwrap();
    assert!(!report.complete(), "{report:?}");
}

async fn a_write_refused_by_the_target_is_repaired_by_reconcile_as_drift(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("teams").inject(MemoryFault::Reject);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Offline)]);
    let history = w.engine.store().history(&rep(0), 10).await.unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.rule == "write" && h.outcome == "rejected"),
        "{history:?}"
    );
    // Teams was never observed; a first read records it, a second finds the drift.
    w.engine.reconcile().await.unwrap();
    w.settle().await;
    let report = w.engine.reconcile().await.unwrap();
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)], "{report:?}");
}

async fn a_throttled_write_waits_for_retry_after(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("teams")
        .inject(MemoryFault::RateLimited(Duration::from_secs(2)));
    w.system("d365").person_sets(&user("d365", 0), Busy);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 1);
    assert_eq!(writes_to(&w, "teams"), 0);
    w.clock.advance(1_999);
    assert_eq!(
        w.engine.dispatch_pending().await.unwrap(),
        0,
        "retried before Retry-After"
    );
    w.clock.advance(1);
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 1);
    assert_eq!(writes_to(&w, "teams"), 1);
    assert!(
        w.engine
            .stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

async fn a_server_error_is_retried_with_backoff(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("teams").inject(MemoryFault::ServerError);
    w.system("d365").person_sets(&user("d365", 0), Away);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    w.engine.dispatch_pending().await.unwrap();
    assert_eq!(writes_to(&w, "teams"), 0);
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 0, "backing off");
    w.clock.advance(60_000);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Away), Some(Away)]);
}

async fn a_write_with_an_unknown_outcome_is_retried_and_its_echo_still_suppressed(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("teams").inject(MemoryFault::TimeoutAfterApply);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.settle().await;
    w.clock.advance(60_000);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
    assert_eq!(
        writes_to(&w, "d365"),
        0,
        "the echo of a write with unknown outcome came back"
    );
}

async fn a_crash_between_begin_and_finish_rewrites_once_after_restart(url: String) {
    let mut w = world(&url).await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), DoNotDisturb);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    // Claim and begin the write, send it, and die before recording the outcome.
    let store = w.engine.store().clone();
    let now = w.clock.advance(1);
    let claimed = store
        .claim_outbox(&"teams".into(), "doomed", now, now + 30_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let (row, _) = store
        .begin_write(
            &claimed[0].rep_id,
            &claimed[0].target,
            "doomed",
            now,
            600_000,
        )
        .await
        .unwrap()
        .unwrap();
    let teams = w.system("teams").connector();
    presync_engine::Connector::write(teams.as_ref(), &row.external_id, &row.desired)
        .await
        .unwrap();
    w.restart().await;
    // SQLite takes over its predecessor's claims at start; PostgreSQL waits for the lease.
    w.clock.advance(w.config.pipeline.lease_ms + 1);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(DoNotDisturb), Some(DoNotDisturb)]);
    let teams_writes = w.system("teams").writes();
    assert_eq!(
        teams_writes.len(),
        2,
        "the unknown-outcome write is made again, once"
    );
    assert!(teams_writes
        .iter()
        .all(|r| matches!(&r.desired, Desired::Set(p) if p.availability == DoNotDisturb)));
    assert_eq!(writes_to(&w, "d365"), 0);
}

async fn acknowledged_observations_survive_a_restart(url: String) {
    let mut w = world(&url).await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.system("teams").person_sets(&user("teams", 1), Away);
    for d in w.take_deliveries() {
        assert_eq!(w.engine.ingest(d).await.unwrap(), Enqueued::Accepted);
    }
    w.restart().await;
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
    assert_eq!(w.states(1), vec![Some(Away), Some(Away)]);
}

async fn an_unknown_user_is_recorded_and_dropped(url: String) {
    let w = world(&url).await;
    w.system("d365").add_user("stranger", Offline);
    w.clock.advance(10);
    let d = w
        .system("d365")
        .person_sets(&"stranger".into(), Busy)
        .unwrap();
    w.settle().await;
    let h = w
        .engine
        .store()
        .history_for_delivery(&d.delivery_key)
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].rule, "unknown_representative");
    assert_eq!(writes_to(&w, "teams"), 0);
}

async fn a_transient_offline_is_debounced_through_the_inbox(url: String) {
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = EngineConfig::default();
    cfg.rules.policies.debounce_offline = vec![DebounceOffline {
        system: "d365".into(),
        grace_ms: 150_000,
    }];
    let w = World::with_clock(&url, clock.clone(), &systems(&clock), 1, cfg).await;
    let d365 = w.system("d365");
    clock.advance(10);
    d365.person_sets(&user("d365", 0), Available);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Available), Some(Available)]);
    clock.advance(10);
    d365.person_sets(&user("d365", 0), Offline);
    w.settle().await;
    assert_eq!(
        w.states(0)[1],
        Some(Available),
        "held during the grace window"
    );
    clock.advance(60_000);
    d365.person_sets(&user("d365", 0), Available); // reconnected within 2.5 minutes
    w.settle().await;
    clock.advance(200_000);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Available), Some(Available)]);
    assert_eq!(
        writes_to(&w, "teams"),
        1,
        "the transient Offline never reached Teams"
    );
    clock.advance(10);
    d365.person_sets(&user("d365", 0), Offline);
    w.settle().await;
    clock.advance(150_001);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Offline), Some(Offline)]);
}

async fn sticky_echo_settles_with_the_persons_real_state(url: String) {
    // Teams aggregates: the person's preferred presence beats sessions, presync owns a session.
    let clock = Arc::new(ManualClock::new(T0));
    let teams =
        MemorySystem::new("teams", clock.clone()).with_semantics(WriteSemantics::Contribution);
    let d365 = MemorySystem::new("d365", clock.clone());
    let w = World::with_clock(
        &url,
        clock.clone(),
        &[d365, teams],
        1,
        EngineConfig::default(),
    )
    .await;
    let teams = w.system("teams");
    let (tu, du) = (user("teams", 0), user("d365", 0));
    // D365 Busy: presync's session in Teams says Busy.
    clock.advance(10);
    teams.person_sets(&tu, Available);
    w.settle().await;
    clock.advance(10);
    w.system("d365").person_sets(&du, Busy);
    w.settle().await;
    assert_eq!(teams.presync_session(&tu), Some(Busy));
    // The person sets DND by hand in Teams: D365 follows, and presync's stale session goes.
    clock.advance(10);
    teams.person_sets_preferred(&tu, Some(DoNotDisturb));
    w.settle().await;
    assert_eq!(w.system("d365").state(&du), Some(DoNotDisturb));
    assert_ne!(
        teams.presync_session(&tu),
        Some(DoNotDisturb),
        "the D365 echo reached Teams"
    );
    // The person clears DND: the real state is their own client's Available, everywhere.
    clock.advance(10);
    teams.person_sets_preferred(&tu, None);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Available), Some(Available)]);
}

/// `Engine::run` on a world's engine, in a task of its own.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<presync_engine::engine::Result<()>>,
}

impl Running {
    fn start(w: &World) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = w.engine.clone();
        let task =
            tokio::spawn(async move { engine.run(async { stopped.await.unwrap_or(()) }).await });
        Running { stop, task }
    }

    /// Shut it down; it must return within 15 s.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("run did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

async fn the_running_engine_propagates_changes_and_stops_on_shutdown(url: String) {
    let w = world(&url).await;
    let running = Running::start(&w);
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), DoNotDisturb);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.system("teams").state(&user("teams", 0)) != Some(DoNotDisturb) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never reached Teams"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await;
    assert_eq!(writes_to(&w, "teams"), 1);
}

/// Wait (10 s at most) until `done` holds, letting spawned tasks run.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `pipeline.write_on_resolve`: the resolver claims the write it decides in its own
/// transaction, with the echo expectation, and makes it; the dispatcher finds nothing left,
/// and the echo is recognised.
async fn the_resolver_makes_the_writes_it_decides_and_their_echoes_stay_home(url: String) {
    let w = world(&url).await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    assert_eq!(w.engine.resolve_and_write().await.unwrap(), 1);
    until("the write and its record", async || {
        writes_to(&w, "teams") == 1 && w.engine.store().queue_depths().await.unwrap().outbox == 0
    })
    .await;
    assert_eq!(
        w.engine.dispatch_pending().await.unwrap(),
        0,
        "the dispatcher found the resolver's write still to make"
    );
    let history = w.engine.store().history(&rep(0), 10).await.unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.rule == "write" && h.outcome == "ok"),
        "{history:?}"
    );
    // Teams tells of the new state: presync's own write coming back.
    let echoes = w.take_deliveries();
    assert_eq!(echoes.len(), 1, "{echoes:?}");
    for d in echoes {
        w.engine.ingest(d).await.unwrap();
    }
    assert_eq!(w.engine.resolve_and_write().await.unwrap(), 1);
    assert_eq!(w.engine.stats().decisions().get("echo").copied(), Some(1));
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
    assert_eq!(writes_to(&w, "d365"), 0, "the echo went back to D365");
}

/// The resolver's writes take the target's tokens and in-flight slots like the dispatcher's:
/// with one token per minute it makes one write, and the other waits for the next token.
async fn the_resolvers_writes_keep_to_the_targets_rate_limit(url: String) {
    let mut config = EngineConfig::default();
    config.dispatch_default.rate_limit = 1;
    config.dispatch_default.rate_window_ms = 60_000;
    let w = world_with(&url, config).await;
    w.clock.advance(10);
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.system("d365").person_sets(&user("d365", 1), Away);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    assert_eq!(w.engine.resolve_and_write().await.unwrap(), 2);
    until("the allowed write and its record", async || {
        writes_to(&w, "teams") == 1 && w.engine.store().queue_depths().await.unwrap().outbox == 1
    })
    .await;
    assert_eq!(
        w.engine.dispatch_pending().await.unwrap(),
        0,
        "a write beyond the rate limit"
    );
    assert_eq!(writes_to(&w, "teams"), 1);
    w.clock.advance(60_000);
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 1);
    assert_eq!(writes_to(&w, "teams"), 2);
    w.settle().await;
    assert_eq!(w.states(0), vec![Some(Busy), Some(Busy)]);
    assert_eq!(w.states(1), vec![Some(Away), Some(Away)]);
    assert_eq!(writes_to(&w, "d365"), 0);
}

/// With one write in flight allowed, the resolver's write holds the slot until it is
/// recorded; the dispatcher, woken then, makes the one the resolver could not claim. The first
/// write is slow, so the dispatcher finds the slot taken when the resolver first wakes it.
async fn the_resolvers_writes_share_the_targets_in_flight_slots(url: String) {
    let mut config = EngineConfig::default();
    config.dispatch_default.max_in_flight = 1;
    // Only a wake-up, not the idle loops' polls, can get the second write out in time.
    config.pipeline.poll_interval_ms = 600_000;
    let w = world_with(&url, config).await;
    let running = Running::start(&w);
    w.clock.advance(10);
    w.system("teams")
        .inject(MemoryFault::Slow(Duration::from_millis(300)));
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.system("d365").person_sets(&user("d365", 1), Away);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    until("both writes", async || writes_to(&w, "teams") == 2).await;
    running.stop().await;
    assert_eq!(w.engine.store().queue_depths().await.unwrap().outbox, 0);
    assert_eq!(writes_to(&w, "teams"), 2);
}

/// A slow answer to one write does not hold the slots of the writes begun with it: with two
/// slots, a write decided while one of a batch's two writes is still on its way goes out at
/// once, not when the slow one ends.
async fn a_slow_write_does_not_hold_the_slots_of_the_writes_begun_with_it(url: String) {
    let mut config = EngineConfig::default();
    config.dispatch_default.max_in_flight = 2;
    config.pipeline.poll_interval_ms = 600_000;
    let clock = Arc::new(ManualClock::new(T0));
    let w = World::with_clock(&url, clock.clone(), &systems(&clock), 3, config).await;
    let running = Running::start(&w);
    w.clock.advance(10);
    w.system("teams")
        .inject(MemoryFault::Slow(Duration::from_secs(3)));
    w.system("d365").person_sets(&user("d365", 0), Busy);
    w.system("d365").person_sets(&user("d365", 1), Away);
    w.engine.ingest_batch(w.take_deliveries()).await.unwrap();
    until("the fast write of the two", async || {
        writes_to(&w, "teams") == 1
    })
    .await;
    w.system("d365").person_sets(&user("d365", 2), Busy);
    w.engine.ingest_batch(w.take_deliveries()).await.unwrap();
    until("the write decided meanwhile", async || {
        w.system("teams").state(&user("teams", 2)) == Some(Busy)
    })
    .await;
    assert_eq!(
        writes_to(&w, "teams"),
        2,
        "the slow write is still on its way"
    );
    running.stop().await;
}

on_both_backends!(
    the_running_engine_propagates_changes_and_stops_on_shutdown,
    a_change_reaches_the_other_system_and_its_echo_is_not_propagated,
    a_redelivered_webhook_is_accepted_once,
    a_burst_for_one_person_becomes_one_write,
    a_lost_webhook_is_repaired_by_the_next_reconcile,
    a_reconcile_read_that_fails_transiently_is_retried_within_the_pass,
    a_write_refused_by_the_target_is_repaired_by_reconcile_as_drift,
    a_throttled_write_waits_for_retry_after,
    a_server_error_is_retried_with_backoff,
    a_write_with_an_unknown_outcome_is_retried_and_its_echo_still_suppressed,
    a_crash_between_begin_and_finish_rewrites_once_after_restart,
    acknowledged_observations_survive_a_restart,
    an_unknown_user_is_recorded_and_dropped,
    a_transient_offline_is_debounced_through_the_inbox,
    sticky_echo_settles_with_the_persons_real_state,
    the_resolver_makes_the_writes_it_decides_and_their_echoes_stay_home,
    the_resolvers_writes_keep_to_the_targets_rate_limit,
    the_resolvers_writes_share_the_targets_in_flight_slots,
    a_slow_write_does_not_hold_the_slots_of_the_writes_begun_with_it,
);
