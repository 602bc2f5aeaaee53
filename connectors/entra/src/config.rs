//! [`EntraConfig`]: who we are in Entra ID, what we ask a token for, and how we prove it.
//!
//! Deserialized from the connector's section of the presync config (unknown keys are an error),
//! checked with the pure [`EntraConfig::validate`], then turned into a client with
//! [`crate::TokenClient::new`]. Secrets are [`Secret`]s, so `Debug` of a config never shows them.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::assertion::{read_pem_file, CredentialError, PemKind};
use crate::secret::Secret;

/// The public-cloud Entra authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default TCP connect timeout for the token endpoint, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Default timeout for a whole token request, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// OAuth 2.0 client-credentials settings for one resource (Dataverse or Graph).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Base URL of the Entra authority, without the tenant. Default
    /// `https://login.microsoftonline.com`; sovereign clouds use their own (for example
    /// `https://login.microsoftonline.us`), simulators `http://127.0.0.1:PORT`. The token URL is
    /// `{authority}/{tenant_id}/oauth2/v2.0/token`.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Directory (tenant) id, a GUID or a verified domain such as `contoso.onmicrosoft.com`.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// The single resource to ask for, ending in `/.default`: the Dataverse environment URL
    /// (`https://contoso.crm.dynamics.com/.default`) or `https://graph.microsoft.com/.default`.
    pub scope: String,
    /// How the application proves its identity: a certificate (preferred) or a client secret.
    pub credential: Credential,
    /// TCP connect timeout for the token endpoint, in seconds (default 10).
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Timeout for a whole token request, in seconds (default 30).
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

/// The application's credential, tagged by `kind`: `"certificate"` or `"client_secret"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// A certificate uploaded to the app registration, and its private key. Each value is either
    /// the PEM text itself (it starts with `-----BEGIN`) or the path of a file holding it.
    Certificate {
        /// The X.509 certificate, PEM (`-----BEGIN CERTIFICATE-----`), inline or a file path. If
        /// the text holds several PEM blocks, the first certificate is used.
        certificate_pem: String,
        /// The certificate's RSA private key, unencrypted PEM, PKCS#8 (`BEGIN PRIVATE KEY`) or
        /// PKCS#1 (`BEGIN RSA PRIVATE KEY`), inline or a file path.
        private_key_pem: Secret,
        /// How the client assertion is signed: `"ps256"` (default; `x5t#S256` SHA-256
        /// thumbprint, current Entra guidance) or `"rs256"` (`x5t` SHA-1 thumbprint, legacy).
        #[serde(default)]
        assertion: AssertionMode,
    },
    /// A client secret from the app registration's "Certificates & secrets" page.
    ClientSecret {
        /// The secret's value (not its id).
        client_secret: Secret,
    },
}

/// Signature algorithm and thumbprint header of the client assertion JWT.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AssertionMode {
    /// `alg: PS256` (RSASSA-PSS, SHA-256) with `x5t#S256`, the SHA-256 certificate thumbprint.
    #[default]
    Ps256,
    /// `alg: RS256` (RSASSA-PKCS1-v1_5, SHA-256) with `x5t`, the SHA-1 certificate thumbprint.
    Rs256,
}

