//! Per-target write limits: a token bucket, a pause after `Retry-After`, and backoff with jitter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use rand::Rng;

use crate::config::DispatchConfig;
use crate::model::Millis;

/// The gate every write to one target passes: rate limit and throttle pause.
#[derive(Debug)]
pub(crate) struct TargetGate {
    state: Mutex<GateState>,
    capacity: f64,
    per_ms: f64,
    pub(crate) max_in_flight: usize,
    /// A permit per write in flight (claimed and not yet recorded), `max_in_flight` in all,
    /// shared by the dispatcher and the resolver's writes.
    pub(crate) in_flight: Arc<Semaphore>,
    /// A reservation found every write slot taken since this was last cleared.
    refused: AtomicBool,
}

/// Writes to one target that may begin now: as many in-flight permits as tokens.
#[derive(Debug)]
pub(crate) struct Reserved {
    pub(crate) permit: OwnedSemaphorePermit,
}

impl Reserved {
    /// How many writes it allows.
    pub(crate) fn len(&self) -> usize {
        self.permit.num_permits()
    }

    /// Keep `n` of the writes (those claimed); the tokens of the others go back to `gate`,
    /// their permits to its semaphore.
    pub(crate) fn keep(&mut self, gate: &TargetGate, n: usize) {
        let surplus = self.len().saturating_sub(n);
        if surplus > 0 {
            gate.give_back(surplus);
            drop(self.permit.split(surplus));
        }
    }
}

#[derive(Debug)]
struct GateState {
    tokens: f64,
    refilled: Option<Millis>,
    paused_until: Option<Millis>,
}

impl TargetGate {
    pub(crate) fn new(cfg: &DispatchConfig) -> Self {
        let capacity = f64::from(cfg.rate_limit.max(1));
        Self {
            state: Mutex::new(GateState {
                tokens: capacity,
                refilled: None,
                paused_until: None,
            }),
            capacity,
            per_ms: capacity / (cfg.rate_window_ms.max(1) as f64),
            max_in_flight: cfg.max_in_flight.max(1),
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            refused: AtomicBool::new(false),
        }
    }

    /// Whether a reservation found every write slot taken since the last call.
    pub(crate) fn take_refused(&self) -> bool {
        self.refused.swap(false, Ordering::Relaxed)
    }

    /// Without waiting, as many writes as are both free in-flight permits and tokens at `now`;
    /// `None` when either is out.
    pub(crate) fn reserve(&self, now: Millis) -> Option<Reserved> {
        let free = self.in_flight.available_permits();
        // Another task may take some between the count and the taking: then this one takes
        // none, as when there are none.
        let permit = u32::try_from(free)
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| self.in_flight.clone().try_acquire_many_owned(n).ok());
        let Some(permit) = permit else {
            self.refused.store(true, Ordering::Relaxed);
            return None;
        };
        let mut reserved = Reserved { permit };
        match self.take(free, now) {
            Ok(tokens) => {
                let surplus = free - tokens;
                if surplus > 0 {
                    drop(reserved.permit.split(surplus));
                }
                Some(reserved)
            }
            Err(_) => None,
        }
    }

    /// Take up to `want` tokens at `now`. Returns how many were taken, or how long to wait when
    /// none can be.
    pub(crate) fn take(&self, want: usize, now: Millis) -> Result<usize, Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = s.paused_until {
            if until > now {
                return Err(Duration::from_millis(
                    u64::try_from(until - now).unwrap_or(0),
                ));
            }
            s.paused_until = None;
        }
        let elapsed = s.refilled.map_or(0, |r| now.saturating_sub(r).max(0)) as f64;
        s.tokens = (s.tokens + elapsed * self.per_ms).min(self.capacity);
        s.refilled = Some(now);
        let whole = s.tokens.floor() as usize;
        if whole == 0 {
            let missing = 1.0 - s.tokens;
            return Err(Duration::from_secs_f64(missing / self.per_ms / 1000.0));
        }
        let n = whole.min(want);
        s.tokens -= n as f64;
        Ok(n)
    }

    /// Give back tokens taken for writes that were not made.
    pub(crate) fn give_back(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.tokens = (s.tokens + n as f64).min(self.capacity);
    }

    /// Stop every write to this target for `d` (the remote said `Retry-After`).
    pub(crate) fn pause(&self, d: Duration, now: Millis) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
        // The throttle window restarts: one request may go when the pause ends (the retry the
        // remote asked for), with no burst and no tokens earned while paused.
        s.tokens = 1.0;
        s.refilled = Some(s.refilled.map_or(until, |r| r.max(until)));
    }
}

