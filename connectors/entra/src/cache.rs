//! [`AccessToken`] and the cache that hands it out: refreshed early, one refresh at a time.
//!
//! Time is `tokio::time::Instant`, so tests move it with `tokio::time::pause()`/`advance()`.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reqwest::header::HeaderValue;
use tokio::time::Instant;

use crate::error::TokenError;

/// A token is refreshed when less than this remains...
pub const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// ...or, for short-lived tokens, when less than this fraction (1/10) of its lifetime remains.
const REFRESH_MARGIN_DIVISOR: u32 = 10;
/// After a failed refresh, while the current token is still valid, wait this long (or the
/// endpoint's `Retry-After`, if longer) before trying again.
const RETRY_WHILE_VALID: Duration = Duration::from_secs(10);

/// An OAuth access token. Cheap to clone; `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    value: String,
    header: HeaderValue,
    expires_at: Instant,
    refresh_at: Instant,
}

impl AccessToken {
    /// A token issued at `issued_at` that lives `lifetime`. `None` if the value cannot be sent
    /// in an HTTP header.
    pub(crate) fn new(value: String, lifetime: Duration, issued_at: Instant) -> Option<Self> {
        let mut header = HeaderValue::from_str(&format!("Bearer {value}")).ok()?;
        header.set_sensitive(true);
        let margin = MAX_REFRESH_MARGIN.min(lifetime / REFRESH_MARGIN_DIVISOR);
        Some(Self {
            inner: Arc::new(TokenInner {
                value,
                header,
                expires_at: issued_at + lifetime,
                refresh_at: issued_at + lifetime - margin,
            }),
        })
    }

    /// The bare token, for APIs that want it without the `Bearer ` prefix. Do not log it.
    pub fn secret(&self) -> &str {
        &self.inner.value
    }

    /// `Bearer <token>` for the `Authorization` header, marked sensitive so HTTP stacks do not
    /// log it.
    pub fn header_value(&self) -> HeaderValue {
        self.inner.header.clone()
    }

    /// When Entra said the token expires.
    pub fn expires_at(&self) -> Instant {
        self.inner.expires_at
    }

    /// From when the cache fetches a replacement: 5 minutes, or a tenth of the lifetime if that
    /// is shorter, before expiry.
    pub fn refresh_at(&self) -> Instant {
        self.inner.refresh_at
    }

    /// Whether the token has expired.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.inner.expires_at
    }
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.value == other.inner.value
    }
}

impl Eq for AccessToken {}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"***")
            .field("expires_at", &self.inner.expires_at)
            .finish()
    }
}

/// Holds the current token; refreshes it through a caller-supplied fetch, one at a time.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    state: Mutex<State>,
    /// Held for the whole of a refresh, so concurrent callers wait for it instead of each
    /// asking Entra.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    token: Option<AccessToken>,
    /// Completed fetches, so a waiter can tell that a refresh ran while it waited.
    attempts: u64,
    last_error: Option<TokenError>,
    /// Set after a failed refresh while the current token was still valid.
    retry_not_before: Option<Instant>,
}

impl TokenCache {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token if it does not need refreshing yet.
    fn usable(&self, now: Instant) -> Option<AccessToken> {
        let state = self.state();
        let token = state.token.as_ref()?;
        let backing_off = state.retry_not_before.is_some_and(|t| now < t);
        (now < token.refresh_at() || (backing_off && now < token.expires_at()))
            .then(|| token.clone())
    }

