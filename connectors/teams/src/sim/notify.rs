//! Change and lifecycle notifications: their payloads (graph.md §6.4), the outbox, and the
//! background task that POSTs them in order; also the ticker that applies time every second.
//!
//! One notification per POST, oldest first. A delivery that is not answered with 2xx within
//! [`super::GraphSimConfig::ack_deadline`] (or not at all within
//! [`super::GraphSimConfig::notification_timeout`]) is retried up to
//! [`super::GraphSimConfig::delivery_retries`] times, after
//! [`super::GraphSimConfig::delivery_backoff`] doubled each time; later notifications wait.
//! Every attempt is recorded. Delivery faults (drop, duplicate, reorder) apply as notifications leave the
//! outbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::dates::iso_graph;
use super::faults::{DeliveryFaults, Fate};
use super::record::PresenceChange;
use super::state::{user_key, State};
use super::subscriptions::Subscription;
use super::{lock, Shared};

/// The appId of "Microsoft Graph Change Tracking", the caller named in `validationTokens`.
const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// What a POST from the simulator was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// The subscription validation handshake (`?validationToken=…`).
    Validation,
    /// A change notification (basic or rich).
    Change,
    /// A lifecycle notification.
    Lifecycle,
}

/// A notification a [`super::Fault::DropNotifications`] swallowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedNotification {
    /// The notification's emission number.
    pub seq: u64,
    /// The user whose presence changed (change notifications).
    pub user_id: Option<String>,
    /// When it was dropped instead of sent (milliseconds since the epoch).
    pub at_ms: i64,
}

/// One POST the simulator made, as sent, with the receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentNotification {
    /// The notification's emission number, from 1, equal for its retries and duplicate; 0 for
    /// validation requests.
    pub seq: u64,
    pub kind: NotificationKind,
    /// The subscription it is for (`None` for the validation of a subscription being created).
    pub subscription_id: Option<String>,
    /// The user whose presence changed (change notifications).
    pub user_id: Option<String>,
    /// The URL POSTed to (for a validation, with `validationToken`).
    pub url: String,
    /// 1 for the first try, then 2, 3, … for retries.
    pub attempt: u32,
    /// The second copy of a [`super::Fault::DuplicateNotifications`] notification.
    pub duplicate: bool,
    /// The body text sent (empty for a validation).
    pub body: String,
    /// The receiver's status; `None` when there was no answer.
    pub status: Option<u16>,
    /// The receiver's body (kept for validations, where it must be the token).
    pub reply: Option<String>,
    /// Why there was no answer, or why the answer was not accepted.
    pub error: Option<String>,
    /// Whether the simulator counted it as delivered (or, for a validation, as passed).
    pub accepted: bool,
    /// When it was sent (the simulator's clock, ms since the epoch): when the receiver could
    /// first know of the change, if it accepted it.
    pub at_ms: presync_engine::Millis,
}

impl SentNotification {
    /// The body as JSON (`Null` for a validation).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    kind: NotificationKind,
    subscription_id: String,
    user_id: Option<String>,
    url: String,
    body: String,
}

#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    items: VecDeque<Item>,
    faults: DeliveryFaults,
    in_flight: bool,
}

