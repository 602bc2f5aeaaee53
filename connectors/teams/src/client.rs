//! The Microsoft Graph client for presence: writes (session and preferred), reads in batches
//! of 650, and presence subscriptions. One client-side limit covers every call of the app in
//! the tenant (10,000 requests per 30 s by default, the limit Graph documents for presence since September 2025), `Retry-After` is read as decimal seconds,
//! a 401 refreshes the token once, and the Graph error envelope is mapped to the engine's
//! error classes.

use std::sync::Arc;
use std::time::Duration;

pub use presync_engine::remote::Credentials;
use presync_engine::remote::{parse_retry_after, SlidingWindow};
use presync_engine::ConnectorError;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mapping::Pair;

/// At most this many ids per `getPresencesByUserId` call and per subscription.
pub const MAX_IDS: usize = 650;

/// One user's presence as Graph returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GraphPresence {
    pub id: String,
    pub availability: String,
    pub activity: String,
    #[serde(rename = "sequenceNumber", default)]
    pub sequence_number: Option<String>,
}

/// A subscription as Graph returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub expiration_date_time: String,
}

/// What a new subscription asks for.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    /// The users (at most 650).
    pub users: Vec<String>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    /// The secret Graph echoes in every notification (at most 128 characters).
    pub client_state: String,
    /// RFC 3339 UTC, at most 60 minutes ahead.
    pub expiration: String,
    /// Rich notifications: the base64 DER certificate and its id.
    pub encryption: Option<(String, String)>,
}

/// The Graph client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: String,
    app: Arc<dyn Credentials>,
    delegated: Option<Arc<dyn Credentials>>,
    limiter: SlidingWindow,
}

impl GraphClient {
    /// A client for `base` (`https://graph.microsoft.com/v1.0`), with app-only credentials for
    /// presence and, when subscriptions are used, delegated ones.
    pub fn new(
        base: &str,
        app: Arc<dyn Credentials>,
        delegated: Option<Arc<dyn Credentials>>,
        rate_limit: u32,
        window: Duration,
        timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|e| ConnectorError::transient(format!("HTTP client: {e}")))?;
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                base: base.trim_end_matches('/').to_owned(),
                app,
                delegated,
                limiter: SlidingWindow::new(rate_limit, window),
            }),
        })
    }

    /// `setPresence` for presync's session.
    pub async fn set_presence(
        &self,
        user: &str,
        session_id: &str,
        pair: &Pair,
        expiration: Duration,
    ) -> Result<(), ConnectorError> {
        let body = json!({
            "sessionId": session_id,
            "availability": pair.availability,
            "activity": pair.activity,
            "expirationDuration": iso_duration(expiration),
        });
        self.app_post(&format!("/users/{}/presence/setPresence", id(user)?), &body)
            .await
            .map(drop)
    }

    /// `clearPresence` for presync's session. A session that is already gone is not an error.
    pub async fn clear_presence(&self, user: &str, session_id: &str) -> Result<(), ConnectorError> {
        let body = json!({ "sessionId": session_id });
        match self
            .app_post(
                &format!("/users/{}/presence/clearPresence", id(user)?),
                &body,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ConnectorError::Rejected { message }) if message.contains("404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `setUserPreferredPresence`.
    pub async fn set_preferred(
        &self,
        user: &str,
        pair: &Pair,
        expiration: Duration,
    ) -> Result<(), ConnectorError> {
        let body = json!({
            "availability": pair.availability,
            "activity": pair.activity,
            "expirationDuration": iso_duration(expiration),
        });
        self.app_post(
            &format!("/users/{}/presence/setUserPreferredPresence", id(user)?),
            &body,
        )
        .await
        .map(drop)
    }

    /// `clearUserPreferredPresence`. The action takes no parameters; its documentation page
    /// sends an empty JSON object (graph.md §2), which presync sends with a JSON content type
    /// (the OpenAPI description declares no body at all, which Graph accepts as well).
    pub async fn clear_preferred(&self, user: &str) -> Result<(), ConnectorError> {
        let path = format!("/users/{}/presence/clearUserPreferredPresence", id(user)?);
        self.send(&self.inner.app, Method::POST, &path, Some(&json!({})))
            .await
            .map(drop)
    }

    /// `getPresencesByUserId`, in batches of at most 650 ids.
    pub async fn presences(&self, users: &[String]) -> Result<Vec<GraphPresence>, ConnectorError> {
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(MAX_IDS) {
            let mut v = self
                .app_post(
                    "/communications/getPresencesByUserId",
                    &json!({ "ids": chunk }),
                )
                .await?;
            let items = v
                .get_mut("value")
                .map_or(Value::Array(Vec::new()), Value::take);
            let batch: Vec<GraphPresence> =
                serde_json::from_value(items).map_err(|e| ConnectorError::Rejected {
                    message: format!("getPresencesByUserId answered an unexpected body: {e}"),
                })?;
            out.extend(batch);
        }
        Ok(out)
    }

    /// Create a presence subscription (delegated token).
    pub async fn subscribe(&self, s: &NewSubscription) -> Result<Subscription, ConnectorError> {
        if s.users.is_empty() || s.users.len() > MAX_IDS {
            return Err(ConnectorError::Rejected {
                message: format!(
                    "a presence subscription covers 1 to {MAX_IDS} users, not {}",
                    s.users.len()
                ),
            });
        }
        let ids: Vec<String> = s
            .users
            .iter()
            .map(|u| id(u).map(|u| format!("'{u}'")))
            .collect::<Result<_, _>>()?;
        let mut body = json!({
            "changeType": "updated",
            "notificationUrl": s.notification_url,
            "resource": format!("/communications/presences?$filter=id in ({})", ids.join(",")),
            "expirationDateTime": s.expiration,
            "clientState": s.client_state,
        });
        if let Some(l) = &s.lifecycle_notification_url {
            body["lifecycleNotificationUrl"] = json!(l);
        }
        if let Some((cert, cert_id)) = &s.encryption {
            body["includeResourceData"] = json!(true);
            body["encryptionCertificate"] = json!(cert);
            body["encryptionCertificateId"] = json!(cert_id);
        }
        let v = self
            .delegated_send(Method::POST, "/subscriptions", Some(&body))
            .await?;
        serde_json::from_value(v).map_err(|e| ConnectorError::Rejected {
            message: format!("POST /subscriptions answered an unexpected body: {e}"),
        })
    }

    /// Renew (and reauthorize) a subscription.
    pub async fn renew(
        &self,
        subscription_id: &str,
        expiration: &str,
    ) -> Result<Subscription, ConnectorError> {
        let body = json!({ "expirationDateTime": expiration });
        let v = self
            .delegated_send(
                Method::PATCH,
                &format!("/subscriptions/{}", id(subscription_id)?),
                Some(&body),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ConnectorError::Rejected {
            message: format!("PATCH /subscriptions answered an unexpected body: {e}"),
        })
    }

    /// Delete a subscription.
    pub async fn unsubscribe(&self, subscription_id: &str) -> Result<(), ConnectorError> {
        self.delegated_send(
            Method::DELETE,
            &format!("/subscriptions/{}", id(subscription_id)?),
            None,
        )
        .await
        .map(drop)
    }

    async fn app_post(&self, path: &str, body: &Value) -> Result<Value, ConnectorError> {
        self.send(&self.inner.app, Method::POST, path, Some(body))
            .await
    }

    async fn delegated_send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ConnectorError> {
        let creds = self.inner.delegated.as_ref().ok_or_else(|| ConnectorError::Unauthorized {
            message: "presence subscriptions need a delegated account (presync teams login); none is configured".into(),
        })?;
        self.send(creds, method, path, body).await
    }

    async fn send(
        &self,
        creds: &Arc<dyn Credentials>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ConnectorError> {
        self.inner.limiter.acquire("app").await;
        let url = format!("{}{path}", self.inner.base);
        let mut refreshed = false;
        loop {
            let token = creds.bearer().await?;
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let connect = e.is_connect();
                    let what = format!("{method} {path}: {}", e.without_url());
                    return Err(if connect || method == Method::GET {
                        ConnectorError::transient(what)
                    } else {
                        ConnectorError::unknown_outcome(what)
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                creds.invalidate();
                refreshed = true;
                continue;
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                return Ok(if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::Null)
                });
            }
            return Err(classify(&method, path, status, retry_after, &text));
        }
    }
}

/// A path segment that is an id: no slashes, quotes or query characters.
fn id(s: &str) -> Result<&str, ConnectorError> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '@')
    {
        Ok(s)
    } else {
        Err(ConnectorError::Rejected {
            message: format!("{s:?} is not a user or subscription id"),
        })
    }
}

