//! The store contract, behaviour by behaviour, on SQLite and (with `PRESYNC_TEST_POSTGRES_URL`)
//! on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{rep, user, TestDb, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::memory::MemorySystem;
use presync_engine::store::{Enqueued, FinishedWrite, Store, StoreError, WriteResult};
use presync_engine::{Availability, Desired, Observation, RepId, Representative};

fn person(id: &str, ids: &[(&str, &str)]) -> Representative {
    Representative {
        id: RepId(id.into()),
        display_name: format!("Person {id}"),
        external_ids: ids
            .iter()
            .map(|(s, e)| ((*s).into(), (*e).into()))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn the_directory_looks_up_both_ways_and_refuses_a_taken_id(url: String) {
    let store = Store::open(&url).await.unwrap();
    store
        .upsert_representative(&person("ann", &[("d365", "sys-1"), ("teams", "aad-1")]), T0)
        .await
        .unwrap();
    store
        .upsert_representative(&person("bob", &[("d365", "sys-2")]), T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .rep_for(&"teams".into(), &"aad-1".into())
            .await
            .unwrap(),
        Some(RepId("ann".into()))
    );
    assert_eq!(
        store
            .rep_for(&"teams".into(), &"aad-9".into())
            .await
            .unwrap(),
        None
    );
    let ann = store
        .representative(&RepId("ann".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ann.external_ids.get(&"d365".into()).unwrap().as_str(),
        "sys-1"
    );
    let err = store
        .upsert_representative(&person("bob", &[("d365", "sys-1")]), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ExternalIdTaken { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("already belongs to representative ann"),
        "{err}"
    );
    // Updating replaces the ids; nothing else changed on the failed update.
    store
        .upsert_representative(&person("ann", &[("d365", "sys-1"), ("teams", "aad-7")]), T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .rep_for(&"teams".into(), &"aad-1".into())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.representatives().await.unwrap().len(), 2);
    assert_eq!(store.external_ids(&"d365".into()).await.unwrap().len(), 2);
    assert!(store
        .delete_representative(&RepId("bob".into()))
        .await
        .unwrap());
    assert_eq!(
        store
            .rep_for(&"d365".into(), &"sys-2".into())
            .await
            .unwrap(),
        None
    );
    store.close().await;
}

async fn the_inbox_deduplicates_by_delivery_key(url: String) {
    let (w, o) = world_after_a_change(&url).await;
    let store = w.engine.store();
    let mut other = o.clone();
    other.delivery_key.push_str("-other");
    let out = store
        .enqueue(&[o.clone(), other.clone(), o.clone()], T0)
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Enqueued::Accepted, Enqueued::Accepted, Enqueued::Duplicate]
    );
    let again = store.enqueue(&[other, o], T0).await.unwrap();
    assert_eq!(again, vec![Enqueued::Duplicate, Enqueued::Duplicate]);
    assert_eq!(store.queue_depths().await.unwrap().inbox, 2);
}

/// `enqueue` stores a large batch a chunk of rows per statement: every row is stored, and each
/// outcome lines up with its observation across the chunks.
async fn a_batch_larger_than_one_statement_is_stored_whole(url: String) {
    let (w, o) = world_after_a_change(&url).await;
    let store = w.engine.store();
    store.enqueue(std::slice::from_ref(&o), T0).await.unwrap();
    // 2,500 new deliveries with the stored one at 1,700 (in the second chunk).
    let mut batch: Vec<_> = (0..2_500)
        .map(|i| {
            let mut x = o.clone();
            x.delivery_key = format!("{}-{i}", o.delivery_key);
            x
        })
        .collect();
    batch.insert(1_700, o);
    let out = store.enqueue(&batch, T0).await.unwrap();
    assert_eq!(out.len(), 2_501);
    for (i, e) in out.iter().enumerate() {
        let want = if i == 1_700 {
            Enqueued::Duplicate
        } else {
            Enqueued::Accepted
        };
        assert_eq!(*e, want, "observation {i}");
    }
    assert_eq!(store.queue_depths().await.unwrap().inbox, 2_501);
}

async fn an_inbox_claim_is_exclusive_until_its_lease_ends(url: String) {
    let (w, o) = world_after_a_change(&url).await;
    let store = w.engine.store();
    store.enqueue(&[o], T0).await.unwrap();
    let first = store
        .claim_inbox("a", T0 + 10, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(store
        .claim_inbox("b", T0 + 999, T0 + 2_000, 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .claim_inbox("b", T0 + 1_001, T0 + 2_000, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    // The first claimant lost it: resolving under its name does nothing.
    let resolved = store
        .resolve(first[0].as_ref().unwrap(), "a", T0 + 1_002, |_, _| {
            unreachable!("a lost claim must not be resolved")
        })
        .await
        .unwrap();
    assert!(matches!(
        resolved,
        presync_engine::store::Resolved::LostClaim
    ));
}

async fn the_outbox_keeps_only_the_latest_desired_state(url: String) {
    let w = world(&url).await;
    for a in [
        Availability::Busy,
        Availability::Away,
        Availability::DoNotDisturb,
    ] {
        w.clock.advance(5);
        w.system("d365").person_sets(&user("d365", 0), a);
    }
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    let store = w.engine.store();
    let now = w.clock.advance(1);
    let rows = store
        .claim_outbox(&"teams".into(), "a", now, now + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].desired.availability(),
        Some(Availability::DoNotDisturb)
    );
    assert_eq!(rows[0].seq, 3, "replaced twice");
}

async fn a_newer_desired_state_survives_the_write_in_flight(url: String) {
    let w = world(&url).await;
    w.clock.advance(5);
    w.system("d365")
        .person_sets(&user("d365", 0), Availability::Busy);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    let store = w.engine.store();
    let now = w.clock.advance(1);
    let claimed = store
        .claim_outbox(&"teams".into(), "a", now, now + 30_000, 10)
        .await
        .unwrap();
    let (row, exp) = store
        .begin_write(&rep(0), &"teams".into(), "a", now, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row, claimed[0]);
    assert!(
        exp.is_some(),
        "the echo expectation is recorded before the write"
    );
    // A newer change arrives while the write is on the wire.
    w.clock.advance(5);
    w.system("d365")
        .person_sets(&user("d365", 0), Availability::Away);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    store
        .finish_write(&row, "a", exp, w.clock.advance(1), &WriteResult::Done)
        .await
        .unwrap();
    let now = w.clock.advance(1);
    let next = store
        .claim_outbox(&"teams".into(), "b", now, now + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].desired.availability(), Some(Availability::Away));
    let view = store.rep_view(&rep(0)).await.unwrap();
    let written = view
        .systems
        .get(&"teams".into())
        .unwrap()
        .written
        .clone()
        .unwrap();
    assert_eq!(written.availability, Some(Availability::Busy));
    // The same record, listed for the whole system (what Teams keep-alive adopts).
    let all = store.written_states(&"teams".into()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1, written);
    assert!(store
        .written_states(&"d365".into())
        .await
        .unwrap()
        .is_empty());
}

/// `finish_writes` records a batch of confirmed writes with one statement per table: a write
/// that outlived its claim and ends after a newer one does not take the record of what was
/// written backwards, and the rest of its batch is recorded as usual.
async fn a_batch_of_writes_never_records_an_older_write_over_a_newer_one(url: String) {
    let w = world_of(&url, 2).await;
    let store = w.engine.store().clone();
    let teams: presync_engine::SystemId = "teams".into();
    let change = |i: usize, a: Availability| {
        w.clock.advance(5);
        w.system("d365").person_sets(&user("d365", i), a);
    };
    let resolve = || async {
        for d in w.take_deliveries() {
            w.engine.ingest(d).await.unwrap();
        }
        w.engine.resolve_pending().await.unwrap();
    };
    // Rep 0 goes Busy; "a" claims the write with a short lease and stalls.
    change(0, Availability::Busy);
    resolve().await;
    let now = w.clock.advance(1);
    let stale = store
        .claim_writes(&teams, "a", now, now + 100, 10, 60_000)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    // Its lease runs out; rep 0 goes Away and rep 1 Busy, and "b" writes both.
    w.clock.advance(200);
    change(0, Availability::Away);
    change(1, Availability::Busy);
    resolve().await;
    let now = w.clock.advance(1);
    let fresh = store
        .claim_writes(&teams, "b", now, now + 30_000, 10, 60_000)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 2);
    let finished = |claimed: Vec<(presync_engine::store::OutboxRow, Option<i64>)>, at| {
        claimed
            .into_iter()
            .map(|(row, expectation)| FinishedWrite {
                row,
                expectation,
                at,
                result: WriteResult::Done,
            })
            .collect::<Vec<_>>()
    };
    let at = w.clock.advance(1);
    store
        .finish_writes(&finished(fresh, at), "b", |_| true)
        .await
        .unwrap();
    // The stalled write ends now, after the newer one.
    let at = w.clock.advance(1);
    store
        .finish_writes(&finished(stale, at), "a", |_| true)
        .await
        .unwrap();
    let written = |i: usize| {
        let store = store.clone();
        let teams = teams.clone();
        async move {
            store.rep_view(&rep(i)).await.unwrap().systems[&teams]
                .written
                .clone()
                .unwrap()
        }
    };
    assert_eq!(written(0).await.availability, Some(Availability::Away));
    assert_eq!(written(1).await.availability, Some(Availability::Busy));
    // Nothing is left to write, and each write has its history row.
    assert_eq!(store.queue_depths().await.unwrap().outbox, 0);
    let ok = store
        .history(&rep(0), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|h| h.rule == "write" && h.outcome == "ok")
        .count();
    assert_eq!(ok, 2);
}

async fn a_failed_write_is_released_for_retry_or_dropped_when_refused(url: String) {
    let w = world(&url).await;
    w.clock.advance(5);
    w.system("d365")
        .person_sets(&user("d365", 0), Availability::Busy);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    let store = w.engine.store();
    let teams = "teams".into();
    let now = w.clock.advance(1);
    store
        .claim_outbox(&teams, "a", now, now + 30_000, 10)
        .await
        .unwrap();
    let (row, exp) = store
        .begin_write(&rep(0), &teams, "a", now, 60_000)
        .await
        .unwrap()
        .unwrap();
    let transient = WriteResult::Failed {
        permanent: false,
        outcome_unknown: false,
        retry_at: now + 5_000,
        class: "transient".into(),
        message: "503".into(),
    };
    store
        .finish_write(&row, "a", exp, now, &transient)
        .await
        .unwrap();
    assert!(store
        .claim_outbox(&teams, "b", now + 4_999, now + 9_000, 10)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_outbox(&teams, "b", now + 5_000, now + 9_000, 10)
        .await
        .unwrap();
    assert_eq!(again[0].attempts, 1);
    let (row, exp) = store
        .begin_write(&rep(0), &teams, "b", now + 5_000, 60_000)
        .await
        .unwrap()
        .unwrap();
    let refused = WriteResult::Failed {
        permanent: true,
        outcome_unknown: false,
        retry_at: now,
        class: "rejected".into(),
        message: "400".into(),
    };
    store
        .finish_write(&row, "b", exp, now + 5_001, &refused)
        .await
        .unwrap();
    assert_eq!(store.queue_depths().await.unwrap().outbox, 0);
    assert!(
        store
            .rep_view(&rep(0))
            .await
            .unwrap()
            .expectations
            .is_empty(),
        "no echo expected of a refused write"
    );
    let h = store.history(&rep(0), 1).await.unwrap();
    assert_eq!(
        (h[0].rule.as_str(), h[0].outcome.as_str()),
        ("write", "rejected")
    );
    assert!(matches!(row.desired, Desired::Set(_)));
}

async fn a_lease_is_held_by_one_holder_until_it_ends(url: String) {
    let store = Store::open(&url).await.unwrap();
    assert!(store
        .acquire_lease("reconciler", "a", T0, T0 + 100)
        .await
        .unwrap());
    assert!(!store
        .acquire_lease("reconciler", "b", T0 + 50, T0 + 150)
        .await
        .unwrap());
    assert!(
        store
            .acquire_lease("reconciler", "a", T0 + 60, T0 + 160)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(!store
        .acquire_lease("reconciler", "b", T0 + 159, T0 + 250)
        .await
        .unwrap());
    assert!(store
        .acquire_lease("reconciler", "b", T0 + 161, T0 + 250)
        .await
        .unwrap());
    store.close().await;
}

async fn purge_removes_only_what_is_past_retention(url: String) {
    let w = world(&url).await;
    w.clock.advance(5);
    w.system("d365")
        .person_sets(&user("d365", 0), Availability::Busy);
    w.settle().await;
    let store = w.engine.store();
    let now = w.clock.advance(0);
    assert_eq!(
        store
            .purge(now, now - 1_000_000, now - 1_000_000)
            .await
            .unwrap(),
        0
    );
    let removed = store.purge(now + 700_000, now + 1, now + 1).await.unwrap();
    assert!(removed > 0);
    assert!(store.history(&rep(0), 10).await.unwrap().is_empty());
    let view = store.rep_view(&rep(0)).await.unwrap();
    assert_eq!(
        view.canonical.unwrap().availability,
        Availability::Busy,
        "state is never purged"
    );
}

async fn an_unreadable_inbox_row_is_set_aside_without_holding_up_the_others(url: String) {
    let (w, bad) = world_after_a_change(&url).await;
    w.engine.ingest(bad.clone()).await.unwrap();
    w.clock.advance(5);
    w.system("teams").take_deliveries();
    w.system("d365").take_deliveries();
    let good = w
        .system("teams")
        .person_sets(&user("teams", 0), Availability::Away)
        .unwrap();
    w.engine.ingest(good.clone()).await.unwrap();
    // Corrupt the first row behind the store's back (a bad upgrade, a disk fault): on SQLite
    // it waits in the intake file (its batch keeps the key, the rest is not an observation),
    // on PostgreSQL in the inbox.
    sqlx::any::install_default_drivers();
    let (file, sql) = match presync_engine::store::intake_path(&url) {
        Some(intake) => (
            format!("sqlite:{intake}"),
            "UPDATE intake_batches SET observations = json_array(json_object('delivery_key', $1))
             WHERE instr(observations, $1) > 0",
        ),
        None => (
            url.clone(),
            "UPDATE inbox SET observation = 'not json' WHERE delivery_key = $1",
        ),
    };
    let pool = sqlx::AnyPool::connect(&file).await.unwrap();
    let corrupted = sqlx::query(sql)
        .bind(bad.delivery_key.as_str())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(corrupted.rows_affected(), 1);
    pool.close().await;
    w.engine.resolve_pending().await.unwrap();
    let h = w
        .engine
        .store()
        .history_for_delivery(&good.delivery_key)
        .await
        .unwrap();
    assert_eq!(h.len(), 1, "the good row was held up");
    // The bad row is retried with backoff, then given up as a dead letter.
    for _ in 0..w.config.pipeline.max_attempts {
        w.clock.advance(10 * 60_000);
        w.engine.resolve_pending().await.unwrap();
    }
    let h = w
        .engine
        .store()
        .history_for_delivery(&bad.delivery_key)
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].rule.as_str(), h[0].outcome.as_str()),
        ("failed", "dropped")
    );
    assert!(h[0].detail.contains("corrupt"), "{}", h[0].detail);
    assert_eq!(w.engine.store().queue_depths().await.unwrap().inbox, 0);
    assert_eq!(
        w.engine
            .stats()
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// Make the database refuse history rows of `system` user `user` with rule `rule`: a fault
/// in one row of a batch (a constraint, a disk error) that the others must not share.
async fn refuse_history(url: &str, system: &str, user: &str, rule: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let when =
        format!("NEW.system = '{system}' AND NEW.external_id = '{user}' AND NEW.rule = '{rule}'");
    if url.starts_with("postgres") {
        sqlx::query(
            "CREATE FUNCTION refuse_history() RETURNS trigger AS $$
             BEGIN RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON history FOR EACH ROW WHEN ({when})
             EXECUTE FUNCTION refuse_history()"
        ))
        .execute(&pool)
        .await
        .unwrap();
    } else {
        sqlx::query(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON history WHEN {when}
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

async fn stop_refusing_history(url: &str) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let sql = if url.starts_with("postgres") {
        "DROP TRIGGER refuse ON history"
    } else {
        "DROP TRIGGER refuse"
    };
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn a_row_that_fails_in_a_resolved_batch_is_retried_alone(url: String) {
    let w = world_of(&url, 3).await;
    refuse_history(&url, "d365", "d365-user-1", "last_writer_wins").await;
    w.clock.advance(5);
    let mut keys = Vec::new();
    for i in 0..3 {
        let d = w
            .system("d365")
            .person_sets(&user("d365", i), Availability::Busy)
            .unwrap();
        keys.push(d.delivery_key.clone());
    }
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    assert_eq!(w.engine.resolve_pending().await.unwrap(), 3, "one batch");
    let store = w.engine.store();
    for (i, key) in keys.iter().enumerate() {
        let h = store.history_for_delivery(key).await.unwrap();
        assert_eq!(h.len(), usize::from(i != 1), "rep {i}: {h:?}");
    }
    assert_eq!(store.queue_depths().await.unwrap().inbox, 1);
    let now = w.clock.advance(1);
    let queued = store
        .claim_outbox(&"teams".into(), "nobody", now, now, 10)
        .await
        .unwrap();
    assert_eq!(
        queued.len(),
        2,
        "the failed row's writes were rolled back with it"
    );
    // Once the fault is gone, the row is resolved on its retry.
    stop_refusing_history(&url).await;
    w.clock.advance(60_000);
    w.engine.resolve_pending().await.unwrap();
    assert_eq!(store.history_for_delivery(&keys[1]).await.unwrap().len(), 1);
    assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
}

async fn a_write_whose_outcome_cannot_be_recorded_is_made_again_alone(url: String) {
    let w = world_of(&url, 3).await;
    w.clock.advance(5);
    for i in 0..3 {
        w.system("d365")
            .person_sets(&user("d365", i), Availability::Busy);
    }
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    refuse_history(&url, "teams", "teams-user-1", "write").await;
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 3);
    let teams = w.system("teams");
    assert_eq!(teams.writes().len(), 3);
    let store = w.engine.store();
    assert_eq!(
        store.queue_depths().await.unwrap().outbox,
        1,
        "the two recorded writes are done; the third stays claimed"
    );
    for i in [0, 2] {
        let view = store.rep_view(&rep(i)).await.unwrap();
        let written = view.systems[&"teams".into()].written.clone().unwrap();
        assert_eq!(written.availability, Some(Availability::Busy), "rep {i}");
    }
    // Its claim runs out and it is written again, as after a crash mid-write.
    stop_refusing_history(&url).await;
    w.clock.advance(w.config.pipeline.lease_ms + 1);
    assert_eq!(w.engine.dispatch_pending().await.unwrap(), 1);
    let again: Vec<_> = teams
        .writes()
        .into_iter()
        .filter(|r| r.user == user("teams", 1))
        .collect();
    assert_eq!(again.len(), 2);
    assert_eq!(store.queue_depths().await.unwrap().outbox, 0);
}

async fn world(url: &str) -> World {
    world_of(url, 1).await
}

/// A one-representative world whose D365 side has just gone Busy, with that change's
/// observation (not yet ingested).
async fn world_after_a_change(url: &str) -> (World, Observation) {
    let w = world(url).await;
    w.clock.advance(5);
    let o = w
        .system("d365")
        .person_sets(&user("d365", 0), Availability::Busy)
        .unwrap();
    (w, o)
}

async fn world_of(url: &str, reps: usize) -> World {
    let clock = Arc::new(ManualClock::new(T0));
    let systems = vec![
        MemorySystem::new("d365", clock.clone()),
        MemorySystem::new("teams", clock.clone()),
    ];
    World::with_clock(url, clock, &systems, reps, EngineConfig::default()).await
}

on_both_backends!(
    a_batch_of_writes_never_records_an_older_write_over_a_newer_one,
    a_batch_larger_than_one_statement_is_stored_whole,
    the_directory_looks_up_both_ways_and_refuses_a_taken_id,
    the_inbox_deduplicates_by_delivery_key,
    an_inbox_claim_is_exclusive_until_its_lease_ends,
    the_outbox_keeps_only_the_latest_desired_state,
    a_newer_desired_state_survives_the_write_in_flight,
    a_failed_write_is_released_for_retry_or_dropped_when_refused,
    a_lease_is_held_by_one_holder_until_it_ends,
    purge_removes_only_what_is_past_retention,
    an_unreadable_inbox_row_is_set_aside_without_holding_up_the_others,
    a_row_that_fails_in_a_resolved_batch_is_retried_alone,
    a_write_whose_outcome_cannot_be_recorded_is_made_again_alone,
);

/// How many history rows one delivery has.
async fn decisions_of(store: &Store, key: &str) -> usize {
    store.history_for_delivery(key).await.unwrap().len()
}

/// Rows in `table` of the SQLite file `file`, read behind the store's back.
async fn rows_in(file: &str, table: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{file}"))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// On SQLite an acknowledged observation waits in the intake file, is moved into the inbox by
/// the pipeline and resolved once; a crash between the move's commit and the intake's delete
/// (the row in both files) neither resolves it again nor lets it in again as new.
#[tokio::test]
async fn on_sqlite_an_observation_moves_from_the_intake_to_the_inbox_once() {
    let db = TestDb::sqlite();
    let url = db.url();
    let file = url.strip_prefix("sqlite:").unwrap().to_owned();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, o) = world_after_a_change(&url).await;
    assert_eq!(
        w.engine.ingest(o.clone()).await.unwrap(),
        Enqueued::Accepted
    );
    assert_eq!(rows_in(&intake, "intake_batches").await, 1);
    assert_eq!(rows_in(&file, "inbox").await, 0);
    let store = w.engine.store().clone();
    assert_eq!(store.queue_depths().await.unwrap().inbox, 1);
    assert_eq!(
        store.enqueue(std::slice::from_ref(&o), T0).await.unwrap(),
        vec![Enqueued::Duplicate]
    );

    w.engine.resolve_pending().await.unwrap();
    assert_eq!(decisions_of(&store, &o.delivery_key).await, 1);
    assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
    // Moved and resolved: a redelivery is a duplicate, found in the inbox.
    assert_eq!(
        store.enqueue(std::slice::from_ref(&o), T0).await.unwrap(),
        vec![Enqueued::Duplicate]
    );
    store.close().await;
    assert_eq!(
        rows_in(&intake, "intake_batches").await,
        0,
        "closing deletes moved batches"
    );

    // The crash: the row is back in the intake, and a restarted store knows nothing moved.
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO intake_batches (received_at, observations) VALUES ($1, $2)")
        .bind(T0)
        .bind(format!("[{}]", serde_json::to_string(&o).unwrap()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = Store::open(&url).await.unwrap();
    assert_eq!(
        store.queue_depths().await.unwrap().inbox,
        1,
        "not moved yet"
    );
    // However long presync was down: the inbox keeps the key while the intake holds it.
    store.purge(T0 + 100, T0 + 1_000_000, T0).await.unwrap();
    let claimed = store
        .claim_and_resolve("restarted", T0 + 100, T0 + 1_000, 10, |_, _, _| {
            unreachable!("a moved row is not resolved again")
        })
        .await
        .unwrap();
    assert_eq!(claimed.map(|c| c.len()), Some(0));
    assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
    assert_eq!(decisions_of(&store, &o.delivery_key).await, 1);
    store.close().await;
    assert_eq!(rows_in(&intake, "intake_batches").await, 0);
}

/// The intake's keys live in memory: those of batches that were never moved are read back
/// from the file when it is opened again, and a batch moves into the inbox as the very
/// observations it was given.
#[tokio::test]
async fn on_sqlite_an_unmoved_batch_is_read_back_when_the_store_is_opened_again() {
    let db = TestDb::sqlite();
    let url = db.url();
    let (w, o) = world_after_a_change(&url).await;
    let store = w.engine.store().clone();
    let one = std::slice::from_ref(&o);
    assert_eq!(
        store.enqueue(one, T0).await.unwrap(),
        vec![Enqueued::Accepted]
    );
    store.close().await;

    let store = Store::open(&url).await.unwrap();
    assert_eq!(
        store.enqueue(one, T0).await.unwrap(),
        vec![Enqueued::Duplicate]
    );
    assert_eq!(store.queue_depths().await.unwrap().inbox, 1);
    let claimed = store
        .claim_inbox("restarted", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].as_ref().unwrap().observation, o);
    store.close().await;
}

/// The intake numbers its batches itself: once every batch is moved and deleted the file holds
/// none, and the next batch still gets an id above those the pipeline moved past, so it is
/// moved and resolved (an id counted again from the file's largest would be 1, taken for moved).
#[tokio::test]
async fn on_sqlite_batch_ids_go_on_rising_once_every_batch_is_deleted() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, o) = world_after_a_change(&url).await;
    let store = w.engine.store().clone();
    assert_eq!(
        w.engine.ingest(o.clone()).await.unwrap(),
        Enqueued::Accepted
    );
    // Moved batches are deleted a second after the last delete at the latest.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    w.engine.resolve_pending().await.unwrap();
    assert_eq!(decisions_of(&store, &o.delivery_key).await, 1);
    assert_eq!(
        rows_in(&intake, "intake_batches").await,
        0,
        "moved and deleted"
    );

    w.clock.advance(5);
    let again = w
        .system("d365")
        .person_sets(&user("d365", 0), Availability::Available)
        .unwrap();
    assert_eq!(
        w.engine.ingest(again.clone()).await.unwrap(),
        Enqueued::Accepted
    );
    assert_eq!(w.engine.resolve_pending().await.unwrap(), 1);
    assert_eq!(decisions_of(&store, &again.delivery_key).await, 1);
    assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
    store.close().await;
}

/// After a restart the intake numbers above the batches it found in the file, even once the
/// pipeline has moved and deleted them all: the 600-second soak lost 532 acknowledged webhooks
/// to a version that started again from the file's largest id, which was then none, so the
/// batches after each such restart got ids the pipeline had already moved past and were
/// deleted unmoved.
#[tokio::test]
async fn on_sqlite_a_reopened_intake_numbers_above_the_batches_it_found() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, o) = world_after_a_change(&url).await;
    let keyed = |i: usize| Observation {
        delivery_key: format!("{}-{i}", o.delivery_key),
        ..o.clone()
    };
    let store = w.engine.store().clone();
    for i in 0..3 {
        store.enqueue(&[keyed(i)], T0).await.unwrap();
    }
    // The crash: three batches acknowledged, none moved.
    store.close().await;

    let store = Store::open(&url).await.unwrap();
    // Moved batches are deleted a second after the last delete at the latest.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let claimed = store
        .claim_inbox("restarted", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(
        rows_in(&intake, "intake_batches").await,
        0,
        "moved and deleted"
    );
    assert_eq!(
        store.enqueue(&[keyed(3)], T0).await.unwrap(),
        vec![Enqueued::Accepted]
    );
    let claimed = store
        .claim_inbox("restarted", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the batch after the leftovers is moved");
    assert_eq!(
        claimed[0].as_ref().unwrap().observation.delivery_key,
        keyed(3).delivery_key
    );
    store.close().await;
}

/// Close the world's store and give its intake file the table an older version made
/// (`create`) instead of today's; a connection to the file, to fill it.
async fn as_an_older_version_left_it(w: &World, intake: &str, create: &str) -> sqlx::AnyPool {
    w.engine.store().close().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
        .await
        .unwrap();
    for sql in ["DROP TABLE intake_batches", create] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool
}

/// An intake file whose batches an older version numbered with `AUTOINCREMENT` (a page more
/// written at every commit) is rebuilt without it when opened, its batches and their ids kept,
/// and numbering goes on above them.
#[tokio::test]
async fn on_sqlite_an_intake_numbered_by_autoincrement_is_rebuilt_when_opened() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, o) = world_after_a_change(&url).await;
    let pool = as_an_older_version_left_it(
        &w,
        &intake,
        "CREATE TABLE intake_batches (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            received_at   BIGINT NOT NULL,
            observations  TEXT NOT NULL
        )",
    )
    .await;
    sqlx::query("INSERT INTO intake_batches (id, received_at, observations) VALUES (7, $1, $2)")
        .bind(T0)
        .bind(format!("[{}]", serde_json::to_string(&o).unwrap()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = Store::open(&url).await.unwrap();
    let one = std::slice::from_ref(&o);
    assert_eq!(
        store.enqueue(one, T0).await.unwrap(),
        vec![Enqueued::Duplicate]
    );
    let mut next = o.clone();
    next.delivery_key = format!("{}-next", o.delivery_key);
    assert_eq!(
        store
            .enqueue(std::slice::from_ref(&next), T0)
            .await
            .unwrap(),
        vec![Enqueued::Accepted]
    );
    let claimed = store
        .claim_inbox("upgraded", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    let keys: Vec<_> = claimed
        .iter()
        .map(|c| c.as_ref().unwrap().observation.delivery_key.clone())
        .collect();
    assert_eq!(
        keys,
        vec![o.delivery_key.clone(), next.delivery_key.clone()]
    );
    store.close().await;
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
        .await
        .unwrap();
    let numbered: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE sql LIKE '%AUTOINCREMENT%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(numbered, 0, "no table is numbered by AUTOINCREMENT");
}

/// An intake file written by a version that stored a row per observation: its rows become
/// batches when it is opened, and are moved and deduplicated as any other.
#[tokio::test]
async fn on_sqlite_an_intake_file_of_rows_is_converted_when_opened() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, o) = world_after_a_change(&url).await;
    let pool = as_an_older_version_left_it(
        &w,
        &intake,
        "CREATE TABLE intake (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_key  TEXT NOT NULL UNIQUE,
            system        TEXT NOT NULL,
            external_id   TEXT NOT NULL,
            observation   TEXT NOT NULL,
            received_at   BIGINT NOT NULL
        )",
    )
    .await;
    sqlx::query(
        "INSERT INTO intake (delivery_key, system, external_id, observation, received_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(o.delivery_key.as_str())
    .bind(o.system.as_str())
    .bind(o.external_id.as_str())
    .bind(serde_json::to_string(&o).unwrap())
    .bind(T0)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(&url).await.unwrap();
    let one = std::slice::from_ref(&o);
    assert_eq!(
        store.enqueue(one, T0).await.unwrap(),
        vec![Enqueued::Duplicate]
    );
    let claimed = store
        .claim_inbox("upgraded", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].as_ref().unwrap().observation, o);
    store.close().await;
    let tables: i64 = {
        let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'intake'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(tables, 0, "the old table is gone");
}

/// A batch damaged behind presync's back (not JSON at all) is moved as one unreadable row, set
/// aside when claimed; the batches before and after it are not held up.
#[tokio::test]
async fn on_sqlite_a_damaged_batch_does_not_hold_up_the_others() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, first) = world_after_a_change(&url).await;
    let store = w.engine.store().clone();
    store
        .enqueue(std::slice::from_ref(&first), T0)
        .await
        .unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO intake_batches (received_at, observations) VALUES ($1, 'not json')")
        .bind(T0)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    w.clock.advance(5);
    let last = w
        .system("teams")
        .person_sets(&user("teams", 0), Availability::Away)
        .unwrap();
    store
        .enqueue(std::slice::from_ref(&last), T0)
        .await
        .unwrap();

    let claimed = store.claim_inbox("i", T0, T0 + 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].as_ref().unwrap().observation, first);
    assert!(claimed[1].is_err(), "the damaged batch is unreadable");
    assert_eq!(claimed[2].as_ref().unwrap().observation, last);
}

