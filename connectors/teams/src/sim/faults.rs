//! Injected faults and Graph's throttling limit.
//!
//! API faults ([`Fault::RateLimited`], [`Fault::ServerError`], [`Fault::Slow`]) wait in a queue
//! and the next authenticated Graph request (after the throttling check) takes the first one.
//! Delivery faults ([`Fault::DropNotifications`], [`Fault::DuplicateNotifications`]) are counters
//! that the next change or lifecycle notifications consume as they leave the outbox.
//! [`Fault::FailValidation`] makes the next subscription validation handshake fail.
//! [`Fault::RevokeTokens`] acts at once. The throttling limit is Graph's own rule (graph.md §7.1),
//! not a fault: it is always on.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use presync_engine::Millis;

/// A failure to inject, consumed by the next matching request, handshake or delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The next Graph request answers 429 `TooManyRequests` with this `Retry-After`, in decimal
    /// seconds (e.g. `2.5`).
    RateLimited {
        /// The `Retry-After` value, seconds.
        retry_after: f64,
    },
    /// The next Graph request answers this status with Graph's generic error body.
    ServerError(u16),
    /// The next Graph request is answered only after this (real-time) delay. The operation
    /// itself has happened, so a client that times out does not know whether a write landed.
    Slow(Duration),
    /// Every access token issued so far (app-only and delegated) stops working at once: Graph
    /// answers 401 until the client fetches a new one. Refresh tokens stay valid.
    RevokeTokens,
    /// The next N notifications (change or lifecycle) are never sent. Presence has no `missed`
    /// lifecycle event, so only a reconciler can repair the gap (graph.md §6.7).
    DropNotifications(u32),
    /// The next N notifications are sent twice.
    DuplicateNotifications(u32),
    /// The next N times a notification leaves while others wait behind it, the newest waiting
    /// one leaves first: notifications queued together arrive out of order, as Graph promises
    /// no order.
    ReorderNotifications(u32),
    /// The next subscription validation handshake fails as if the endpoint had not answered,
    /// without being sent: the create answers 400.
    FailValidation,
}

/// What an API fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ApiFault {
    RateLimited { retry_after: f64 },
    ServerError(u16),
    Slow(Duration),
}

/// Pending API faults, first in first out.
#[derive(Debug, Default)]
pub(crate) struct ApiFaults {
    queue: VecDeque<ApiFault>,
    /// Handshakes still to fail.
    pub(crate) fail_validation: u32,
}

impl ApiFaults {
    pub(crate) fn push(&mut self, f: ApiFault) {
        self.queue.push_back(f);
    }

    pub(crate) fn take(&mut self) -> Option<ApiFault> {
        self.queue.pop_front()
    }

    /// Whether the next handshake must fail (consuming the fault).
    pub(crate) fn take_validation_failure(&mut self) -> bool {
        let hit = self.fail_validation > 0;
        self.fail_validation = self.fail_validation.saturating_sub(1);
        hit
    }
}

/// Pending delivery faults, as counts of notifications still to affect.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryFaults {
    pub drop: u32,
    pub duplicate: u32,
    pub reorder: u32,
}

/// What happens to one notification.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fate {
    pub dropped: bool,
    pub duplicated: bool,
}

impl DeliveryFaults {
    /// Whether the next notification to leave is the newest waiting one, consuming the counter
    /// (only when `waiting` others are behind the oldest).
    pub(crate) fn newest_first(&mut self, waiting: usize) -> bool {
        let hit = self.reorder > 0 && waiting >= 2;
        if hit {
            self.reorder -= 1;
        }
        hit
    }

    /// The fate of the next notification to leave, consuming the counters. A dropped
    /// notification does not consume a duplicate.
    pub(crate) fn fate(&mut self) -> Fate {
        if self.drop > 0 {
            self.drop -= 1;
            return Fate {
                dropped: true,
                duplicated: false,
            };
        }
        let duplicated = self.duplicate > 0;
        self.duplicate = self.duplicate.saturating_sub(1);
        Fate {
            dropped: false,
            duplicated,
        }
    }
}

/// Graph's request limit per application per tenant: a sliding window on the simulator's clock
/// (graph.md §1.7, §7.1). Refused requests count too ("requests made meanwhile still count
/// against the limit"), so a client that retries before `Retry-After` stays throttled.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: usize,
    window: Millis,
    seen: HashMap<String, VecDeque<Millis>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window: Millis::try_from(window.as_millis()).unwrap_or(Millis::MAX),
            seen: HashMap::new(),
        }
    }

    /// Count one request for `key` at `now`; when the window was already full, the seconds
    /// until its oldest request leaves it instead.
    pub(crate) fn check(&mut self, key: &str, now: Millis) -> Result<(), f64> {
        let q = self.seen.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| now - *t >= self.window) {
            q.pop_front();
        }
        let full = q.len() >= self.limit;
        let wait = q.front().map_or(self.window, |t| self.window - (now - *t));
        q.push_back(now);
        if full {
            // A refused request counts; keep the queue from growing without bound.
            while q.len() > self.limit.saturating_mul(4).max(16) {
                q.pop_front();
            }
            Err(wait.max(1) as f64 / 1000.0)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_faults_are_consumed_one_notification_at_a_time() {
        let mut f = DeliveryFaults {
            drop: 1,
            duplicate: 1,
            reorder: 0,
        };
        assert!(f.fate().dropped);
        assert!(f.fate().duplicated);
        assert_eq!(f.fate(), Fate::default());
    }

    #[test]
    fn the_window_slides_and_refused_requests_count() {
        let mut l = RateLimiter::new(2, Duration::from_secs(30));
        assert!(l.check("app", 0).is_ok());
        assert!(l.check("app", 1_500).is_ok());
        assert_eq!(l.check("app", 4_500), Err(25.5));
        assert!(
            l.check("other", 4_500).is_ok(),
            "another app has its own window"
        );
        // At 30 s the first request left, but the refused one at 4.5 s still counts.
        assert!(l.check("app", 30_000).is_err());
        assert!(l.check("app", 40_000).is_ok());
    }
}
