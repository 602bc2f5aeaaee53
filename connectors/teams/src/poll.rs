//! Polling mode: for tenants where a delegated service account is not acceptable, presync reads
//! presence app-only with `getPresencesByUserId` (650 ids a call) at a configurable interval and
//! feeds in observations only for the users whose state changed since the last poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use presync_engine::engine::Engine;
use presync_engine::{ConnectorError, ExternalId, Observation, ObservationKind, Origin, SystemId};
use tracing::{debug, warn};

use crate::connector::TeamsConnector;

/// How many polled observations go to the inbox in one transaction.
const INGEST_CHUNK: usize = 500;

/// Reads every directory user of the Teams system and reports what changed.
#[derive(Debug)]
pub struct Poller {
    engine: Engine,
    system: SystemId,
    connector: Arc<TeamsConnector>,
    /// The last native state seen per user.
    last: HashMap<String, String>,
}

impl Poller {
    /// A poller that has seen nothing yet (its first pass reports every user).
    pub fn new(engine: Engine, system: SystemId, connector: Arc<TeamsConnector>) -> Self {
        Poller {
            engine,
            system,
            connector,
            last: HashMap::new(),
        }
    }

    /// One pass over the directory's users of this system. Returns how many observations it
    /// stored.
    pub async fn poll_once(&mut self) -> Result<usize, ConnectorError> {
        let users: Vec<ExternalId> = self
            .engine
            .store()
            .external_ids(&self.system)
            .await
            .map_err(|e| ConnectorError::transient(format!("reading the directory: {e}")))?
            .into_iter()
            .map(|(_, ext)| ext)
            .collect();
        if users.is_empty() {
            return Ok(0);
        }
        // Users a write raced with are left out: the next pass reads them and reports what it
        // sees then.
        let read = self.connector.read_dated(&users).await?;
        let now = self.engine.now();
        let mut changed = Vec::new();
        let mut n = 0;
        for s in read.states {
            let user = s.external_id.as_str().to_owned();
            let first_sight = match self.last.get(&user) {
                Some(code) if *code == s.native.code => continue,
                Some(_) => false,
                None => true,
            };
            self.last.insert(user.clone(), s.native.code.clone());
            // The first pass is a snapshot of unknown date, not a change: like a reconcile read
            // of a user never observed, it must not beat dated states from other systems.
            let (kind, source_time) = if first_sight {
                (ObservationKind::Reconcile, 0)
            } else {
                (ObservationKind::Event, read.read_at)
            };
            changed.push(Observation {
                system: self.system.clone(),
                delivery_key: format!("teams:poll:{user}:{}", uuid::Uuid::new_v4().simple()),
                external_id: s.external_id,
                native: s.native,
                source_time,
                sequence: s.sequence,
                origin: Origin::Unknown,
                kind,
                observed_at: now,
                changed_by: None,
                automatic: None,
            });
            n += 1;
            // Stored in chunks: the first pass reports every user, and 100,000 observations
            // in one transaction would be held in memory all at once.
            if changed.len() == INGEST_CHUNK {
                self.ingest(std::mem::take(&mut changed)).await?;
            }
        }
        if !changed.is_empty() {
            self.ingest(changed).await?;
        }
        if n > 0 {
            debug!(changed = n, "Polled presence");
        }
        Ok(n)
    }

    async fn ingest(&self, observations: Vec<Observation>) -> Result<(), ConnectorError> {
        self.engine
            .ingest_batch(observations)
            .await
            .map_err(|e| ConnectorError::transient(format!("storing polled presence: {e}")))?;
        Ok(())
    }

    /// Poll every `interval` until the task is dropped. Failures are logged and retried at the
    /// next interval (the reconciler is the safety net).
    pub fn spawn(mut self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.poll_once().await {
                    warn!(error = %e, "Presence poll failed");
                }
            }
        })
    }
}
