//! [`TeamsConnector`]: the engine's [`Connector`] for Microsoft Teams presence.
//!
//! A user of this system is an Entra object id; its native state is the `availability/activity`
//! pair. In `session` mode presync's write is its own presence session, one input to the Teams
//! aggregate: the connector declares [`WriteSemantics::Contribution`], so the engine withdraws
//! presync's session when Teams itself reports a change, and [`TeamsConnector::keep_alive`]
//! re-posts the sessions presync owns before they fade or expire. In `preferred` mode presync
//! sets the user's preferred presence, which overrides everything while set
//! ([`WriteSemantics::Override`]): clearing it shows the person's own state again.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use presync_engine::clock::Clock;
use presync_engine::Millis;
use presync_engine::{
    Availability, Capabilities, Connector, ConnectorError, Desired, ExternalId, Mapped,
    NativeState, Origin, RemoteState, WriteSemantics,
};
use std::sync::Arc;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::client::GraphClient;
use crate::config::TeamsConfig;
use crate::mapping::{Mapping, Pair, WriteMode};

/// The connector kind, as named in config.
pub const KIND: &str = "teams";

/// A configuration the connector refuses.
#[derive(Debug, thiserror::Error)]
#[error("invalid Teams configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// What [`TeamsConnector::read_dated`] read.
#[derive(Debug, Clone)]
pub struct DatedRead {
    /// When the read started: the date of every state in it.
    pub read_at: Millis,
    pub states: Vec<RemoteState>,
    /// Users left out because a write to them ended during the read.
    pub racing: Vec<ExternalId>,
}

/// What a keep-alive pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepAlive {
    /// Sessions re-posted.
    pub refreshed: usize,
    /// Sessions that could not be re-posted (kept for the next pass).
    pub failed: usize,
}

/// The Teams connector.
#[derive(Debug)]
pub struct TeamsConnector {
    client: GraphClient,
    config: TeamsConfig,
    mapping: Mapping,
    /// The sessions presync owns, by user: the pair and when it was last posted.
    sessions: Mutex<HashMap<String, (Pair, Millis)>>,
    /// When each user's last write (a state or a withdrawal) was confirmed.
    last_write: std::sync::Mutex<HashMap<String, Millis>>,
    clock: Arc<dyn Clock>,
}