/// After a crash between moves and the intake's delete, the intake starts with batches the
/// inbox holds already, more than one claim moves: a claim moves on past them to the batches
/// after, instead of finding nothing to do while work waits (the SIGKILL test found it).
#[tokio::test]
async fn on_sqlite_a_claim_moves_past_batches_the_inbox_holds_already() {
    let db = TestDb::sqlite();
    let url = db.url();
    let intake = presync_engine::store::intake_path(&url).unwrap();
    let (w, first) = world_after_a_change(&url).await;
    let store = w.engine.store().clone();
    let redelivered: Vec<Observation> = (0..40)
        .map(|i| Observation {
            delivery_key: format!("{}-{i}", first.delivery_key),
            ..first.clone()
        })
        .collect();
    for o in &redelivered {
        store.enqueue(std::slice::from_ref(o), T0).await.unwrap();
    }
    w.engine.resolve_pending().await.unwrap();
    store.close().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite:{intake}"))
        .await
        .unwrap();
    for o in &redelivered {
        sqlx::query("INSERT INTO intake_batches (received_at, observations) VALUES ($1, $2)")
            .bind(T0)
            .bind(format!("[{}]", serde_json::to_string(o).unwrap()))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let store = Store::open(&url).await.unwrap();
    let new = Observation {
        delivery_key: format!("{}-new", first.delivery_key),
        ..first.clone()
    };
    store.enqueue(std::slice::from_ref(&new), T0).await.unwrap();
    let claimed = store
        .claim_inbox("restarted", T0, T0 + 1_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].as_ref().unwrap().observation, new);
    store.close().await;
}
