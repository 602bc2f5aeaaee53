//! `presync teams login`: the OAuth 2.0 device authorization grant (RFC 8628) against Microsoft
//! Entra ID, signing in the service account whose delegated token presence subscriptions need
//! (graph.md §1.3, §6.1).
//!
//! [`DeviceLogin::start`] asks Entra for a device code and returns what to show the operator
//! (the user code and where to enter it); [`DeviceLogin::wait`] polls the token endpoint until the
//! operator has signed in, then stores the refresh token in a file readable by its owner only
//! (mode 0600, written to a temporary file and renamed into place), where
//! [`crate::auth::DelegatedCredentials`] redeems it. Neither the refresh token, the access token
//! nor the device code is ever printed, logged or put in an error; the user code is, since the
//! operator has to type it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The default scope: presence of every user, for subscriptions, and a refresh token.
pub const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/Presence.Read.All offline_access";

/// The grant type of the device authorization grant (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Polling interval when Entra names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: u64 = 5;

/// What went wrong while signing in. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Entra could not be reached or did not answer.
    #[error("could not reach Entra at {url}: {source}; check the network and the authority")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Entra refused to start a sign-in or to issue tokens.
    #[error("Entra refused the {step} ({status} {error}: {description}); check the tenant, the client id, that the app registration allows public client flows, and the scope")]
    Refused {
        step: &'static str,
        status: u16,
        error: String,
        description: String,
    },
    /// Entra answered something that is not what the protocol says.
    #[error("Entra's answer to the {step} could not be read: {reason}")]
    BadResponse { step: &'static str, reason: String },
    /// The person declined the sign-in.
    #[error("the sign-in with code {user_code} was declined; run `presync teams login` again and approve it as the service account")]
    Declined { user_code: String },
    /// The code expired before anyone signed in with it.
    #[error("the code {user_code} expired before the sign-in was completed; run `presync teams login` again and sign in within {minutes} minutes")]
    Expired { user_code: String, minutes: u64 },
    /// Entra no longer knows the device code.
    #[error("Entra did not recognise the device code (bad_verification_code); run `presync teams login` again")]
    BadCode,
    /// Tokens came without a refresh token.
    #[error("Entra issued no refresh token; the scope must include offline_access")]
    NoRefreshToken,
    /// The refresh token could not be stored.
    #[error("could not store the refresh token at {}: {source}; check that the directory is writable by presync", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A device-code sign-in in progress: what to show the operator. The device code itself stays
/// inside (and out of `Debug`).
#[derive(Clone, Deserialize)]
pub struct DeviceCode {
    device_code: String,
    /// The code the person enters at [`DeviceCode::verification_uri`].
    pub user_code: String,
    /// Where to sign in, e.g. `https://microsoft.com/devicelogin`.
    pub verification_uri: String,
    /// Seconds until the codes expire.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    #[serde(default = "default_interval")]
    pub interval: u64,
    /// Entra's instructions for the person, ready to print.
    #[serde(default)]
    pub message: String,
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL
}

impl std::fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCode")
            .field("device_code", &"***")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .field("message", &self.message)
            .finish()
    }
}

/// The device-code flow client for one tenant and application (a public client).
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// e.g. `https://login.microsoftonline.com`.
    authority: String,
    tenant: String,
    client_id: String,
    /// Default [`DEFAULT_SCOPE`].
    scope: String,
    http: reqwest::Client,
}

/// An OAuth error body (Entra adds `error_codes`, `trace_id` and more).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The fields of a successful token answer that login needs. Not `Debug`: it holds a token.
#[derive(Deserialize)]
struct Tokens {
    refresh_token: Option<String>,
}

/// What one poll of the token endpoint means.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    /// Keep polling at the same interval.
    Pending,
    /// Keep polling, 5 s slower from now on.
    SlowDown,
    Declined,
    Expired,
    BadCode,
    /// Any other error: stop.
    Other,
}

fn classify(error: &str) -> Poll {
    match error {
        "authorization_pending" => Poll::Pending,
        "slow_down" => Poll::SlowDown,
        "authorization_declined" | "access_denied" => Poll::Declined,
        "expired_token" | "code_expired" => Poll::Expired,
        "bad_verification_code" => Poll::BadCode,
        _ => Poll::Other,
    }
}

impl DeviceLogin {
    /// A client for `client_id` in `tenant` at `authority` (e.g.
    /// `https://login.microsoftonline.com`), asking for [`DEFAULT_SCOPE`].
    pub fn new(
        authority: impl Into<String>,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Result<Self, LoginError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(LoginError::Client)?;
        Ok(DeviceLogin {
            authority: authority.into().trim_end_matches('/').to_owned(),
            tenant: tenant.into(),
            client_id: client_id.into(),
            scope: DEFAULT_SCOPE.to_owned(),
            http,
        })
    }

