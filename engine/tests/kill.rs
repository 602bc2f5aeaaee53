//! Restart safety under SIGKILL: a child process ingests, resolves and dispatches as fast as it
//! can, printing each delivery key once `ingest` has returned (the point where a webhook is
//! acknowledged). The parent kills it with SIGKILL at random moments, then restarts the engine on
//! the same database and checks that every acknowledged delivery is there and gets resolved.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{user, TestDb, World, T0};
use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::memory::MemorySystem;
use presync_engine::Availability;
use rand::Rng;

const CHILD_ENV: &str = "PRESYNC_KILL_CHILD_URL";

fn systems(clock: &Arc<ManualClock>) -> Vec<MemorySystem> {
    vec![
        MemorySystem::new("d365", clock.clone()),
        MemorySystem::new("teams", clock.clone()),
    ]
}

/// The child's body: runs only when the parent starts this binary with `CHILD_ENV` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_entry() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let clock = Arc::new(ManualClock::new(T0));
    let w = World::with_clock(
        &url,
        clock.clone(),
        &systems(&clock),
        20,
        EngineConfig::default(),
    )
    .await;
    w.engine.recover().await.unwrap();
    let mut rng = rand::rng();
    let mut i = 0usize;
    loop {
        i += 1;
        clock.advance(1);
        let s = &w.systems[rng.random_range(0..2)];
        let a = Availability::ALL[rng.random_range(0..Availability::ALL.len())];
        s.person_sets(&user(s.name().as_str(), rng.random_range(0..20)), a);
        for mut d in w.take_deliveries() {
            // Sequences restart with each child: make every child's deliveries distinct.
            d.delivery_key = format!("{}:{}", std::process::id(), d.delivery_key);
            let key = d.delivery_key.clone();
            w.engine.ingest(d).await.unwrap();
            println!("ack {key}");
        }
        if i % 3 == 0 {
            w.engine.resolve_pending().await.unwrap();
            w.engine.dispatch_pending().await.unwrap();
        }
    }
}

fn kill_and_check(url: &str, rounds: usize) {
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = Vec::new();
    let mut rng = rand::rng();
    for _ in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = rng.random_range(20..400);
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(key) = line.split_once("ack ").map(|(_, k)| k) {
                acknowledged.push(key.to_owned());
                acks += 1;
                if acks >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(
        !acknowledged.is_empty(),
        "the child never acknowledged anything"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Well past every child's claims, whatever its clock reached.
        let clock = Arc::new(ManualClock::new(T0 + 24 * 3_600_000));
        let mut w = World::with_clock(
            url,
            clock.clone(),
            &systems(&clock),
            20,
            EngineConfig::default(),
        )
        .await;
        w.restart().await;
        w.engine.resolve_pending().await.unwrap();
        let store = w.engine.store();
        let mut missing = Vec::new();
        for key in &acknowledged {
            if store.history_for_delivery(key).await.unwrap().is_empty() {
                missing.push(key.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged deliveries lost: {missing:?}",
            missing.len(),
            acknowledged.len()
        );
        assert_eq!(store.queue_depths().await.unwrap().inbox, 0);
        store.close().await;
    });
}

#[test]
fn acknowledged_deliveries_survive_sigkill_on_sqlite() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let db = TestDb::sqlite();
    kill_and_check(&db.url(), 5);
}

#[test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL"
)]
fn acknowledged_deliveries_survive_sigkill_on_postgres() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::postgres());
    kill_and_check(&db.url(), 5);
    rt.block_on(db.cleanup());
}