impl TeamsConnector {
    /// Validate the configuration (every problem at once) and build the connector.
    pub fn new(
        config: TeamsConfig,
        client: GraphClient,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let mapping = config
            .mapping()
            .map_err(|e| ConfigError(e.iter().map(ToString::to_string).collect()))?;
        Ok(TeamsConnector {
            client,
            config,
            mapping,
            sessions: Mutex::new(HashMap::new()),
            last_write: std::sync::Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// The Graph client (for subscriptions and the notification ingress).
    pub fn client(&self) -> &GraphClient {
        &self.client
    }

    fn session_expiration(&self) -> Duration {
        Duration::from_secs(self.config.session_expiration_secs)
    }

    /// Re-post every session presync owns that was last posted longer ago than
    /// `keep_alive_after_secs`, so an Available session never fades and no session expires.
    pub async fn keep_alive(&self) -> KeepAlive {
        let due: Vec<(String, Pair)> = {
            let sessions = self.sessions.lock().await;
            let after =
                i64::try_from(self.config.keep_alive_after_secs * 1_000).unwrap_or(i64::MAX);
            let now = self.clock.now();
            sessions
                .iter()
                .filter(|(_, (_, at))| now.saturating_sub(*at) >= after)
                .map(|(u, (p, _))| (u.clone(), p.clone()))
                .collect()
        };
        let mut report = KeepAlive::default();
        for (user, pair) in due {
            match self
                .client
                .set_presence(&user, &self.config.app_id, &pair, self.session_expiration())
                .await
            {
                Ok(()) => {
                    report.refreshed += 1;
                    let mut sessions = self.sessions.lock().await;
                    // A write that replaced the session meanwhile keeps its own pair and time.
                    if let Some((p, at)) = sessions.get_mut(&user) {
                        if *p == pair {
                            *at = self.clock.now();
                        }
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(user = %user, error = %e, "Keep-alive of presync's session failed");
                }
            }
        }
        if report.refreshed > 0 {
            debug!(refreshed = report.refreshed, "Sessions kept alive");
        }
        report
    }

    /// A bulk read for observations, dated at its start: Teams dates nothing, and a state read
    /// is known to hold from some moment of the read on, never later than a write of presync's
    /// that landed while the read was on the wire. Users whose write from this process ended
    /// during the read are left out, in [`DatedRead::racing`]: the read may predate the write,
    /// so the caller reads them again.
    pub async fn read_dated(&self, users: &[ExternalId]) -> Result<DatedRead, ConnectorError> {
        let read_at = self.clock.now();
        let (racing, states): (Vec<RemoteState>, Vec<RemoteState>) = self
            .read_all(users)
            .await?
            .into_iter()
            .partition(|s| self.written_since(s.external_id.as_str(), read_at));
        Ok(DatedRead {
            read_at,
            states,
            racing: racing.into_iter().map(|s| s.external_id).collect(),
        })
    }

    /// Whether a write of this process to `user` ended at or after `t`.
    fn written_since(&self, user: &str, t: Millis) -> bool {
        self.last_write
            .lock()
            .map(|w| w.get(user).is_some_and(|at| *at >= t))
            .unwrap_or(false)
    }

    /// Take over the sessions presync's records say it holds (`written`: user, the availability
    /// last written or `None` for a withdrawal, and when), for sessions this process did not post
    /// itself: after a restart, or those of another instance. A session this process posted
    /// more recently is kept as it is. Returns how many were adopted.
    pub async fn adopt_sessions(
        &self,
        written: impl IntoIterator<Item = (String, Option<Availability>, Millis)>,
    ) -> usize {
        if self.mapping.mode() != WriteMode::Session {
            return 0;
        }
        let mut sessions = self.sessions.lock().await;
        let mut adopted = 0;
        for (user, availability, at) in written {
            let user = user.to_ascii_lowercase();
            let mine = self
                .last_write
                .lock()
                .map(|w| w.get(&user).is_some_and(|t| *t >= at))
                .unwrap_or(false);
            if mine {
                continue;
            }
            match availability.and_then(|a| self.mapping.pair_for(a).cloned()) {
                Some(pair) => {
                    let newer = sessions.get(&user).is_none_or(|(_, t)| *t < at);
                    if newer {
                        sessions.insert(user, (pair, at));
                        adopted += 1;
                    }
                }
                None => {
                    sessions.remove(&user);
                }
            }
        }
        adopted
    }

    /// The users presync currently holds a session for.
    pub async fn owned_sessions(&self) -> Vec<String> {
        self.sessions.lock().await.keys().cloned().collect()
    }

    async fn write_session(&self, user: &str, desired: &Desired) -> Result<(), ConnectorError> {
        let pair = match desired {
            Desired::Set(p) => self.mapping.pair_for(p.availability).cloned(),
            Desired::Withdraw => None,
        };
        match pair {
            Some(pair) => {
                self.client
                    .set_presence(user, &self.config.app_id, &pair, self.session_expiration())
                    .await?;
                self.sessions
                    .lock()
                    .await
                    .insert(user.to_owned(), (pair, self.clock.now()));
            }
            // Offline, or presync's contribution withdrawn: end the session.
            None => {
                self.client
                    .clear_presence(user, &self.config.app_id)
                    .await?;
                self.sessions.lock().await.remove(user);
            }
        }
        Ok(())
    }

    async fn write_preferred(&self, user: &str, desired: &Desired) -> Result<(), ConnectorError> {
        let pair = match desired {
            Desired::Set(p) => self.mapping.pair_for(p.availability),
            Desired::Withdraw => None,
        };
        match pair {
            Some(pair) => {
                let expiry = Duration::from_secs(self.config.preferred_expiration_secs);
                self.client.set_preferred(user, pair, expiry).await
            }
            None => self.client.clear_preferred(user).await,
        }
    }
}

#[async_trait]
impl Connector for TeamsConnector {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            push_ingress: true,
            bulk_read: true,
            write: true,
            write_semantics: match self.mapping.mode() {
                WriteMode::Session => WriteSemantics::Contribution,
                WriteMode::Preferred => WriteSemantics::Override,
            },
            source_timestamps: false,
        }
    }

    fn to_canonical(&self, native: &NativeState) -> Mapped {
        Mapping::to_canonical(native)
    }

    fn to_native(&self, availability: Availability) -> Option<NativeState> {
        Some(self.mapping.to_native(availability))
    }

    async fn write(&self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError> {
        let user = user.as_str().to_ascii_lowercase();
        let result = match self.mapping.mode() {
            WriteMode::Session => self.write_session(&user, desired).await,
            WriteMode::Preferred => self.write_preferred(&user, desired).await,
        };
        // Even a failed attempt may have landed (a timeout): either way, a read that started
        // before now may show the state from before it.
        if let Ok(mut w) = self.last_write.lock() {
            w.insert(user, self.clock.now());
        }
        result
    }

    async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
        let ids: Vec<String> = users
            .iter()
            .map(|u| u.as_str().to_ascii_lowercase())
            .collect();
        let presences = self.client.presences(&ids).await?;
        let mut out: Vec<RemoteState> = presences
            .into_iter()
            .map(|p| RemoteState {
                external_id: ExternalId(p.id.to_ascii_lowercase()),
                native: NativeState::new(Pair::normalized(&p.availability, &p.activity).code()),
                source_time: None,
                sequence: p
                    .sequence_number
                    .as_deref()
                    .and_then(crate::mapping::sequence_order),
                origin: Origin::Unknown,
                automatic: None,
            })
            .collect();
        out.sort_by(|a, b| a.external_id.cmp(&b.external_id));
        Ok(out)
    }
}