/// One problem found by [`EntraConfig::validate`], with the key path inside the Entra section.
/// The message never contains a secret value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigProblem {
    /// Key path relative to the Entra section, e.g. `credential.client_secret`.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigProblem {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl EntraConfig {
    /// A config with the default authority and timeouts.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        scope: impl Into<String>,
        credential: Credential,
    ) -> Self {
        Self {
            authority: default_authority(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            scope: scope.into(),
            credential,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
        }
    }

    /// Replaces the authority (sovereign cloud or simulator).
    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = authority.into();
        self
    }

    /// `{authority}/{tenant_id}/oauth2/v2.0/token`; also the `aud` of the client assertion.
    pub fn token_url(&self) -> String {
        token_url(&self.authority, &self.tenant_id)
    }

    /// TCP connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Whole-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Checks everything that can be checked without I/O and reports every problem, not just
    /// the first. Files named by the credential are read later, by [`crate::TokenClient::new`].
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.authority) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => problems.push(
                ConfigProblem::new("authority", "must be an http or https URL"),
            ),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => problems.push(
                ConfigProblem::new("authority", "must not have a query or fragment"),
            ),
            Ok(_) => {}
            Err(e) => problems.push(ConfigProblem::new(
                "authority",
                format!("not a URL ({e}); expected e.g. {DEFAULT_AUTHORITY}"),
            )),
        }
        if self.tenant_id.trim().is_empty() {
            problems.push(ConfigProblem::new("tenant_id", "must not be empty"));
        } else if !self
            .tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            problems.push(ConfigProblem::new(
                "tenant_id",
                "must be a tenant GUID or domain name",
            ));
        }
        if self.client_id.trim().is_empty() {
            problems.push(ConfigProblem::new("client_id", "must not be empty"));
        }
        if self.scope.trim().is_empty() {
            problems.push(ConfigProblem::new("scope", "must not be empty"));
        } else if self.scope.split_whitespace().count() != 1 {
            problems.push(ConfigProblem::new(
                "scope",
                "must name exactly one resource (client credentials allow only one)",
            ));
        } else if !self.scope.ends_with("/.default") {
            problems.push(ConfigProblem::new(
                "scope",
                "must end with /.default, e.g. https://graph.microsoft.com/.default",
            ));
        }
        if self.connect_timeout_secs == 0 {
            problems.push(ConfigProblem::new(
                "connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.request_timeout_secs == 0 {
            problems.push(ConfigProblem::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        match &self.credential {
            Credential::Certificate {
                certificate_pem,
                private_key_pem,
                ..
            } => {
                if certificate_pem.trim().is_empty() {
                    problems.push(ConfigProblem::new(
                        "credential.certificate_pem",
                        "must be PEM text or a file path",
                    ));
                }
                if private_key_pem.expose().trim().is_empty() {
                    problems.push(ConfigProblem::new(
                        "credential.private_key_pem",
                        "must be PEM text or a file path",
                    ));
                }
            }
            Credential::ClientSecret { client_secret } => {
                if client_secret.is_empty() {
                    problems.push(ConfigProblem::new(
                        "credential.client_secret",
                        "must not be empty",
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Credential {
    /// A certificate credential from PEM text (or file paths, resolved when the client is
    /// built).
    pub fn certificate(
        certificate_pem: impl Into<String>,
        private_key_pem: impl Into<Secret>,
        assertion: AssertionMode,
    ) -> Self {
        Self::Certificate {
            certificate_pem: certificate_pem.into(),
            private_key_pem: private_key_pem.into(),
            assertion,
        }
    }

    /// Reads the certificate and private key PEM files now and returns a credential holding
    /// their text. Errors name the certificate path but never the key's path or content.
    pub fn certificate_from_files(
        certificate_path: impl AsRef<Path>,
        private_key_path: impl AsRef<Path>,
        assertion: AssertionMode,
    ) -> Result<Self, CredentialError> {
        let certificate_pem = read_pem_file(certificate_path.as_ref(), PemKind::Certificate)?;
        let private_key_pem = read_pem_file(private_key_path.as_ref(), PemKind::PrivateKey)?;
        Ok(Self::Certificate {
            certificate_pem,
            private_key_pem: Secret::new(private_key_pem),
            assertion,
        })
    }

    /// A client-secret credential.
    pub fn client_secret(secret: impl Into<Secret>) -> Self {
        Self::ClientSecret {
            client_secret: secret.into(),
        }
    }
}

/// `{authority}/{tenant_id}/oauth2/v2.0/token`, tolerating a trailing slash on the authority.
pub(crate) fn token_url(authority: &str, tenant_id: &str) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        authority.trim_end_matches('/'),
        tenant_id
    )
}

fn default_authority() -> String {
    DEFAULT_AUTHORITY.to_owned()
}

fn default_connect_timeout_secs() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}

fn default_request_timeout_secs() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/entra/test-only-cert.pem"
    );
    const KEY_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/entra/test-only-key.pem"
    );

    fn secret_config() -> EntraConfig {
        EntraConfig::new(
            "contoso.onmicrosoft.com",
            "11111111-2222-3333-4444-555555555555",
            "https://graph.microsoft.com/.default",
            Credential::client_secret("do-not-print-me"),
        )
    }

    #[test]
    fn certificate_config_deserializes_with_defaults() {
        let config: EntraConfig = serde_json::from_value(serde_json::json!({
            "tenant_id": "t1",
            "client_id": "c1",
            "scope": "https://contoso.crm.dynamics.com/.default",
            "credential": {
                "kind": "certificate",
                "certificate_pem": "/etc/presync/cert.pem",
                "private_key_pem": "/etc/presync/key.pem"
            }
        }))
        .unwrap();
        assert_eq!(config.authority, DEFAULT_AUTHORITY);
        assert_eq!(config.connect_timeout(), Duration::from_secs(10));
        assert_eq!(config.request_timeout(), Duration::from_secs(30));
        assert!(matches!(
            config.credential,
            Credential::Certificate {
                assertion: AssertionMode::Ps256,
                ..
            }
        ));
        assert_eq!(
            config.token_url(),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn rs256_and_client_secret_forms_deserialize() {
        let credential: Credential = serde_json::from_value(serde_json::json!({
            "kind": "certificate", "certificate_pem": "c", "private_key_pem": "k", "assertion": "rs256"
        }))
        .unwrap();
        assert!(matches!(
            credential,
            Credential::Certificate {
                assertion: AssertionMode::Rs256,
                ..
            }
        ));
        let credential: Credential = serde_json::from_value(serde_json::json!({
            "kind": "client_secret", "client_secret": "s"
        }))
        .unwrap();
        assert!(matches!(credential, Credential::ClientSecret { .. }));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let top = serde_json::from_value::<EntraConfig>(serde_json::json!({
            "tenant_id": "t", "client_id": "c", "scope": "s/.default", "tenant": "typo",
            "credential": { "kind": "client_secret", "client_secret": "s" }
        }));
        assert!(top.unwrap_err().to_string().contains("tenant"));
        let nested = serde_json::from_value::<Credential>(serde_json::json!({
            "kind": "client_secret", "client_secret": "s", "secret_id": "x"
        }));
        assert!(nested.unwrap_err().to_string().contains("secret_id"));
        let mode = serde_json::from_value::<Credential>(serde_json::json!({
            "kind": "certificate", "certificate_pem": "c", "private_key_pem": "k", "assertion": "es256"
        }));
        assert!(mode.is_err());
    }

    #[test]
    fn validate_reports_every_problem_with_its_key() {
        let mut config = secret_config();
        config.authority = "ftp://example".into();
        config.tenant_id = "a/b".into();
        config.client_id = " ".into();
        config.scope = "https://graph.microsoft.com/User.Read".into();
        config.connect_timeout_secs = 0;
        config.credential = Credential::client_secret("");
        let fields: Vec<_> = config
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "authority",
                "tenant_id",
                "client_id",
                "scope",
                "connect_timeout_secs",
                "credential.client_secret"
            ]
        );
    }

    #[test]
    fn validate_rejects_two_scopes() {
        let mut config = secret_config();
        config.scope =
            "https://graph.microsoft.com/.default https://contoso.crm.dynamics.com/.default".into();
        let problems = config.validate().unwrap_err();
        assert_eq!(problems[0].field, "scope");
        assert!(problems[0].to_string().starts_with("scope: "));
    }

    #[test]
    fn debug_of_config_hides_the_secret_and_the_key() {
        let config = secret_config();
        let debug = format!("{config:?}");
        assert!(!debug.contains("do-not-print-me"), "{debug}");
        assert!(debug.contains("***"));

        let key = std::fs::read_to_string(KEY_PATH).unwrap();
        let config = EntraConfig::new(
            "t",
            "c",
            "s/.default",
            Credential::certificate_from_files(CERT_PATH, KEY_PATH, AssertionMode::Ps256).unwrap(),
        );
        let debug = format!("{config:?}");
        let key_line = key.lines().nth(1).unwrap();
        assert!(!debug.contains(key_line), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn certificate_from_files_reads_both_pems() {
        let credential =
            Credential::certificate_from_files(CERT_PATH, KEY_PATH, AssertionMode::Rs256).unwrap();
        let Credential::Certificate {
            certificate_pem,
            private_key_pem,
            assertion,
        } = credential
        else {
            panic!("expected a certificate credential");
        };
        assert!(certificate_pem.contains("BEGIN CERTIFICATE"));
        assert!(private_key_pem.expose().contains("BEGIN PRIVATE KEY"));
        assert_eq!(assertion, AssertionMode::Rs256);
    }

    #[test]
    fn missing_key_file_error_does_not_name_the_key_path() {
        let err = Credential::certificate_from_files(
            CERT_PATH,
            "/nonexistent/secret-key-location.pem",
            AssertionMode::Ps256,
        )
        .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("secret-key-location"), "{shown}");
        assert!(shown.contains("private key"), "{shown}");

        let err = Credential::certificate_from_files(
            "/nonexistent/cert.pem",
            KEY_PATH,
            AssertionMode::Ps256,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"));
    }

    #[test]
    fn token_url_tolerates_a_trailing_slash() {
        assert_eq!(
            token_url("https://login.microsoftonline.us/", "t"),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
    }
}
