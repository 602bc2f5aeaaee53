//! Webhook delivery: the outbox of events, and the background task that POSTs them in order to
//! the registered endpoint, as Dataverse's webhook step does (dataverse.md §4.2, §4.3, §4.8).
//!
//! One event at a time, oldest first. A 502, 503 or 504 answer is retried exactly once; every
//! other failure (any other status, a connection error, no answer within the timeout) is final.
//! Delivery faults (drop, duplicate, reorder, size-exceeded) are applied as events leave the
//! outbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::faults::{DeliveryFaults, EventFate};
use super::state::{new_guid, Message, RowChange};
use super::webhook_body::WebhookEvent;
use super::{lock, Shared, WebhookTarget};
use crate::config::WebhookAuth;

/// One webhook POST as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event's emission number, from 1: equal for a retry and a duplicate of one event.
    pub seq: u64,
    /// 1, or 2 for the single retry after 502/503/504.
    pub attempt: u32,
    /// The second copy of a [`super::Fault::DuplicateWebhooks`] event.
    pub duplicate: bool,
    /// `"Update"` or `"Create"`.
    pub message: String,
    /// The `msdyn_agentstatusid` the event is about.
    pub agent_status_id: String,
    /// The URL POSTed to, with the authentication query parameter when there is one.
    pub url: String,
    /// The request headers sent, in order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The exact body text.
    pub body: String,
    /// The receiver's status; `None` when there was no answer (connection error or timeout).
    pub status: Option<u16>,
    /// Why there was no answer.
    pub error: Option<String>,
}

impl Delivery {
    /// A header sent, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON, which never happens for bodies we send).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the body was stripped by the 256 KB rule.
    pub fn size_exceeded(&self) -> bool {
        self.header("x-ms-dynamics-msg-size-exceeded").is_some()
    }
}

#[derive(Debug, Default)]
struct Queue {
    next_seq: u64,
    events: VecDeque<WebhookEvent>,
    held: Vec<WebhookEvent>,
    faults: DeliveryFaults,
    in_flight: bool,
}

/// Events waiting to be delivered, and what became of those already sent.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) target: Option<WebhookTarget>,
    queue: Mutex<Queue>,
    pub(crate) wake: Arc<Notify>,
    pending: watch::Sender<usize>,
    deliveries: Mutex<Vec<Delivery>>,
    dropped: Mutex<Vec<DroppedWebhook>>,
    started: AtomicBool,
}

/// A webhook a [`super::Fault::DropWebhooks`] swallowed, and the change it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedWebhook {
    pub seq: u64,
    /// The agent's systemuserid.
    pub agent_id: String,
    /// When the change was made (ms since the epoch).
    pub at_ms: i64,
}

impl Outbox {
    pub(crate) fn new(target: Option<WebhookTarget>) -> Outbox {
        Outbox {
            target,
            queue: Mutex::new(Queue::default()),
            wake: Arc::new(Notify::new()),
            pending: watch::channel(0).0,
            deliveries: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
        }
    }

    /// Queue the webhook for a change, if a step is registered for its message. The Update
    /// step is filtered on `msdyn_currentpresenceid`, so an Update that did not write that
    /// column (a capacity change alone) sends nothing.
    pub(crate) fn push(&self, change: RowChange) {
        let Some(target) = &self.target else {
            return;
        };
        if change.message == Message::Create && !target.emit_create {
            return;
        }
        if change.message == Message::Update && !change.presence_written {
            return;
        }
        let mut q = lock(&self.queue);
        q.next_seq += 1;
        let seq = q.next_seq;
        q.events.push_back(WebhookEvent::new(seq, change));
        self.publish(&q);
        drop(q);
        self.wake.notify_one();
    }

    pub(crate) fn add_faults(&self, f: impl FnOnce(&mut DeliveryFaults)) {
        f(&mut lock(&self.queue).faults);
    }

    fn publish(&self, q: &Queue) {
        self.pending
            .send_replace(q.events.len() + usize::from(q.in_flight));
    }

    /// The next event to send and its fate; held events (reorder) are parked here and released
    /// in reverse once enough are held.
    fn take(&self) -> Option<(WebhookEvent, EventFate)> {
        let mut q = lock(&self.queue);
        loop {
            let mut ev = q.events.pop_front()?;
            if !ev.released && q.faults.reorder > 0 {
                q.faults.reorder -= 1;
                ev.released = true;
                q.held.push(ev);
                if q.faults.reorder == 0 {
                    let held = std::mem::take(&mut q.held);
                    for e in held {
                        q.events.push_front(e);
                    }
                }
                self.publish(&q);
                continue;
            }
            let fate = q.faults.fate();
            q.in_flight = true;
            self.publish(&q);
            return Some((ev, fate));
        }
    }

