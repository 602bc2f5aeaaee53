//! Presence subscriptions: one per 650 users, created with the delegated account, renewed
//! before Graph's 60-minute limit, recreated when Graph has dropped them, and reacting to
//! lifecycle events. A scheduled job calls [`SubscriptionManager::maintain`]; the notification
//! ingress hands lifecycle items to [`SubscriptionManager::on_lifecycle`].

use std::sync::Arc;
use std::time::Duration;

use presync_engine::clock::Clock;
use presync_engine::ConnectorError;
use presync_engine::Millis;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::client::{GraphClient, NewSubscription, MAX_IDS};
use crate::notifications::LifecycleItem;

/// How presync subscribes.
#[derive(Debug, Clone)]
pub struct SubscriptionSettings {
    /// presync's public `/webhooks/teams` URL (HTTPS in production).
    pub notification_url: String,
    /// presync's public `/webhooks/teams/lifecycle` URL.
    pub lifecycle_url: Option<String>,
    /// A random secret of at most 128 characters, checked on every item.
    pub client_state: String,
    /// Requested lifetime (at most 60 minutes).
    pub lifetime: Duration,
    /// Renew when less than this remains.
    pub renew_before: Duration,
    /// Rich notifications: the base64 DER certificate and its id.
    pub encryption: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Managed {
    id: String,
    users: Vec<String>,
    expires_at: Millis,
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub created: usize,
    pub renewed: usize,
    pub recreated: usize,
    pub failed: usize,
}

/// What the caller must do after a lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    /// Nothing more.
    None,
    /// Changes may have been missed: read every user again (the reconciler's Teams read).
    Reread,
}

/// Keeps presence subscriptions for a set of users.
#[derive(Debug)]
pub struct SubscriptionManager {
    client: GraphClient,
    settings: SubscriptionSettings,
    subs: Mutex<Vec<Managed>>,
    clock: Arc<dyn Clock>,
}

impl SubscriptionManager {
    /// A manager with no subscriptions yet.
    pub fn new(client: GraphClient, settings: SubscriptionSettings, clock: Arc<dyn Clock>) -> Self {
        SubscriptionManager {
            client,
            settings,
            subs: Mutex::new(Vec::new()),
            clock,
        }
    }

    fn lifetime_ms(&self) -> i64 {
        i64::try_from(self.settings.lifetime.as_millis()).unwrap_or(i64::MAX)
    }

    /// `now + lifetime` as RFC 3339 UTC, on the manager's clock.
    fn expiry(&self) -> String {
        rfc3339((self.clock.now() + self.lifetime_ms()).div_euclid(1_000))
    }

    /// The ids of the live subscriptions.
    pub async fn subscription_ids(&self) -> Vec<String> {
        self.subs
            .lock()
            .await
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// Subscribe `users` (650 a subscription) where not yet subscribed, and renew what is due.
    /// A subscription Graph no longer knows is recreated.
    pub async fn maintain(&self, users: &[String]) -> Maintenance {
        let mut report = Maintenance::default();
        let mut subs = self.subs.lock().await;
        // Users whose subscription set changed are subscribed afresh, in full chunks.
        let mut wanted: Vec<String> = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        wanted.sort();
        wanted.dedup();
        let chunks: Vec<Vec<String>> = wanted.chunks(MAX_IDS).map(<[String]>::to_vec).collect();
        let mut keep = Vec::new();
        for sub in subs.drain(..) {
            if chunks.contains(&sub.users) {
                keep.push(sub);
            } else if let Err(e) = self.client.unsubscribe(&sub.id).await {
                warn!(subscription = %sub.id, error = %e, "Could not delete an outdated subscription");
            }
        }
        for chunk in chunks {
            if keep.iter().any(|s| s.users == chunk) {
                continue;
            }
            match self.create(&chunk).await {
                Ok(m) => {
                    report.created += 1;
                    keep.push(m);
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(users = chunk.len(), error = %e, "Could not create a presence subscription");
                }
            }
        }
        for sub in keep.iter_mut() {
            let left = sub.expires_at.saturating_sub(self.clock.now());
            if left > i64::try_from(self.settings.renew_before.as_millis()).unwrap_or(i64::MAX) {
                continue;
            }
            match self.renew_one(sub).await {
                Ok(recreated) => {
                    if recreated {
                        report.recreated += 1;
                    } else {
                        report.renewed += 1;
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(subscription = %sub.id, error = %e, "Could not renew a presence subscription");
                }
            }
        }
        *subs = keep;
        if report != Maintenance::default() {
            info!(?report, "Presence subscriptions maintained");
        }
        report
    }

    /// React to a lifecycle event of one of presync's subscriptions.
    pub async fn on_lifecycle(&self, item: &LifecycleItem) -> LifecycleAction {
        let mut subs = self.subs.lock().await;
        let Some(sub) = subs.iter_mut().find(|s| s.id == item.subscription_id) else {
            warn!(subscription = ?item.subscription_id, event = ?item.lifecycle_event, "Lifecycle event for an unknown subscription");
            return LifecycleAction::None;
        };
        match item.lifecycle_event.as_str() {
            "reauthorizationRequired" => match self.renew_one(sub).await {
                Ok(false) => LifecycleAction::None,
                Ok(true) => LifecycleAction::Reread,
                Err(e) => {
                    warn!(subscription = %sub.id, error = %e, "Reauthorization failed");
                    LifecycleAction::Reread
                }
            },
            // Removed, missed, or anything new: the subscription may be gone and changes lost.
            other => {
                warn!(subscription = %sub.id, event = other, "Subscription lost changes; recreating and reading every user");
                if let Ok(m) = self.create(&sub.users.clone()).await {
                    *sub = m;
                }
                LifecycleAction::Reread
            }
        }
    }

    /// Renew one subscription; recreate it when Graph answers 404. True when recreated.
    async fn renew_one(&self, sub: &mut Managed) -> Result<bool, ConnectorError> {
        match self.client.renew(&sub.id, &self.expiry()).await {
            Ok(_) => {
                sub.expires_at = self.clock.now() + self.lifetime_ms();
                Ok(false)
            }
            Err(ConnectorError::Rejected { message }) if message.contains("404") => {
                *sub = self.create(&sub.users.clone()).await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn create(&self, users: &[String]) -> Result<Managed, ConnectorError> {
        let s = self
            .client
            .subscribe(&NewSubscription {
                users: users.to_vec(),
                notification_url: self.settings.notification_url.clone(),
                lifecycle_notification_url: self.settings.lifecycle_url.clone(),
                client_state: self.settings.client_state.clone(),
                expiration: self.expiry(),
                encryption: self.settings.encryption.clone(),
            })
            .await?;
        Ok(Managed {
            id: s.id,
            users: users.to_vec(),
            expires_at: self.clock.now() + self.lifetime_ms(),
        })
    }
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    presync_engine::time::to_rfc3339_seconds(secs.saturating_mul(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_722_582_038), "2024-08-02T07:00:38Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