    /// Ask for `scope` instead (space-separated; include `offline_access`).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{endpoint}", self.authority, self.tenant)
    }

    /// Start a sign-in: `POST {authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub async fn start(&self) -> Result<DeviceCode, LoginError> {
        const STEP: &str = "device-code request";
        let url = self.url("devicecode");
        let resp = self
            .http
            .post(&url)
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("scope", self.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| LoginError::Unreachable {
                url: url.clone(),
                source: e.without_url(),
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| LoginError::Unreachable {
            url: url.clone(),
            source: e.without_url(),
        })?;
        if !status.is_success() {
            return Err(refused(STEP, status.as_u16(), &body, None));
        }
        let code: DeviceCode =
            serde_json::from_slice(&body).map_err(|e| LoginError::BadResponse {
                step: STEP,
                reason: e.to_string(),
            })?;
        info!(
            user_code = %code.user_code,
            verification_uri = %code.verification_uri,
            expires_in = code.expires_in,
            "Device-code sign-in started"
        );
        Ok(code)
    }

    /// Poll `POST {authority}/{tenant}/oauth2/v2.0/token` every `code.interval` seconds until the
    /// sign-in completes, then store the refresh token at `store` (mode 0600, atomically,
    /// creating the directory). Gives up after `code.expires_in` seconds. Network failures and
    /// 5xx answers are retried at the next interval.
    pub async fn wait(&self, code: &DeviceCode, store: &Path) -> Result<(), LoginError> {
        const STEP: &str = "token request";
        let url = self.url("token");
        let deadline = Instant::now() + Duration::from_secs(code.expires_in);
        let mut interval = Duration::from_secs(code.interval.max(1));
        let expired = || LoginError::Expired {
            user_code: code.user_code.clone(),
            minutes: code.expires_in.div_ceil(60),
        };
        loop {
            if Instant::now() + interval > deadline {
                return Err(expired());
            }
            tokio::time::sleep(interval).await;
            let sent = self
                .http
                .post(&url)
                .form(&[
                    ("grant_type", DEVICE_CODE_GRANT),
                    ("client_id", self.client_id.as_str()),
                    ("device_code", code.device_code.as_str()),
                ])
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e.without_url(), "Token endpoint unreachable; polling again");
                    continue;
                }
            };
            let status = resp.status();
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e.without_url(), "Token answer lost; polling again");
                    continue;
                }
            };
            if status.is_success() {
                let tokens: Tokens =
                    serde_json::from_slice(&body).map_err(|_| LoginError::BadResponse {
                        step: STEP,
                        reason: "not a token answer".to_owned(),
                    })?;
                let refresh = tokens.refresh_token.ok_or(LoginError::NoRefreshToken)?;
                write_secret(store, &refresh)
                    .await
                    .map_err(|source| LoginError::Store {
                        path: store.to_owned(),
                        source,
                    })?;
                info!(store = %store.display(), "Signed in; refresh token stored");
                return Ok(());
            }
            if status.is_server_error() {
                warn!(
                    status = status.as_u16(),
                    "Token endpoint failed; polling again"
                );
                continue;
            }
            let error = serde_json::from_slice::<OAuthError>(&body)
                .map(|e| e.error)
                .unwrap_or_default();
            match classify(&error) {
                Poll::Pending => debug!("Sign-in pending"),
                Poll::SlowDown => {
                    interval += Duration::from_secs(5);
                    debug!(interval_secs = interval.as_secs(), "Asked to slow down");
                }
                Poll::Declined => {
                    return Err(LoginError::Declined {
                        user_code: code.user_code.clone(),
                    })
                }
                Poll::Expired => return Err(expired()),
                Poll::BadCode => return Err(LoginError::BadCode),
                Poll::Other => {
                    return Err(refused(
                        STEP,
                        status.as_u16(),
                        &body,
                        Some(&code.device_code),
                    ))
                }
            }
        }
    }
}

/// A [`LoginError::Refused`] from an OAuth error body; the description is cut before Entra's
/// trace ids and never contains `secret`.
fn refused(step: &'static str, status: u16, body: &[u8], secret: Option<&str>) -> LoginError {
    let (error, description) = match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => {
            let d = e.error_description;
            let d = d.split(" Trace ID:").next().unwrap_or_default().trim();
            (e.error, d.to_owned())
        }
        Err(_) => (String::new(), "no OAuth error in the answer".to_owned()),
    };
    let scrub = |s: String| match secret {
        Some(x) if !x.is_empty() => s.replace(x, "***"),
        _ => s,
    };
    LoginError::Refused {
        step,
        status,
        error: scrub(error),
        description: scrub(description),
    }
}

/// Write a secret to `path` readable by its owner only, atomically: create the directory
/// (mode 0700 when new), write a temporary file created with mode 0600 beside it, flush it to
/// disk, and rename it into place.
/// Write a secret file readable by its owner only, atomically (temporary file, sync, rename).
pub(crate) async fn write_secret(path: &Path, value: &str) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut dir = tokio::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    dir.mode(0o700);
    dir.create(parent).await?;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let result = async {
        let mut file = options.open(&tmp).await?;
        #[cfg(unix)]
        {
            // A leftover temporary file keeps its old mode; tighten it before writing.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .await?;
        }
        file.write_all(value.as_bytes()).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_errors_are_classified_by_their_oauth_code() {
        assert_eq!(classify("authorization_pending"), Poll::Pending);
        assert_eq!(classify("slow_down"), Poll::SlowDown);
        assert_eq!(classify("authorization_declined"), Poll::Declined);
        assert_eq!(classify("expired_token"), Poll::Expired);
        assert_eq!(classify("bad_verification_code"), Poll::BadCode);
        assert_eq!(classify("invalid_client"), Poll::Other);
    }

    #[test]
    fn debug_of_a_device_code_hides_the_device_code() {
        let code: DeviceCode = serde_json::from_str(
            r#"{"device_code":"DEVICE-SECRET","user_code":"ABCD1234","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"m"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{code:?}");
        assert!(!shown.contains("DEVICE-SECRET"), "{shown}");
        assert!(shown.contains("ABCD1234"));
    }

    #[test]
    fn refusals_drop_trace_ids_and_the_device_code() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS1: bad sim.dc.XYZ Trace ID: 1 Correlation ID: 2"}"#;
        let e = refused("token request", 400, body, Some("sim.dc.XYZ")).to_string();
        assert!(!e.contains("sim.dc.XYZ"), "{e}");
        assert!(!e.contains("Trace ID"), "{e}");
        assert!(e.contains("AADSTS1"), "{e}");
    }
}
