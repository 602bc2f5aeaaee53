//! [`TokenClient`]: client-credentials tokens from Entra ID over one shared HTTP client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use crate::assertion::{resolve_pem, AssertionSigner, CertificateInfo, PemKind};
use crate::cache::{AccessToken, TokenCache};
use crate::config::{Credential, EntraConfig};
use crate::error::TokenError;
use crate::secret::Secret;

/// The `client_assertion_type` for a signed JWT.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Gets and caches access tokens for one app registration and one resource.
///
/// Cheap to clone (an `Arc` inside); clones share the cache and the HTTP client. Call
/// [`TokenClient::token`] before each request, and on a 401 from the resource call
/// [`TokenClient::invalidate`] (or [`TokenClient::invalidate_token`]) and retry once.
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: ResolvedCredential,
    cache: TokenCache,
}

enum ResolvedCredential {
    Certificate(AssertionSigner),
    ClientSecret(Secret),
}

impl TokenClient {
    /// Validates `config`, loads the credential (reading PEM files named by path, checking that
    /// the key matches the certificate) and builds the HTTP client. Does no network I/O.
    pub fn new(config: &EntraConfig) -> Result<Self, TokenError> {
        config.validate().map_err(TokenError::InvalidConfig)?;
        let credential = match &config.credential {
            Credential::Certificate {
                certificate_pem,
                private_key_pem,
                assertion,
            } => {
                let certificate = CertificateInfo::from_pem(&resolve_pem(
                    certificate_pem,
                    PemKind::Certificate,
                )?)?;
                let key_pem =
                    Secret::new(resolve_pem(private_key_pem.expose(), PemKind::PrivateKey)?);
                let signer = AssertionSigner::new(certificate, &key_pem, *assertion)?;
                tracing::info!(
                    client_id = %config.client_id,
                    thumbprint = %signer.certificate().sha1_thumbprint_hex(),
                    assertion = ?signer.mode(),
                    "Entra certificate credential loaded"
                );
                ResolvedCredential::Certificate(signer)
            }
            Credential::ClientSecret { client_secret } => {
                ResolvedCredential::ClientSecret(client_secret.clone())
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout())
            .timeout(config.request_timeout())
            .user_agent(concat!("presync-entra/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::HttpClient(Arc::new(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                token_url: config.token_url(),
                client_id: config.client_id.clone(),
                scope: config.scope.clone(),
                credential,
                cache: TokenCache::default(),
            }),
        })
    }

    /// A valid access token: the cached one, or a new one when less than 5 minutes (or a tenth
    /// of its lifetime) remain. Concurrent callers share one request to Entra.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        self.inner.cache.get_or_refresh(|| self.fetch()).await
    }

    /// Drops the cached token so the next [`TokenClient::token`] asks Entra. Call it when the
    /// resource answers 401, then retry once.
    pub fn invalidate(&self) {
        self.inner.cache.invalidate();
    }

    /// Like [`TokenClient::invalidate`], but only if `rejected` is still the cached token: when
    /// many requests fail with the same token, only one new token is fetched.
    pub fn invalidate_token(&self, rejected: &AccessToken) {
        self.inner.cache.invalidate_token(rejected);
    }

    /// The token endpoint, `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> &str {
        &self.inner.token_url
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let inner = &*self.inner;
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", inner.client_id.clone()),
            ("scope", inner.scope.clone()),
            ("grant_type", "client_credentials".to_owned()),
        ];
        match &inner.credential {
            ResolvedCredential::Certificate(signer) => {
                let assertion = signer.sign(&inner.client_id, &inner.token_url)?;
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", assertion));
            }
            ResolvedCredential::ClientSecret(secret) => {
                form.push(("client_secret", secret.expose().to_owned()));
            }
        }
        let sent_at = Instant::now();
        let response = inner
            .http
            .post(&inner.token_url)
            .header(ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(TokenError::network)?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        let body = response.bytes().await.map_err(TokenError::network)?;
        let result = interpret_response(status, retry_after, &body, sent_at);
        match &result {
            Ok(token) => tracing::debug!(
                client_id = %inner.client_id,
                scope = %inner.scope,
                expires_in_secs = token.expires_at().saturating_duration_since(sent_at).as_secs(),
                "Fetched Entra access token"
            ),
            Err(error) => tracing::debug!(
                client_id = %inner.client_id,
                scope = %inner.scope,
                error = %error,
                "Entra token request failed"
            ),
        }
        result.map_err(|e| self.redact(e))
    }

    /// Belt and braces: should an endpoint ever echo our client secret in its description, cut
    /// it out.
    fn redact(&self, error: TokenError) -> TokenError {
        let ResolvedCredential::ClientSecret(secret) = &self.inner.credential else {
            return error;
        };
        match error {
            TokenError::Refused {
                status,
                code,
                description,
            } if !secret.is_empty() && description.contains(secret.expose()) => {
                TokenError::Refused {
                    status,
                    code,
                    description: description.replace(secret.expose(), "***"),
                }
            }
            other => other,
        }
    }
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match &self.inner.credential {
            ResolvedCredential::Certificate(signer) => format!("certificate ({:?})", signer.mode()),
            ResolvedCredential::ClientSecret(_) => "client secret (***)".to_owned(),
        };
        f.debug_struct("TokenClient")
            .field("token_url", &self.inner.token_url)
            .field("client_id", &self.inner.client_id)
            .field("scope", &self.inner.scope)
            .field("credential", &credential)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token_type: String,
    /// A number from the v2.0 endpoint; some stacks send it as a string.
    expires_in: serde_json::Value,
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// `Retry-After` in seconds (integer or decimal). HTTP-date values are ignored.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Turns the token endpoint's answer into a token or a classified error.
fn interpret_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    sent_at: Instant,
) -> Result<AccessToken, TokenError> {
    if status.is_success() {
        let invalid = |reason: &str| TokenError::InvalidResponse {
            status: status.as_u16(),
            reason: reason.to_owned(),
        };
        let response: TokenResponse =
            serde_json::from_slice(body).map_err(|_| invalid("not a JSON token response"))?;
        if !response.token_type.eq_ignore_ascii_case("bearer") {
            return Err(invalid("token_type is not Bearer"));
        }
        let expires_in = match &response.expires_in {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|secs| *secs > 0)
        .ok_or_else(|| invalid("expires_in is not a positive number of seconds"))?;
        if response.access_token.is_empty() {
            return Err(invalid("access_token is empty"));
        }
        return AccessToken::new(
            response.access_token,
            Duration::from_secs(expires_in),
            sent_at,
        )
        .ok_or_else(|| invalid("access_token cannot be sent in an HTTP header"));
    }

    let envelope = serde_json::from_slice::<ErrorResponse>(body).ok();
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if transient {
        let detail = match &envelope {
            Some(e) => format!(
                "HTTP {} {}: {}",
                status.as_u16(),
                e.error,
                e.error_description
            ),
            None => format!("HTTP {}", status.as_u16()),
        };
        return Err(TokenError::Transient {
            status: Some(status.as_u16()),
            retry_after,
            detail,
            source: None,
        });
    }
    let (code, description) = match envelope {
        Some(e) => (e.error, e.error_description),
        None => (
            format!("http_{}", status.as_u16()),
            "the response has no Entra error body; check the authority URL".to_owned(),
        ),
    };
    Err(TokenError::Refused {
        status: status.as_u16(),
        code,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn interpret(status: u16, body: &str) -> Result<AccessToken, TokenError> {
        interpret_response(
            StatusCode::from_u16(status).unwrap(),
            None,
            body.as_bytes(),
            Instant::now(),
        )
    }

    #[test]
    fn success_body_becomes_a_token_expiring_after_expires_in() {
        let sent_at = Instant::now();
        let token = interpret_response(
            StatusCode::OK,
            None,
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0"}"#,
            sent_at,
        )
        .unwrap();
        assert_eq!(token.secret(), "eyJ0");
        assert_eq!(token.expires_at(), sent_at + Duration::from_secs(3599));
    }

    #[test]
    fn expires_in_as_a_string_is_accepted() {
        let token = interpret(
            200,
            r#"{"token_type":"bearer","expires_in":"3600","access_token":"x"}"#,
        )
        .unwrap();
        assert_eq!(token.secret(), "x");
    }

    #[test]
    fn non_bearer_or_garbled_success_is_an_invalid_response() {
        for body in [
            r#"{"token_type":"pop","expires_in":3599,"access_token":"x"}"#,
            r#"{"token_type":"Bearer","expires_in":0,"access_token":"x"}"#,
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":""}"#,
            "<html>proxy login</html>",
        ] {
            let err = interpret(200, body).unwrap_err();
            assert!(
                matches!(err, TokenError::InvalidResponse { .. }),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn invalid_client_is_refused_with_the_entra_description() {
        let err = interpret(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
        )
        .unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.entra_code(), Some("invalid_client"));
        assert!(err.to_string().contains("AADSTS7000215"), "{err}");
    }

    #[test]
    fn four_hundred_without_an_envelope_is_refused() {
        let err = interpret(404, "Not Found").unwrap_err();
        assert_eq!(err.entra_code(), Some("http_404"));
        assert!(!err.is_transient());
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        for status in [500, 502, 503, 504, 429, 408] {
            let err = interpret(
                status,
                r#"{"error":"server_error","error_description":"AADSTS50000"}"#,
            )
            .unwrap_err();
            assert!(err.is_transient(), "{status}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2.5"));
        assert_eq!(
            parse_retry_after(&headers),
            Some(Duration::from_millis(2500))
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn throttled_response_keeps_retry_after() {
        let err = interpret_response(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn new_rejects_an_invalid_config_listing_every_problem() {
        let config = EntraConfig::new("", "", "", Credential::client_secret("s"));
        let err = TokenClient::new(&config).unwrap_err();
        let TokenError::InvalidConfig(problems) = &err else {
            panic!("expected InvalidConfig, got {err:?}");
        };
        assert_eq!(problems.len(), 3);
    }

    #[test]
    fn redact_removes_an_echoed_secret() {
        let config = EntraConfig::new(
            "t",
            "c",
            "https://graph.microsoft.com/.default",
            Credential::client_secret("s3cr3t-value"),
        );
        let client = TokenClient::new(&config).unwrap();
        let err = client.redact(TokenError::Refused {
            status: 401,
            code: "invalid_client".into(),
            description: "AADSTS7000215: bad secret s3cr3t-value".into(),
        });
        assert!(!err.to_string().contains("s3cr3t-value"), "{err}");
        assert!(!format!("{client:?}").contains("s3cr3t-value"));
    }
}
