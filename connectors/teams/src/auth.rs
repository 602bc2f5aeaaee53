//! Tokens for Graph: app-only from `presync-entra` (reads and writes of presence), and delegated
//! from a stored refresh token (presence subscriptions, which Graph offers only to a delegated
//! user).
//!
//! The delegated account is a service account with `Presence.Read.All` consented. Its refresh
//! token lives in a file that only presync reads (mode 0600); presync redeems it with the
//! `refresh_token` grant and writes the rotated refresh token back before using the new access
//! token, so a crash never leaves it holding a spent token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presync_engine::ConnectorError;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::info;

use crate::client::Credentials;

/// App-only tokens (scope `https://graph.microsoft.com/.default`): the shared Entra adapter.
pub use presync_entra::EntraCredentials as AppCredentials;

/// Delegated tokens redeemed from a refresh token kept in a file.
#[derive(Debug, Clone)]
pub struct DelegatedCredentials {
    inner: Arc<Delegated>,
}

#[derive(Debug)]
struct Delegated {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    store: PathBuf,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    refresh_token: Option<String>,
}

impl DelegatedCredentials {
    /// Redeem the refresh token stored at `store` at `token_url` for `client_id` and `scope`
    /// (e.g. `https://graph.microsoft.com/Presence.Read.All offline_access`).
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        scope: impl Into<String>,
        store: PathBuf,
    ) -> Self {
        DelegatedCredentials {
            inner: Arc::new(Delegated {
                http: reqwest::Client::new(),
                token_url: token_url.into(),
                client_id: client_id.into(),
                scope: scope.into(),
                store,
                cached: Mutex::new(None),
            }),
        }
    }

    async fn redeem(&self) -> Result<(String, Instant), ConnectorError> {
        let d = &self.inner;
        let refresh = tokio::fs::read_to_string(&d.store).await.map_err(|e| {
            ConnectorError::Unauthorized {
                message: format!(
                    "no delegated refresh token at {} ({e}); run `presync teams login`",
                    d.store.display()
                ),
            }
        })?;
        let resp = d
            .http
            .post(&d.token_url)
            .form(&[
                ("client_id", d.client_id.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.trim()),
                ("scope", d.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                ConnectorError::transient(format!("delegated token request: {}", e.without_url()))
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let code = body
                .get("error")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            let message = format!(
                "delegated token request answered {status} {code}; run `presync teams login` again"
            );
            return Err(if status.is_server_error() {
                ConnectorError::transient(message)
            } else {
                ConnectorError::Unauthorized { message }
            });
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| ConnectorError::transient(format!("delegated token response: {e}")))?;
        if let Some(rotated) = t.refresh_token {
            crate::login::write_secret(&d.store, &rotated)
                .await
                .map_err(|e| ConnectorError::Unauthorized {
                    message: format!(
                        "could not store the rotated refresh token at {}: {e}",
                        d.store.display()
                    ),
                })?;
            info!("Delegated refresh token rotated");
        }
        let lifetime = Duration::from_secs(t.expires_in);
        // Refresh a tenth of the lifetime (at most 5 minutes) early.
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        Ok((
            t.access_token,
            Instant::now() + lifetime.saturating_sub(margin),
        ))
    }
}

#[async_trait]
impl Credentials for DelegatedCredentials {
    async fn bearer(&self) -> Result<String, ConnectorError> {
        let mut cached = self.inner.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(token.clone());
            }
        }
        let (token, refresh_at) = self.redeem().await?;
        *cached = Some((token.clone(), refresh_at));
        Ok(token)
    }

    fn invalidate(&self) {
        if let Ok(mut c) = self.inner.cached.try_lock() {
            *c = None;
        }
    }
}
