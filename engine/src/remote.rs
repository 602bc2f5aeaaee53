//! Pieces every HTTP connector needs, written once: a source of bearer tokens, a sliding-window
//! request limit, and `Retry-After` parsing. No HTTP client here: connectors bring their own.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::connector::ConnectorError;

/// Where a connector's bearer tokens come from (an Entra client, a stored refresh token, a
/// fixed token in tests).
#[async_trait]
pub trait Credentials: Send + Sync + std::fmt::Debug {
    /// A bearer token.
    async fn bearer(&self) -> Result<String, ConnectorError>;
    /// Forget the cached token (the remote refused it); the next call fetches a new one.
    fn invalidate(&self);
}

/// `Retry-After` as seconds, whole or decimal (`7`, `2.128`), capped at a day. An HTTP-date is
/// not accepted.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// A sliding-window request limit per key (the impersonated user, or one key for an app).
///
/// The window kept is a little longer than the server's ([`margin`]): a request is timed here
/// when it is let go, but the server times it when it arrives, a variable while later, and on
/// its own (millisecond) clock. With the exact window, a request let go just as the oldest one
/// left the window could arrive inside the server's, and be answered 429 (`presync bench`'s
/// burst found 1.8 per window).
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SlidingWindow {
    /// At most `limit` requests per key in any `window` (plus its [`margin`]).
    pub fn new(limit: u32, window: Duration) -> Self {
        SlidingWindow {
            limit: usize::try_from(limit.max(1)).unwrap_or(usize::MAX),
            window: window + margin(window),
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Wait until one more request for `key` stays within the limit, then count it.
    pub async fn acquire(&self, key: &str) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().await;
                let q = sent.entry(key.to_owned()).or_default();
                let now = Instant::now();
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() < self.limit {
                    q.push_back(now);
                    return;
                }
                q.front().map_or(Duration::ZERO, |t| {
                    self.window.saturating_sub(now.duration_since(*t))
                })
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// How much longer than the server's `window` a [`SlidingWindow`] keeps: 2% of it, at least
/// 100 ms, at most 2 s (at Graph's 1,500 per 30 s, 600 ms: 2% of the throughput).
pub fn margin(window: Duration) -> Duration {
    (window / 50).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_whole_and_decimal_seconds() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 2.128 "),
            Some(Duration::from_millis(2_128))
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_stays_within_its_window() {
        let l = SlidingWindow::new(3, Duration::from_secs(300));
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire("a").await;
        }
        l.acquire("b").await;
        assert_eq!(Instant::now(), start, "under the limit: no wait");
        l.acquire("a").await;
        assert_eq!(
            Instant::now().duration_since(start),
            Duration::from_secs(300) + margin(Duration::from_secs(300))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_past_the_servers_window_by_a_margin() {
        // Regression (presync bench, burst): waiting exactly the window let requests reach the
        // Teams simulator inside its window, answered 429.
        let window = Duration::from_secs(30);
        let l = SlidingWindow::new(2, window);
        let start = Instant::now();
        l.acquire("app").await;
        l.acquire("app").await;
        l.acquire("app").await;
        let waited = Instant::now().duration_since(start);
        assert!(waited > window, "{waited:?}");
        assert_eq!(waited, window + Duration::from_millis(600));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(100));
        assert_eq!(margin(Duration::from_secs(300)), Duration::from_secs(2));
    }
}
