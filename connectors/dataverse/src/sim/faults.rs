//! Injected faults and the service-protection limit.
//!
//! API faults ([`Fault::RateLimited`], [`Fault::ServerError`], [`Fault::Slow`]) wait in a queue
//! and the next authenticated Web API request takes the first one. Delivery faults
//! ([`Fault::DropWebhooks`] and the rest) are counters that the next webhook events consume.
//! [`Fault::RevokeTokens`] acts at once. The limiter is Dataverse's own rule (dataverse.md §8),
//! not a fault: it is always on.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// A failure to inject, consumed by the next matching request or webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next Web API request answers 429 with `Retry-After: <secs>` and the `0x80072322`
    /// error body.
    RateLimited { retry_after_secs: u64 },
    /// The next Web API request answers this status with the Dataverse error body.
    ServerError(u16),
    /// The next Web API request is answered only after this delay (for client timeouts).
    Slow(Duration),
    /// Every token issued so far stops working at once: API calls get 401 until the client
    /// fetches a new token.
    RevokeTokens,
    /// The next N webhook events are never sent (a failed async job nobody retries).
    DropWebhooks(u32),
    /// The next N webhook events are sent twice.
    DuplicateWebhooks(u32),
    /// The next N webhook events are held back and then sent in reverse order.
    ReorderWebhooks(u32),
    /// The next N webhook events are sent as if over 256 KB: header
    /// `x-ms-dynamics-msg-size-exceeded` and no `ParentContext`, `InputParameters`,
    /// `PreEntityImages` or `PostEntityImages`.
    SizeExceededWebhooks(u32),
}

/// What an API fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiFault {
    RateLimited { retry_after_secs: u64 },
    ServerError(u16),
    Slow(Duration),
}

/// Pending API faults, first in first out.
#[derive(Debug, Default)]
pub(crate) struct ApiFaults {
    queue: VecDeque<ApiFault>,
}

impl ApiFaults {
    pub(crate) fn push(&mut self, f: ApiFault) {
        self.queue.push_back(f);
    }

    pub(crate) fn take(&mut self) -> Option<ApiFault> {
        self.queue.pop_front()
    }
}

/// Pending delivery faults, as counts of events still to affect.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryFaults {
    pub drop: u32,
    pub duplicate: u32,
    pub size_exceeded: u32,
    /// Events still to hold back before the held ones are released in reverse.
    pub reorder: u32,
}

/// What happens to one webhook event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventFate {
    pub dropped: bool,
    pub duplicated: bool,
    pub size_exceeded: bool,
}

impl DeliveryFaults {
    /// Decide the fate of the next event to be sent, consuming the counters.
    pub(crate) fn fate(&mut self) -> EventFate {
        let take = |n: &mut u32| {
            let hit = *n > 0;
            *n = n.saturating_sub(1);
            hit
        };
        let dropped = take(&mut self.drop);
        if dropped {
            return EventFate {
                dropped,
                ..EventFate::default()
            };
        }
        EventFate {
            dropped,
            duplicated: take(&mut self.duplicate),
            size_exceeded: take(&mut self.size_exceeded),
        }
    }
}

/// Dataverse's request-count limit: per user, a sliding window (dataverse.md §8).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: usize,
    window: Duration,
    seen: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            seen: HashMap::new(),
        }
    }

    /// Count one request for `caller`; when the window is full, the seconds to wait instead
    /// (rounded up, at least 1). Refused requests are not counted.
    pub(crate) fn check(&mut self, caller: &str) -> Result<(), u64> {
        let now = Instant::now();
        let q = self.seen.entry(caller.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() < self.limit {
            q.push_back(now);
            return Ok(());
        }
        let wait = q.front().map_or(self.window, |t| {
            self.window.saturating_sub(now.duration_since(*t))
        });
        Err(ceil_secs(wait).max(1))
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_faults_are_consumed_one_event_at_a_time() {
        let mut f = DeliveryFaults {
            drop: 1,
            duplicate: 2,
            size_exceeded: 1,
            reorder: 0,
        };
        assert!(f.fate().dropped);
        let second = f.fate();
        assert!(second.duplicated && second.size_exceeded && !second.dropped);
        let third = f.fate();
        assert!(third.duplicated && !third.size_exceeded);
        assert_eq!(f.fate(), EventFate::default());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_is_per_caller_and_slides() {
        let mut l = RateLimiter::new(2, Duration::from_secs(300));
        assert!(l.check("a").is_ok());
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(l.check("a").is_ok());
        assert_eq!(l.check("a"), Err(200));
        assert!(l.check("b").is_ok(), "another caller has its own window");
        tokio::time::advance(Duration::from_secs(200)).await;
        assert!(l.check("a").is_ok(), "the oldest request left the window");
    }
}