/// `PT{n}M` (whole minutes, at least 5), as `expirationDuration` wants.
pub fn iso_duration(d: Duration) -> String {
    format!("PT{}M", (d.as_secs() / 60).max(5))
}

/// The Graph error envelope in the engine's classes. Decisions come from the status and the
/// error `code`, never from the message.
fn classify(
    method: &Method,
    path: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> ConnectorError {
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let message = format!("{method} {path} answered {status} {code}")
        .trim()
        .to_owned();
    match status.as_u16() {
        429 => ConnectorError::RateLimited {
            retry_after,
            message,
        },
        401 => ConnectorError::Unauthorized { message },
        503 | 509 if retry_after.is_some() => ConnectorError::RateLimited {
            retry_after,
            message,
        },
        500..=599 if *method == Method::POST => ConnectorError::unknown_outcome(message),
        500..=599 => ConnectorError::transient(message),
        _ => ConnectorError::Rejected { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_error_envelope_is_classified_by_status() {
        let p = Method::POST;
        let e = classify(
            &p,
            "/x",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(2_500)),
            r#"{"error":{"code":"TooManyRequests"}}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_millis(2_500)));
        assert!(e.to_string().contains("TooManyRequests"));
        assert!(matches!(
            classify(&p, "/x", StatusCode::BAD_REQUEST, None, ""),
            ConnectorError::Rejected { .. }
        ));
        assert!(classify(&p, "/x", StatusCode::BAD_GATEWAY, None, "").outcome_unknown());
        assert!(classify(&Method::GET, "/x", StatusCode::BAD_GATEWAY, None, "").is_transient());
        assert!(matches!(
            classify(&p, "/x", StatusCode::UNAUTHORIZED, None, ""),
            ConnectorError::Unauthorized { .. }
        ));
    }

    #[test]
    fn expiration_is_an_iso_duration_of_at_least_five_minutes() {
        assert_eq!(iso_duration(Duration::from_secs(3_600)), "PT60M");
        assert_eq!(iso_duration(Duration::from_secs(10)), "PT5M");
    }

    #[test]
    fn ids_cannot_smuggle_paths_or_filters() {
        assert!(id("fa8bf3dc-eca7-46b7-bad1-db199b62afc3").is_ok());
        assert!(id("x/../../me").is_err());
        assert!(id("a') or ('1").is_err());
    }
}