/// Notifications waiting to be sent, and what became of those already sent.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    pub(crate) wake: Arc<Notify>,
    pending: watch::Sender<usize>,
    sent: Mutex<Vec<SentNotification>>,
    dropped: Mutex<Vec<DroppedNotification>>,
    started: AtomicBool,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            wake: Arc::new(Notify::new()),
            pending: watch::channel(0).0,
            sent: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
        }
    }

    fn push(
        &self,
        kind: NotificationKind,
        sub: &Subscription,
        user_id: Option<String>,
        url: &str,
        body: Value,
    ) {
        let mut q = lock(&self.queue);
        q.next_seq += 1;
        let seq = q.next_seq;
        q.items.push_back(Item {
            seq,
            kind,
            subscription_id: sub.id.clone(),
            user_id,
            url: url.to_owned(),
            body: body.to_string(),
        });
        self.publish(&q);
        drop(q);
        self.wake.notify_one();
    }

    pub(crate) fn add_faults(&self, f: impl FnOnce(&mut DeliveryFaults)) {
        f(&mut lock(&self.queue).faults);
    }

    fn publish(&self, q: &Queue) {
        self.pending
            .send_replace(q.items.len() + usize::from(q.in_flight));
    }

    fn take(&self) -> Option<(Item, Fate)> {
        let mut q = lock(&self.queue);
        let waiting = q.items.len();
        let item = if q.faults.newest_first(waiting) {
            q.items.pop_back()?
        } else {
            q.items.pop_front()?
        };
        let fate = q.faults.fate();
        q.in_flight = true;
        self.publish(&q);
        Some((item, fate))
    }

    fn done(&self) {
        let mut q = lock(&self.queue);
        q.in_flight = false;
        self.publish(&q);
    }

    pub(crate) async fn idle(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub(crate) fn record(&self, sent: SentNotification) {
        lock(&self.sent).push(sent);
    }

    pub(crate) fn sent(&self) -> Vec<SentNotification> {
        lock(&self.sent).clone()
    }

    pub(crate) fn dropped(&self) -> Vec<DroppedNotification> {
        lock(&self.dropped).clone()
    }

    /// Whether the workers still have to be started (true once).
    pub(crate) fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }
}

/// Queue a change notification per subscription covering each changed user.
pub(crate) fn queue_changes(shared: &Shared, st: &State, changes: &[PresenceChange]) {
    for change in changes {
        let key = user_key(&change.user);
        for sub in st.subs.iter().filter(|s| s.covers(&key)) {
            let body = change_body(shared, sub, change);
            shared.outbox.push(
                NotificationKind::Change,
                sub,
                Some(change.user.clone()),
                &sub.notification_url,
                body,
            );
        }
    }
}

/// Queue a lifecycle notification for `sub`.
pub(crate) fn queue_lifecycle(shared: &Shared, sub: &Subscription, event: &str) {
    let body = json!({"value": [{
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": iso_graph(sub.expires_at),
        "tenantId": shared.cfg.tenant_id,
        "clientState": sub.client_state,
        "lifecycleEvent": event,
    }]});
    let url = sub
        .lifecycle_url
        .as_deref()
        .unwrap_or(&sub.notification_url);
    shared
        .outbox
        .push(NotificationKind::Lifecycle, sub, None, url, body);
}

/// A `changeNotificationCollection` with one presence notification: basic, or rich when the
/// subscription asked for resource data and gave a certificate. Rich resource data carries the
/// pair in the user's value schema and, if configured, `sequenceNumber`.
fn change_body(shared: &Shared, sub: &Subscription, change: &PresenceChange) -> Value {
    let tenant = &shared.cfg.tenant_id;
    let user_id = change.user.as_str();
    let mut item = json!({
        "subscriptionId": sub.id,
        "clientState": sub.client_state,
        "changeType": "updated",
        "tenantId": tenant,
        "resource": format!("communications/presences/{user_id}"),
        "subscriptionExpirationDateTime": iso_graph(sub.expires_at),
        "resourceData": {
            "@odata.id": format!("users/{user_id}/presence"),
            "@odata.type": "#microsoft.graph.presence",
            "id": user_id,
        },
        "organizationId": tenant,
    });
    let rich = match (&sub.cert, &sub.encryption_certificate_id) {
        (Some(cert), Some(cert_id)) if sub.include_resource_data => {
            let mut data = json!({
                "@odata.id": format!("users/{user_id}/presence"),
                "@odata.type": "#microsoft.graph.presence",
                "id": user_id,
                "availability": change.shown.0,
                "activity": change.shown.1,
            });
            if shared.cfg.emit_sequence_number {
                data["sequenceNumber"] = json!(change.sequence_number);
            }
            match crate::crypto::encrypt_for_subscription(
                cert_id,
                &cert.public_key_pem,
                &cert.thumbprint,
                &data,
            ) {
                Ok(c) => Some(json!({
                    "data": c.data,
                    "dataSignature": c.data_signature,
                    "dataKey": c.data_key,
                    "encryptionCertificateId": c.encryption_certificate_id,
                    "encryptionCertificateThumbprint": c.encryption_certificate_thumbprint,
                })),
                Err(e) => {
                    tracing::warn!(subscription = %sub.id, error = %e, "Simulated Graph could not encrypt; sending a basic notification");
                    None
                }
            }
        }
        _ => None,
    };
    match rich {
        Some(encrypted) => {
            item["encryptedContent"] = encrypted;
            json!({"value": [item], "validationTokens": [validation_token(shared)]})
        }
        None => json!({"value": [item]}),
    }
}

