//! [`TokenError`]: why no access token could be had, and whether retrying can help.

use std::sync::Arc;
use std::time::Duration;

use crate::assertion::CredentialError;
use crate::config::ConfigProblem;

/// `Result` with [`TokenError`].
pub type Result<T, E = TokenError> = std::result::Result<T, E>;

/// Getting an access token failed. No variant ever holds the client secret, the private key or
/// an access token; Entra's `error_description` is shown as Entra sent it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TokenError {
    /// Entra answered with a 4xx and its error envelope (wrong secret, unknown app, bad scope,
    /// certificate not registered...). Retrying will not help until the configuration changes.
    #[error("Entra refused the token request (HTTP {status}, {code}): {description}")]
    Refused {
        /// HTTP status (400 or 401 in practice).
        status: u16,
        /// Entra's `error`, e.g. `invalid_client`, `invalid_scope`, `unauthorized_client`.
        code: String,
        /// Entra's `error_description`, which starts with the `AADSTS…` code.
        description: String,
    },
    /// The token endpoint could not answer now: a 5xx, 408 or 429, a timeout or a network error.
    /// Retry later, after [`TokenError::retry_after`] when it is set.
    #[error("token endpoint temporarily unavailable: {detail}")]
    Transient {
        /// HTTP status, if a response arrived.
        status: Option<u16>,
        /// The endpoint's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// What happened.
        detail: String,
        /// The transport error, if any.
        #[source]
        source: Option<Arc<reqwest::Error>>,
    },
    /// A success status with a body that is not a bearer token response (often a proxy in the
    /// way). Treated as transient.
    #[error("token endpoint gave an unusable answer (HTTP {status}): {reason}")]
    InvalidResponse {
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        reason: String,
    },
    /// The configured credential cannot be used (unreadable file, bad PEM, key not matching the
    /// certificate).
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The configuration is invalid; every problem is listed.
    #[error("invalid Entra configuration: {}", join_problems(.0))]
    InvalidConfig(Vec<ConfigProblem>),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for the token endpoint")]
    HttpClient(#[source] Arc<reqwest::Error>),
}

fn join_problems(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl TokenError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::InvalidResponse { .. })
    }

    /// How long the token endpoint asked us to wait (429 or 503 with `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Entra's `error` code when it refused the request.
    pub fn entra_code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn network(source: reqwest::Error) -> Self {
        let detail = if source.is_timeout() {
            "request timed out"
        } else if source.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        Self::Transient {
            status: None,
            retry_after: None,
            detail: detail.to_owned(),
            source: Some(Arc::new(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification_comes_from_the_variant() {
        let refused = TokenError::Refused {
            status: 401,
            code: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        };
        assert!(!refused.is_transient());
        assert_eq!(refused.retry_after(), None);
        assert_eq!(refused.entra_code(), Some("invalid_client"));

        let throttled = TokenError::Transient {
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            detail: "HTTP 429".into(),
            source: None,
        };
        assert!(throttled.is_transient());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));

        let credential = TokenError::from(CredentialError::InvalidPrivateKey);
        assert!(!credential.is_transient());
        assert!(TokenError::InvalidResponse {
            status: 200,
            reason: "x".into()
        }
        .is_transient());
    }

    #[test]
    fn invalid_config_lists_every_problem() {
        let err = TokenError::InvalidConfig(vec![
            ConfigProblem {
                field: "tenant_id",
                message: "must not be empty".into(),
            },
            ConfigProblem {
                field: "scope",
                message: "must end with /.default".into(),
            },
        ]);
        assert_eq!(
            err.to_string(),
            "invalid Entra configuration: tenant_id: must not be empty; scope: must end with /.default"
        );
    }
}
