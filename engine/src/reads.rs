//! The reads the rules ask for ([`crate::rules::Decision::refresh`]: a held system's state
//! after a release, the Teams state presync looks at before it writes a session that could
//! hide a meeting), coalesced per system: a few reads of a system are in flight at a time, and
//! the users asked for while they are go into the next one, read together (Graph reads up to
//! 650 users a call). A burst of D365 changes asked for one single-user read of Teams per resolved batch,
//! thousands in all, which spent the rate limit the writes needed (BENCHMARKS.md, "burst").
//!
//! Each system has its own queue, so a slow or throttled read of one does not delay the others'.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::engine::{Engine, Inner};
use crate::model::{ExternalId, SystemId};

/// Per system, the queue of its reader task (started the first time a read is asked for).
#[derive(Debug, Default)]
pub(crate) struct Reads {
    queues: Mutex<BTreeMap<SystemId, mpsc::UnboundedSender<Vec<ExternalId>>>>,
}

impl Reads {
    /// Read `users` of `system` soon, with whatever else is asked for meanwhile.
    pub(crate) fn ask(&self, inner: &Arc<Inner>, system: &SystemId, users: Vec<ExternalId>) {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = queues.entry(system.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(reader(Arc::downgrade(inner), system.clone(), rx));
            tx
        });
        let _ = queue.send(users);
    }
}

/// Reads of a user at most, a read that fails for a passing reason (a 429, a timeout)
/// included: such a user is read again after the wait the remote asked for (or [`RETRY_WAIT`]),
/// with what was asked for meanwhile. Past that, the next reconcile pass reads them. (A
/// release waits for this read: without it, D365 stayed as the hold left it until the next
/// pass.)
const ATTEMPTS: u32 = 4;
const RETRY_WAIT: Duration = Duration::from_millis(500);

/// Reads of one system in flight at once: a slow read does not hold up the next (a look at
/// Teams before a write waits for its read), and what is asked for while all are in flight is
/// read together in the next.
const IN_FLIGHT: usize = 4;

/// A read that failed for a passing reason: its users and attempts, when to try again.
type Retry = (Vec<(ExternalId, u32)>, Duration);

/// Read what is asked for; ends with the engine.
async fn reader(
    inner: Weak<Inner>,
    system: SystemId,
    mut asked: mpsc::UnboundedReceiver<Vec<ExternalId>>,
) {
    // Users to read, with the attempts made for each.
    let mut pending: BTreeMap<ExternalId, u32> = BTreeMap::new();
    let mut in_flight: tokio::task::JoinSet<Option<Retry>> = tokio::task::JoinSet::new();
    let mut retries: Vec<(tokio::time::Instant, Vec<(ExternalId, u32)>)> = Vec::new();
    let mut open = true;
    loop {
        let next_retry = retries.iter().map(|(at, _)| *at).min();
        tokio::select! {
            users = asked.recv(), if open => match users {
                Some(users) => {
                    for u in users {
                        pending.entry(u).or_insert(1);
                    }
                    while let Ok(more) = asked.try_recv() {
                        for u in more {
                            pending.entry(u).or_insert(1);
                        }
                    }
                }
                None => open = false,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(Some((users, wait))) = done {
                    retries.push((tokio::time::Instant::now() + wait, users));
                }
            }
            () = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)),
                if next_retry.is_some() => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = retries.drain(..).partition(|(at, _)| *at <= now);
                retries = later;
                for (_, users) in due {
                    for (u, attempt) in users {
                        let a = pending.entry(u).or_insert(attempt);
                        *a = (*a).max(attempt);
                    }
                }
            }
            else => return,
        }
        if !pending.is_empty() && in_flight.len() < IN_FLIGHT {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let users = std::mem::take(&mut pending);
            in_flight.spawn(read(Engine::from_inner(inner), system.clone(), users));
        }
    }
}

/// One read of `users`; what to try again, and when, if it failed for a passing reason.
async fn read(engine: Engine, system: SystemId, users: BTreeMap<ExternalId, u32>) -> Option<Retry> {
    let list: Vec<ExternalId> = users.keys().cloned().collect();
    let e = engine.try_read_back(&system, list, "refresh").await.err()?;
    let again: Vec<(ExternalId, u32)> = users
        .into_iter()
        .filter(|(_, attempt)| *attempt < ATTEMPTS && e.is_transient())
        .map(|(u, attempt)| (u, attempt + 1))
        .collect();
    if again.is_empty() {
        warn!(system = %system, error = %e, "Read-back failed; the next reconcile pass reads them");
        return None;
    }
    let wait = e.retry_after().unwrap_or(RETRY_WAIT);
    debug!(system = %system, users = again.len(), error = %e,
        retry_in_ms = wait.as_millis() as u64, "Read-back failed; trying again");
    Some((again, wait))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::EngineConfig;
    use crate::connector::Connector;
    use crate::memory::{MemoryFault, MemorySystem};
    use crate::model::Availability;
    use crate::store::Store;
    use crate::topology::TopologyConfig;

    /// A read a decision asked for that the remote throttles is made again after the wait it
    /// asked for (it used to be dropped until the next reconcile pass, minutes later), and the
    /// users asked for meanwhile are read with it, in one read.
    #[tokio::test]
    async fn a_throttled_read_is_made_again_with_what_was_asked_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("presync.db").display());
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let system = MemorySystem::new("a", clock.clone());
        for u in ["u1", "u2"] {
            system.add_user(u, Availability::Busy);
        }
        let connectors: BTreeMap<SystemId, Arc<dyn Connector>> =
            [(system.name(), system.connector() as Arc<dyn Connector>)].into();
        let topology = TopologyConfig::full_mesh(&connectors);
        let store = Store::open(&url).await.unwrap();
        let engine =
            Engine::with_clock(store, connectors, &topology, EngineConfig::default(), clock)
                .unwrap();
        system.inject(MemoryFault::RateLimited(Duration::from_millis(100)));
        engine.ask_read(&system.name(), vec![ExternalId("u1".into())]);
        engine.ask_read(&system.name(), vec![ExternalId("u2".into())]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let depth = engine.store().queue_depths().await.unwrap().inbox;
            if depth == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "inbox holds {depth}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            system.reads(),
            2,
            "one throttled read, then one of both users"
        );
    }
}
