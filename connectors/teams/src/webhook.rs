//! Graph change-notification ingress for presence.
//!
//! - Validation handshake: `POST ...?validationToken=T` is answered at once with 200,
//!   `text/plain`, and the decoded token.
//! - A delivery (`changeNotificationCollection`) is parsed; each item's `clientState` is checked
//!   in constant time, and an item that fails is refused and nothing from it is stored.
//! - A rich item (decrypted with the configured keys) carries the presence: it becomes an
//!   observation at once. A basic item (no availability since 2024) names the user: the user is
//!   queued for a coalesced batch read ([`spawn_reader`]), whose results become observations.
//! - Lifecycle items go to the subscription manager (renew, recreate, re-read).
//! - The reply is 202 after the observations are stored (Graph allows 3 s); 503 when they could
//!   not be, so Graph retries.
//!
//! A basic notification whose read had not run when the process died is repaired by the next
//! reconcile: Graph offers no replay.
//!
//! The `validationTokens` of rich notifications are not verified against Microsoft's signing
//! keys (presync cannot reach them from here, and the simulator's tokens are not Microsoft's):
//! items are authenticated by `clientState`, and rich ones also by the HMAC of their content.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use presync_engine::engine::Engine;
use presync_engine::{
    ExternalId, Millis, NativeState, Observation, ObservationKind, Origin, SystemId,
};
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, error, warn};

use crate::connector::TeamsConnector;
use crate::crypto::DecryptionKeys;
use crate::notifications::{self, client_state_matches, ChangeItem, LifecycleItem, Notification};

/// The notification URL path.
pub const PATH: &str = "/webhooks/teams";
/// The lifecycle notification URL path.
pub const LIFECYCLE_PATH: &str = "/webhooks/teams/lifecycle";
/// Deliveries larger than this are refused unless configured otherwise
/// ([`TeamsIngress::max_body`]): Graph's are small, a rich presence item a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Counters by outcome; the service exports them as metrics.
#[derive(Debug, Default)]
pub struct TeamsIngressStats {
    pub handshakes: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_items: AtomicU64,
    pub rereads_queued: AtomicU64,
    pub lifecycle: AtomicU64,
    pub malformed: AtomicU64,
    /// Deliveries over the size limit.
    pub too_large: AtomicU64,
    pub undecryptable: AtomicU64,
    /// Change items that carried presence values in plain text (not sealed in a rich
    /// notification whose signature was checked): the values are not used, the user is read.
    pub plain_values_ignored: AtomicU64,
}

/// Everything the ingress needs.
#[derive(Debug)]
pub struct TeamsIngress {
    pub engine: Engine,
    pub system: SystemId,
    /// The `clientState` of presync's subscriptions (a secret).
    pub client_state: String,
    /// Keys for rich notifications, when configured.
    pub keys: Option<DecryptionKeys>,
    /// Users whose presence must be read (basic notifications), with when the notification
    /// arrived.
    pub reread: mpsc::UnboundedSender<(String, Millis)>,
    /// Lifecycle events for the subscription manager.
    pub lifecycle: mpsc::UnboundedSender<LifecycleItem>,
    /// Deliveries larger than this many bytes are refused (413).
    pub max_body: usize,
    pub stats: TeamsIngressStats,
}

/// The router serving [`PATH`] and [`LIFECYCLE_PATH`].
pub fn router(ingress: Arc<TeamsIngress>) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .route(LIFECYCLE_PATH, post(receive))
        .with_state(ingress)
}

