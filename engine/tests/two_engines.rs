//! Two engines sharing one PostgreSQL database: each inbox and outbox row is processed once, no
//! write is made twice, the final state equals a single engine's on the same stream, and a
//! stopped engine's claimed work is taken over by the other. Needs `PRESYNC_TEST_POSTGRES_URL`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use common::{user, TestDb, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::engine::Engine;
use presync_engine::memory::MemorySystem;
use presync_engine::store::Enqueued;
use presync_engine::{Availability, Desired, Observation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REPS: usize = 12;
const STEPS: usize = 120;

/// A person's change: (system index, rep, availability).
fn stream(seed: u64) -> Vec<(usize, usize, Availability)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..STEPS)
        .map(|_| {
            (
                rng.random_range(0..2),
                rng.random_range(0..REPS),
                Availability::ALL[rng.random_range(0..Availability::ALL.len())],
            )
        })
        .collect()
}

struct Outcome {
    states: BTreeMap<usize, Vec<Option<Availability>>>,
    acknowledged: HashSet<String>,
    world: World,
    /// Decisions made and writes attempted, per engine.
    work: Vec<(u64, u64)>,
}

/// Play the stream on `engines` (one or two) sharing one database: deliveries are spread over
/// the engines, every fifth one is also delivered to the other engine, and the engines resolve
/// and dispatch concurrently.
async fn play(url: &str, two: bool, seed: u64) -> Outcome {
    let clock = Arc::new(ManualClock::new(T0));
    let systems = vec![
        MemorySystem::new("d365", clock.clone()),
        MemorySystem::new("teams", clock.clone()),
    ];
    let world =
        World::with_clock(url, clock.clone(), &systems, REPS, EngineConfig::default()).await;
    let engines: Vec<Engine> = if two {
        vec![world.engine.clone(), world.second_instance().await]
    } else {
        vec![world.engine.clone()]
    };
    let mut acknowledged = HashSet::new();
    let mut turn = 0usize;
    let changes = stream(seed);
    for (i, chunk) in changes.chunks(6).enumerate() {
        for &(sys, rep, a) in chunk {
            clock.advance(1);
            let s = &world.systems[sys];
            s.person_sets(&user(s.name().as_str(), rep), a);
        }
        deliver(&world, &engines, &mut turn, &mut acknowledged).await;
        run_all(&engines).await;
        if i % 3 == 0 {
            clock.advance(1);
        }
    }
    for _ in 0..30 {
        let moved = deliver(&world, &engines, &mut turn, &mut acknowledged).await;
        let worked = run_all(&engines).await;
        let depths = world.engine.store().queue_depths().await.unwrap();
        if !moved && !worked && depths.inbox == 0 && depths.outbox == 0 {
            break;
        }
        clock.advance(1_000);
    }
    let states = (0..REPS).map(|r| (r, world.states(r))).collect();
    let work = engines
        .iter()
        .map(|e| {
            let decided = e.stats().decisions().values().sum::<u64>();
            let wrote = e
                .stats()
                .writes_ok
                .load(std::sync::atomic::Ordering::Relaxed);
            (decided, wrote)
        })
        .collect();
    Outcome {
        states,
        acknowledged,
        world,
        work,
    }
}

async fn deliver(
    world: &World,
    engines: &[Engine],
    turn: &mut usize,
    acknowledged: &mut HashSet<String>,
) -> bool {
    let deliveries: Vec<Observation> = world.take_deliveries();
    let moved = !deliveries.is_empty();
    for (i, d) in deliveries.into_iter().enumerate() {
        *turn += 1;
        let first = &engines[*turn % engines.len()];
        if first.ingest(d.clone()).await.unwrap() == Enqueued::Accepted {
            acknowledged.insert(d.delivery_key.clone());
        }
        if i % 5 == 0 {
            let other = &engines[(*turn + 1) % engines.len()];
            other.ingest(d).await.unwrap();
        }
    }
    moved
}