    fn done(&self) {
        let mut q = lock(&self.queue);
        q.in_flight = false;
        self.publish(&q);
    }

    /// Until nothing is queued or being sent (events held for a reorder do not count).
    pub(crate) async fn idle(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    pub(crate) fn dropped(&self) -> Vec<DroppedWebhook> {
        lock(&self.dropped).clone()
    }

    /// Whether the worker still has to be started (true once).
    pub(crate) fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }
}

/// The delivery task: runs until the simulator is dropped.
pub(crate) async fn run(shared: Weak<Shared>, wake: Arc<Notify>) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let http = match http {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "Dataverse simulator cannot build its webhook HTTP client");
            return;
        }
    };
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = match shared.upgrade() {
            Some(s) => s.outbox.take().map(|n| (s, n)),
            None => return,
        };
        match next {
            Some((s, (ev, fate))) => {
                deliver(&s, &http, ev, fate).await;
                s.outbox.done();
            }
            None => notified.await,
        }
    }
}

async fn deliver(shared: &Shared, http: &reqwest::Client, ev: WebhookEvent, fate: EventFate) {
    let Some(target) = &shared.outbox.target else {
        return;
    };
    if fate.dropped {
        tracing::debug!(seq = ev.seq, "Simulated webhook dropped");
        lock(&shared.outbox.dropped).push(DroppedWebhook {
            seq: ev.seq,
            agent_id: ev.change.row.agent_id.clone(),
            at_ms: ev.change.at_ms,
        });
        return;
    }
    let body = ev.render(&shared.ids, fate.size_exceeded);
    let url = target_url(target);
    let copies = if fate.duplicated { 2 } else { 1 };
    for copy in 0..copies {
        for attempt in 1..=2u32 {
            let headers = headers(shared, target, &ev, fate.size_exceeded);
            let mut req = http.post(&url).timeout(target.timeout).body(body.clone());
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let (status, error) = match req.send().await {
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    // Dataverse reads only the status; drain the body so the connection is reused.
                    let _ = resp.bytes().await;
                    (Some(s), None)
                }
                Err(e) => (None, Some(e.without_url().to_string())),
            };
            lock(&shared.outbox.deliveries).push(Delivery {
                seq: ev.seq,
                attempt,
                duplicate: copy > 0,
                message: ev.change.message.name().to_owned(),
                agent_status_id: ev.change.row.status_id.clone(),
                url: url.clone(),
                headers,
                body: body.clone(),
                status,
                error,
            });
            let retry = attempt == 1 && matches!(status, Some(502..=504));
            if !retry {
                break;
            }
            tokio::time::sleep(target.retry_delay).await;
        }
    }
}

/// The endpoint URL with the WebhookKey or HttpQueryString parameter appended.
fn target_url(target: &WebhookTarget) -> String {
    let extra = match &target.auth {
        WebhookAuth::HttpHeader { .. } => None,
        WebhookAuth::WebhookKey { value } => Some(("code", value.as_str())),
        WebhookAuth::HttpQueryString { name, value } => Some((name.as_str(), value.as_str())),
    };
    let Some((name, value)) = extra else {
        return target.url.clone();
    };
    match url::Url::parse(&target.url) {
        Ok(mut u) => {
            u.query_pairs_mut().append_pair(name, value);
            u.to_string()
        }
        Err(_) => target.url.clone(),
    }
}

fn headers(
    shared: &Shared,
    target: &WebhookTarget,
    ev: &WebhookEvent,
    size_exceeded: bool,
) -> Vec<(String, String)> {
    let mut h = vec![
        ("x-request-id".to_owned(), new_guid()),
        (
            "x-ms-dynamics-organization".to_owned(),
            shared.org_host.clone(),
        ),
        (
            "x-ms-dynamics-entity-name".to_owned(),
            "msdyn_agentstatus".to_owned(),
        ),
        (
            "x-ms-dynamics-request-name".to_owned(),
            ev.change.message.name().to_owned(),
        ),
        (
            "x-ms-correlation-request-id".to_owned(),
            ev.correlation_id.clone(),
        ),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    if size_exceeded {
        h.push((
            "x-ms-dynamics-msg-size-exceeded".to_owned(),
            "true".to_owned(),
        ));
    }
    if let WebhookAuth::HttpHeader { name, value } = &target.auth {
        h.push((name.to_ascii_lowercase(), value.clone()));
    }
    h
}

/// Default time Dataverse waits for the receiver.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