/// An opaque JWT-shaped token with the claims graph.md §6.6 lists. It is not signed by a
/// Microsoft key (the simulator has none), so a client that verifies signatures must let tests
/// configure the signing keys or skip that check against the simulator.
fn validation_token(shared: &Shared) -> String {
    let now = shared.clock.now() / 1000;
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "presync-graph-sim"});
    let claims = json!({
        "aud": shared.cfg.app_client_id,
        "iss": format!("https://sts.windows.net/{}/", shared.cfg.tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + 3_600,
        "azp": CHANGE_TRACKING_APP_ID,
        "appid": CHANGE_TRACKING_APP_ID,
        "tid": shared.cfg.tenant_id,
    });
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(uuid::Uuid::new_v4().as_bytes())
    )
}

/// The delivery task: runs until the simulator is dropped.
pub(crate) async fn run(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = match shared.upgrade() {
            Some(s) => s.outbox.take().map(|n| (s, n)),
            None => return,
        };
        match next {
            Some((s, (item, fate))) => {
                deliver(&s, item, fate).await;
                s.outbox.done();
            }
            None => notified.await,
        }
    }
}

/// Calls `tick` every second of real time until the simulator is dropped.
pub(crate) async fn ticker(shared: Weak<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        let mut st = lock(&s.state);
        s.settle(&mut st);
    }
}

async fn deliver(shared: &Shared, item: Item, fate: Fate) {
    if fate.dropped {
        tracing::debug!(seq = item.seq, "Simulated Graph notification dropped");
        lock(&shared.outbox.dropped).push(DroppedNotification {
            seq: item.seq,
            user_id: item.user_id.clone(),
            at_ms: shared.clock.now(),
        });
        return;
    }
    let cfg = &shared.cfg;
    let copies = if fate.duplicated { 2 } else { 1 };
    for copy in 0..copies {
        for attempt in 1..=cfg.delivery_retries.saturating_add(1) {
            if attempt > 1 {
                let factor = 2u32.saturating_pow(attempt - 2);
                tokio::time::sleep(cfg.delivery_backoff.saturating_mul(factor)).await;
            }
            let started = tokio::time::Instant::now();
            let sent_at = shared.clock.now();
            let result = shared
                .http
                .post(&item.url)
                .header("Content-Type", "application/json; charset=utf-8")
                .timeout(cfg.notification_timeout)
                .body(item.body.clone())
                .send()
                .await;
            let (status, error) = match result {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    let _ = resp.bytes().await;
                    (Some(s), None)
                }
                Err(e) => (None, Some(e.without_url().to_string())),
            };
            let late = started.elapsed() > cfg.ack_deadline;
            let accepted = status.is_some_and(|s| (200..300).contains(&s)) && !late;
            let error = match (error, late && status.is_some()) {
                (Some(e), _) => Some(e),
                (None, true) => Some(format!(
                    "answered after the {} ms deadline",
                    cfg.ack_deadline.as_millis()
                )),
                (None, false) => None,
            };
            shared.outbox.record(SentNotification {
                seq: item.seq,
                kind: item.kind,
                subscription_id: Some(item.subscription_id.clone()),
                user_id: item.user_id.clone(),
                url: item.url.clone(),
                attempt,
                duplicate: copy > 0,
                body: item.body.clone(),
                status,
                reply: None,
                error,
                accepted,
                at_ms: sent_at,
            });
            if accepted {
                break;
            }
        }
    }
}
