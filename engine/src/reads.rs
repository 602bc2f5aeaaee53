//! The reads the rules ask for ([`crate::rules::Decision::refresh`]: a held system's state
//! after a release, the Teams state presync looks at before it writes a session that could
//! hide a meeting), coalesced per system: one read of a system is in flight at a time, and the
//! users asked for meanwhile go into the next one, read together (Graph reads up to 650 users
//! a call). A burst of D365 changes asked for one single-user read of Teams per resolved batch,
//! thousands in all, which spent the rate limit the writes needed (BENCHMARKS.md, "burst").
//!
//! Each system has its own queue, so a slow or throttled read of one does not delay the others'.

use std::collections::{BTreeMap, BTreeSet};
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

/// Reads of one batch of users at most, a read that fails for a passing reason (a 429, a
/// timeout) included: such a read is made again after the wait the remote asked for (or
/// [`RETRY_WAIT`]), with what was asked for meanwhile. Past that, the next reconcile pass reads
/// them. (A release waits for this read: without it, D365 stayed as the hold left it until
/// the next pass.)
const ATTEMPTS: u32 = 4;
const RETRY_WAIT: Duration = Duration::from_millis(500);

/// Read what is asked for, one read at a time; ends with the engine.
async fn reader(
    inner: Weak<Inner>,
    system: SystemId,
    mut asked: mpsc::UnboundedReceiver<Vec<ExternalId>>,
) {
    let mut retry: Option<(BTreeSet<ExternalId>, u32)> = None;
    loop {
        let (mut users, attempt) = match retry.take() {
            Some(r) => r,
            None => match asked.recv().await {
                Some(first) => (first.into_iter().collect(), 1),
                None => return,
            },
        };
        while let Ok(more) = asked.try_recv() {
            users.extend(more);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let engine = Engine::from_inner(inner);
        let list: Vec<ExternalId> = users.iter().cloned().collect();
        match engine.try_read_back(&system, list, "refresh").await {
            Ok(()) => {}
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                let wait = e.retry_after().unwrap_or(RETRY_WAIT);
                debug!(system = %system, users = users.len(), error = %e, attempt,
                    retry_in_ms = wait.as_millis() as u64, "Read-back failed; trying again");
                drop(engine);
                tokio::time::sleep(wait).await;
                retry = Some((users, attempt + 1));
            }
            Err(e) => {
                warn!(system = %system, users = users.len(), error = %e, attempt,
                    "Read-back failed; the next reconcile pass reads them");
            }
        }
    }
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