async fn receive(
    State(ingress): State<Arc<TeamsIngress>>,
    RawQuery(query): RawQuery,
    headers: header::HeaderMap,
    body: Body,
) -> Response {
    if let Some(token) = notifications::validation_response(query.as_deref()) {
        ingress.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            token,
        )
            .into_response();
    }
    let limit = ingress.max_body;
    let too_large = || {
        ingress.stats.too_large.fetch_add(1, Ordering::Relaxed);
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than the configured limit of {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let Ok(bytes) = to_bytes(body, limit).await else {
        return too_large();
    };
    let batch = match notifications::parse(&bytes) {
        Ok(b) => b,
        Err(e) => {
            ingress.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let total = batch.items.len();
    if total == 0 {
        // Nothing to authenticate: not a delivery Graph sends.
        ingress.stats.malformed.fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::BAD_REQUEST,
            "the delivery carries no notification (an empty `value`)".to_owned(),
        );
    }
    let mut observations = Vec::new();
    let mut refused = 0;
    for item in batch.items {
        if !client_state_matches(item.client_state(), &ingress.client_state) {
            refused += 1;
            continue;
        }
        match item {
            Notification::Change(c) => {
                if let Some(o) = change(&ingress, c) {
                    observations.push(o);
                }
            }
            Notification::Lifecycle(l) => {
                ingress.stats.lifecycle.fetch_add(1, Ordering::Relaxed);
                let _ = ingress.lifecycle.send(l);
            }
        }
    }
    ingress
        .stats
        .refused_items
        .fetch_add(refused as u64, Ordering::Relaxed);
    if refused > 0 {
        warn!(
            refused,
            total, "Notification items with a wrong clientState refused"
        );
    }
    if total > 0 && refused == total {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "wrong or missing clientState".to_owned(),
        );
    }
    let stored = observations.len();
    if let Err(e) = ingress.engine.ingest_batch(observations).await {
        error!(error = %e, "Could not store notifications; answering 503 so Graph retries");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not store the notifications; retry".to_owned(),
        );
    }
    ingress
        .stats
        .accepted
        .fetch_add(stored as u64, Ordering::Relaxed);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "stored": stored, "refused": refused })),
    )
        .into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A change item: an observation when it carries the presence sealed in a rich notification
/// (decrypted, so it comes from Graph), else a queued read. Values in plain text (old-style
/// basic notifications) rest on `clientState` alone, which anyone who learnt it could forge:
/// they are not used, the user is read instead.
fn change(ingress: &TeamsIngress, mut c: ChangeItem) -> Option<Observation> {
    let mut sealed = false;
    if let (Some(enc), Some(keys)) = (c.encrypted.clone(), ingress.keys.as_ref()) {
        match keys.decrypt(&enc) {
            Ok(data) => {
                c.apply_resource_data(data);
                sealed = true;
            }
            Err(e) => {
                ingress.stats.undecryptable.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, subscription = ?c.subscription_id, "Rich notification could not be decrypted; reading instead");
            }
        }
    }
    if !sealed && c.availability.is_some() {
        ingress
            .stats
            .plain_values_ignored
            .fetch_add(1, Ordering::Relaxed);
        c.availability = None;
        c.activity = None;
    }
    let user = c.user_id.clone()?;
    match (c.availability.as_deref(), c.activity.as_deref()) {
        (Some(a), activity) => {
            let now = ingress.engine.now();
            Some(Observation {
                system: ingress.system.clone(),
                external_id: ExternalId(user.clone()),
                native: NativeState::new(
                    crate::mapping::Pair::normalized(a, activity.unwrap_or(a)).code(),
                ),
                source_time: now,
                sequence: c
                    .sequence_number
                    .as_deref()
                    .and_then(crate::mapping::sequence_order),
                origin: Origin::Unknown,
                kind: ObservationKind::Event,
                // Graph's sequence number is not always present, so a redelivery is not
                // recognised by key; the rules see it as a duplicate state.
                delivery_key: format!(
                    "teams:{}:{user}:{}",
                    c.subscription_id,
                    uuid::Uuid::new_v4().simple()
                ),
                observed_at: now,
                changed_by: None,
                automatic: None,
            })
        }
        (None, _) => {
            ingress.stats.rereads_queued.fetch_add(1, Ordering::Relaxed);
            let _ = ingress.reread.send((user, ingress.engine.now()));
            None
        }
    }
}

/// Read the users queued by basic notifications, coalescing those that arrive within `window`
/// into one `getPresencesByUserId` call per 650, and store what is read. Each state read is
/// known to have been set by the time its user's last notification arrived
/// ([`Observation::changed_by`]), however late the read (after a throttled or failed one).
///
/// Up to [`READS_IN_FLIGHT`] reads run at once, so that one slow answer does not hold back the
/// users notified after it; a `Retry-After` holds back every read until it has passed.
pub fn spawn_reader(
    engine: Engine,
    system: SystemId,
    connector: Arc<TeamsConnector>,
    mut queue: mpsc::UnboundedReceiver<(String, Millis)>,
    window: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Users to read again (read while a write of presync's to them was landing, or whose
        // read failed), each with when its last notification arrived.
        let (again_tx, mut again) = mpsc::unbounded_channel::<(String, Millis)>();
        let reads = Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT));
        let shared = Arc::new(ReadState::default());
        // Ids come lowercased from the notifications and from the read alike.
        let notified = |users: &mut BTreeMap<String, Millis>, (user, at): (String, Millis)| {
            users
                .entry(user)
                .and_modify(|last| *last = (*last).max(at))
                .or_insert(at);
        };
        loop {
            let mut users = BTreeMap::new();
            tokio::select! {
                first = queue.recv() => match first {
                    Some(first) => notified(&mut users, first),
                    None => return,
                },
                Some(first) = again.recv() => notified(&mut users, first),
            }
            let deadline = tokio::time::Instant::now() + window;
            loop {
                tokio::select! {
                    Some(u) = queue.recv() => notified(&mut users, u),
                    Some(u) = again.recv() => notified(&mut users, u),
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            if let Some(until) = shared.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            let Ok(permit) = reads.clone().acquire_owned().await else {
                return;
            };
            let task = ReadTask {
                engine: engine.clone(),
                system: system.clone(),
                connector: connector.clone(),
                again: again_tx.clone(),
                shared: shared.clone(),
            };
            tokio::spawn(async move {
                task.read(users, permit).await;
            });
        }
    })
}