/// The shortest backoff, whatever the configuration says.
const MIN_BACKOFF_MS: u64 = 10;

/// Exponential backoff with jitter: a delay drawn from `[d/2, d]` where
/// `d = min(max, base * 2^attempts)`.
pub(crate) fn backoff(cfg: &DispatchConfig, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let d = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.backoff_max_ms)
        .max(MIN_BACKOFF_MS);
    let ms = rand::rng().random_range(d / 2..=d);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u32, window_ms: u64) -> DispatchConfig {
        DispatchConfig {
            rate_limit: rate,
            rate_window_ms: window_ms,
            ..DispatchConfig::default()
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let c = DispatchConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..DispatchConfig::default()
        };
        for _ in 0..100 {
            let d0 = backoff(&c, 0).as_millis();
            assert!((50..=100).contains(&d0), "{d0}");
            let d2 = backoff(&c, 2).as_millis();
            assert!((200..=400).contains(&d2), "{d2}");
            let big = backoff(&c, 40).as_millis();
            assert!((500..=1_000).contains(&big), "{big}");
        }
    }

    #[test]
    fn token_bucket_allows_the_configured_rate_and_no_more() {
        let g = TargetGate::new(&cfg(10, 1_000));
        assert_eq!(g.take(100, 0), Ok(10));
        let wait = g.take(1, 0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(g.take(100, 500), Ok(5));
        assert!(g.take(1, 500).is_err());
    }

    #[test]
    fn a_reservation_is_as_many_free_slots_as_tokens_and_gives_back_what_is_not_kept() {
        let g = TargetGate::new(&DispatchConfig {
            max_in_flight: 4,
            ..cfg(3, 1_000)
        });
        let mut r = g.reserve(0).unwrap();
        assert_eq!(r.len(), 3, "three tokens");
        assert_eq!(g.in_flight.available_permits(), 1);
        assert!(g.reserve(0).is_none(), "no token left");
        r.keep(&g, 1);
        assert_eq!(g.in_flight.available_permits(), 3);
        let other = g.reserve(0).unwrap();
        assert_eq!(other.len(), 2, "the two tokens given back");
        let third = g.reserve(1_000).unwrap();
        assert_eq!(third.len(), 1, "one slot free: the others are held");
        assert!(g.reserve(1_000).is_none(), "every slot held");
        drop((r, other, third));
        assert_eq!(g.in_flight.available_permits(), 4);
        assert_eq!(
            g.reserve(1_000).unwrap().len(),
            2,
            "the window's tokens left"
        );
    }

    #[test]
    fn no_tokens_accrue_while_paused() {
        let g = TargetGate::new(&cfg(10, 1_000));
        assert_eq!(g.take(10, 0), Ok(10));
        g.pause(Duration::from_millis(5_000), 0);
        assert_eq!(g.take(10, 5_000), Ok(1), "no burst when the pause ends");
        assert_eq!(g.take(10, 5_500), Ok(5));
    }

    #[test]
    fn pause_blocks_until_retry_after_has_passed() {
        let g = TargetGate::new(&cfg(10, 1_000));
        g.pause(Duration::from_millis(1_500), 0);
        let wait = g.take(1, 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1_500));
        assert!(g.take(1, 1_499).is_err());
        assert!(g.take(1, 1_500).is_ok());
    }
}