    /// The cached token, or a new one from `fetch`. Callers that arrive during a refresh wait for
    /// it and share its outcome, success or failure.
    pub(crate) async fn get_or_refresh<F, Fut>(&self, fetch: F) -> Result<AccessToken, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, TokenError>>,
    {
        if let Some(token) = self.usable(Instant::now()) {
            return Ok(token);
        }
        let attempts_seen = self.state().attempts;
        let _refreshing = self.refresh.lock().await;
        if let Some(token) = self.usable(Instant::now()) {
            return Ok(token);
        }
        {
            let state = self.state();
            if state.attempts != attempts_seen {
                if let Some(error) = &state.last_error {
                    return Err(error.clone());
                }
            }
        }

        let result = fetch().await;

        let mut state = self.state();
        state.attempts += 1;
        match result {
            Ok(token) => {
                state.token = Some(token.clone());
                state.last_error = None;
                state.retry_not_before = None;
                Ok(token)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                let now = Instant::now();
                let current = state
                    .token
                    .as_ref()
                    .filter(|t| now < t.expires_at())
                    .cloned();
                match current {
                    Some(token) => {
                        let wait = error
                            .retry_after()
                            .map_or(RETRY_WHILE_VALID, |d| d.max(RETRY_WHILE_VALID));
                        state.retry_not_before = Some(now + wait);
                        tracing::warn!(
                            error = %error,
                            retry_in_secs = wait.as_secs(),
                            "Entra token refresh failed; using the current token until it expires"
                        );
                        Ok(token)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// Drops the cached token; the next call fetches a new one.
    pub(crate) fn invalidate(&self) {
        let mut state = self.state();
        state.token = None;
        state.retry_not_before = None;
    }

    /// Drops the cached token only if it is `rejected`, so that many requests failing with the
    /// same old token cause one refresh, not one each.
    pub(crate) fn invalidate_token(&self, rejected: &AccessToken) {
        let mut state = self.state();
        if state.token.as_ref() == Some(rejected) {
            state.token = None;
            state.retry_not_before = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);

    fn fetcher(
        calls: &Arc<AtomicUsize>,
        lifetime: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send>>
    {
        let calls = Arc::clone(calls);
        move || {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(AccessToken::new(format!("token-{n}"), lifetime, Instant::now()).unwrap())
            })
        }
    }

    fn failing(
        calls: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send>>
    {
        let calls = Arc::clone(calls);
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(TokenError::Transient {
                    status: Some(503),
                    retry_after: None,
                    detail: "HTTP 503".into(),
                    source: None,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_is_reused_until_five_minutes_before_expiry() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        tokio::time::advance(Duration::from_secs(3600 - 301)).await;
        let again = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let refreshed = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        assert_ne!(first, refreshed);
        assert_eq!(refreshed.secret(), "token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_token_is_refreshed_with_a_tenth_of_its_lifetime_left() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let lifetime = Duration::from_secs(60);
        let first = cache
            .get_or_refresh(fetcher(&calls, lifetime))
            .await
            .unwrap();
        assert_eq!(
            first.refresh_at() + Duration::from_secs(6),
            first.expires_at()
        );
        tokio::time::advance(Duration::from_secs(53)).await;
        cache
            .get_or_refresh(fetcher(&calls, lifetime))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        cache
            .get_or_refresh(fetcher(&calls, lifetime))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let cache = Arc::clone(&cache);
            let fetch = fetcher(&calls, HOUR);
            tasks.spawn(async move { cache.get_or_refresh(fetch).await });
        }
        let tokens: Vec<_> = tasks.join_all().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(tokens
            .iter()
            .all(|t| t.as_ref().unwrap().secret() == "token-0"));
    }

    #[tokio::test(start_paused = true)]
    async fn callers_waiting_on_a_failed_refresh_share_its_error() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let cache = Arc::clone(&cache);
            let fetch = failing(&calls);
            tasks.spawn(async move { cache.get_or_refresh(fetch).await });
        }
        let results = tasks.join_all().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_err_and(TokenError::is_transient)));
        // A later caller tries again.
        cache.get_or_refresh(failing(&calls)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_the_still_valid_token_and_backs_off() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        tokio::time::advance(Duration::from_secs(3400)).await;
        let kept = cache.get_or_refresh(failing(&calls)).await.unwrap();
        assert_eq!(kept, first);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Within the back-off: no new request.
        cache.get_or_refresh(failing(&calls)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        let refreshed = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        assert_ne!(refreshed, first);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_is_not_returned_when_refresh_fails() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        tokio::time::advance(HOUR).await;
        assert!(cache.get_or_refresh(failing(&calls)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forces_a_fetch_and_invalidate_token_ignores_stale_tokens() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let first = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        cache.invalidate();
        let second = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        assert_ne!(first, second);
        cache.invalidate_token(&first);
        assert_eq!(
            cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap(),
            second
        );
        cache.invalidate_token(&second);
        let third = cache.get_or_refresh(fetcher(&calls, HOUR)).await.unwrap();
        assert_ne!(third, second);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn access_token_debug_hides_the_token() {
        let token = AccessToken::new("eyJsecret".into(), HOUR, Instant::now()).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("eyJsecret"), "{shown}");
        assert!(token.header_value().is_sensitive());
        assert_eq!(token.header_value(), "Bearer eyJsecret");
    }

    #[test]
    fn token_with_a_newline_is_rejected() {
        assert!(AccessToken::new("a\nb".into(), HOUR, Instant::now()).is_none());
    }
}