/// Reads after notifications that may run at once.
pub const READS_IN_FLIGHT: usize = 4;

/// What the reads of [`spawn_reader`] share: failures in a row (for the backoff) and a
/// `Retry-After` in force.
#[derive(Debug, Default)]
struct ReadState {
    failures: AtomicU64,
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl ReadState {
    fn paused_until(&self) -> Option<tokio::time::Instant> {
        let until = *self.paused_until.lock().ok()?;
        until.filter(|u| *u > tokio::time::Instant::now())
    }

    fn pause(&self, wait: Duration) {
        if let Ok(mut p) = self.paused_until.lock() {
            let until = tokio::time::Instant::now() + wait;
            *p = Some(p.map_or(until, |p| p.max(until)));
        }
    }
}

/// One read after notifications, run on its own.
struct ReadTask {
    engine: Engine,
    system: SystemId,
    connector: Arc<TeamsConnector>,
    again: mpsc::UnboundedSender<(String, Millis)>,
    shared: Arc<ReadState>,
}

impl ReadTask {
    async fn read(self, mut users: BTreeMap<String, Millis>, permit: OwnedSemaphorePermit) {
        let ids: Vec<ExternalId> = users.keys().cloned().map(ExternalId).collect();
        match self.connector.read_dated(&ids).await {
            Ok(read) => {
                drop(permit);
                self.shared.failures.store(0, Ordering::Relaxed);
                for u in read.racing {
                    if let Some(entry) = users.remove_entry(u.as_str()) {
                        let _ = self.again.send(entry);
                    }
                }
                let now = self.engine.now();
                let observations = read
                    .states
                    .into_iter()
                    .map(|s| Observation {
                        changed_by: users.get(s.external_id.as_str()).copied(),
                        automatic: None,
                        system: self.system.clone(),
                        delivery_key: format!(
                            "teams:read:{}:{}",
                            s.external_id,
                            uuid::Uuid::new_v4().simple()
                        ),
                        external_id: s.external_id,
                        native: s.native,
                        source_time: read.read_at,
                        sequence: s.sequence,
                        origin: Origin::Unknown,
                        kind: ObservationKind::Event,
                        observed_at: now,
                    })
                    .collect::<Vec<_>>();
                let n = observations.len();
                if let Err(e) = self.engine.ingest_batch(observations).await {
                    error!(error = %e, "Could not store presences read after notifications");
                } else {
                    debug!(users = n, "Presences read after notifications");
                }
            }
            // Throttled or failed for now: read the same users again once the wait is over,
            // with what else was notified meanwhile. Left to the reconciler, a meeting would
            // reach D365 only at its next pass.
            Err(e) if e.is_transient() => {
                drop(permit);
                let failures = self.shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let wait = match e.retry_after() {
                    Some(wait) => {
                        let wait = wait.min(MAX_REREAD_WAIT);
                        self.shared.pause(wait);
                        wait
                    }
                    None => reread_backoff(u32::try_from(failures).unwrap_or(u32::MAX)),
                };
                warn!(error = %e, users = ids.len(), retry_in_ms = wait.as_millis() as u64, "Read after notifications failed; reading again");
                tokio::time::sleep(wait).await;
                for entry in users {
                    let _ = self.again.send(entry);
                }
            }
            Err(e) => {
                warn!(error = %e, users = ids.len(), "Read after notifications refused; the reconciler will repair")
            }
        }
    }
}

/// The longest the notification reader waits before reading failed users again.
const MAX_REREAD_WAIT: Duration = Duration::from_secs(30);

/// Wait before the `failures`th read again: 500 ms, doubled per failure, at most
/// [`MAX_REREAD_WAIT`].
fn reread_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_millis(500u64.saturating_mul(1 << exp)).min(MAX_REREAD_WAIT)
}