/// Resolve, then dispatch, on every engine at once. True when any did work.
async fn run_all(engines: &[Engine]) -> bool {
    let resolved = futures::future::join_all(engines.iter().map(|e| e.resolve_pending())).await;
    let written = futures::future::join_all(engines.iter().map(|e| e.dispatch_pending())).await;
    resolved.into_iter().map(|r| r.unwrap()).sum::<usize>()
        + written.into_iter().map(|r| r.unwrap()).sum::<usize>()
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL"
)]
async fn two_engines_process_each_row_once_and_end_where_one_engine_does() {
    let pg = TestDb::postgres().await;
    let single_db = TestDb::sqlite();
    let seed = 20_261_121;
    let two = play(&pg.url(), true, seed).await;
    let one = play(&single_db.url(), false, seed).await;

    // Both engines did part of the work.
    assert!(
        two.work.iter().all(|&(d, w)| d > 0 && w > 0),
        "an engine sat idle: {:?}",
        two.work
    );
    // Each acknowledged delivery was resolved exactly once, by one of the two.
    let store = two.world.engine.store();
    for key in &two.acknowledged {
        let rows = store.history_for_delivery(key).await.unwrap();
        assert_eq!(
            rows.len(),
            1,
            "delivery {key} was resolved {} times: {rows:?}",
            rows.len()
        );
    }
    // No write was made twice: each (user, canonical version) reached each target once.
    for s in &two.world.systems {
        let mut seen: HashMap<(String, i64), usize> = HashMap::new();
        for w in s.writes() {
            let v = match &w.desired {
                Desired::Set(p) => p.version,
                Desired::Withdraw => -1,
            };
            *seen.entry((w.user.to_string(), v)).or_default() += 1;
        }
        let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            doubled.is_empty(),
            "{} received writes twice: {doubled:?}",
            s.name()
        );
    }
    // Both runs end in the same state, each representative agreeing across systems.
    assert_eq!(two.states, one.states);
    for states in two.states.values() {
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "not converged: {states:?}"
        );
    }
    two.world.engine.store().close().await;
    pg.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL"
)]
async fn a_stopped_engines_claimed_work_is_taken_over_by_the_other() {
    let pg = TestDb::postgres().await;
    let clock = Arc::new(ManualClock::new(T0));
    let systems = vec![
        MemorySystem::new("d365", clock.clone()),
        MemorySystem::new("teams", clock.clone()),
    ];
    let w = World::with_clock(
        &pg.url(),
        clock.clone(),
        &systems,
        2,
        EngineConfig::default(),
    )
    .await;
    let survivor = w.second_instance().await;
    let lease = w.config.pipeline.lease_ms;

    // The doomed instance claims the inbox row and stops before resolving it.
    clock.advance(10);
    w.system("d365")
        .person_sets(&user("d365", 0), Availability::Busy);
    for d in w.take_deliveries() {
        w.engine.ingest(d).await.unwrap();
    }
    let now = clock.advance(0);
    let claimed = w
        .engine
        .store()
        .claim_inbox("doomed", now, now + lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        survivor.resolve_pending().await.unwrap(),
        0,
        "claimed by the other"
    );
    clock.advance(lease + 1);
    assert_eq!(
        survivor.resolve_pending().await.unwrap(),
        1,
        "taken over after the lease"
    );

    // The doomed instance claims the outbox row and stops before writing.
    let now = clock.advance(0);
    let rows = w
        .engine
        .store()
        .claim_outbox(&"teams".into(), "doomed", now, now + lease, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(survivor.dispatch_pending().await.unwrap(), 0);
    clock.advance(lease + 1);
    assert_eq!(survivor.dispatch_pending().await.unwrap(), 1);
    assert_eq!(
        w.system("teams").state(&user("teams", 0)),
        Some(Availability::Busy)
    );
    assert_eq!(w.system("teams").writes().len(), 1);
    survivor.store().close().await;
    w.engine.store().close().await;
    pg.cleanup().await;
}
