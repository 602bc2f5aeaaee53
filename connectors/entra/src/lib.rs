//! Microsoft Entra ID access tokens for presync's connectors, written once: the OAuth 2.0
//! client-credentials flow with a certificate (signed client assertion, PS256 + `x5t#S256` by
//! default, RS256 + `x5t` as a fallback) or a client secret, with a cache that refreshes early
//! and makes concurrent callers share one request. [`sim`] is the matching token endpoint for
//! the connectors' simulators.
//!
//! Start reading at [`TokenClient`] (`client.rs`); the settings are in [`EntraConfig`]
//! (`config.rs`), the assertion JWT in `assertion.rs`, the cache in `cache.rs`, the errors in
//! [`TokenError`] (`error.rs`).
//!
//! # How a connector uses it
//!
//! Build one [`TokenClient`] per resource (one for Dataverse, one for Graph) from the
//! connector's `EntraConfig` at start-up, call [`TokenClient::token`] before each request, and
//! when the resource answers 401, call [`TokenClient::invalidate_token`] (or
//! [`TokenClient::invalidate`]) and retry once:
//!
//! ```no_run
//! # async fn example(config: presync_entra::EntraConfig, http: reqwest::Client)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use presync_entra::TokenClient;
//!
//! let tokens = TokenClient::new(&config)?; // validates, loads the PEMs; no network I/O
//! let url = "https://graph.microsoft.com/v1.0/users/42/presence";
//! let token = tokens.token().await?;
//! let mut response = http
//!     .get(url)
//!     .header(reqwest::header::AUTHORIZATION, token.header_value())
//!     .send()
//!     .await?;
//! if response.status() == reqwest::StatusCode::UNAUTHORIZED {
//!     tokens.invalidate_token(&token);
//!     let token = tokens.token().await?;
//!     response = http
//!         .get(url)
//!         .header(reqwest::header::AUTHORIZATION, token.header_value())
//!         .send()
//!         .await?;
//! }
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! A [`TokenError`] says whether to retry: [`TokenError::is_transient`] (5xx, 429, network) and
//! [`TokenError::retry_after`]; [`TokenError::Refused`] carries Entra's `error` and `AADSTS…`
//! description and needs an operator. Secrets are [`Secret`]s and the token an [`AccessToken`]:
//! neither shows in `Debug`, `Display`, errors or logs.

mod assertion;
mod cache;
mod client;
mod config;
pub mod credentials;
mod error;
mod secret;
pub mod sim;

pub use assertion::{CredentialError, ASSERTION_LIFETIME};
pub use cache::{AccessToken, MAX_REFRESH_MARGIN};
pub use client::{TokenClient, CLIENT_ASSERTION_TYPE};
pub use config::{
    AssertionMode, ConfigProblem, Credential, EntraConfig, DEFAULT_AUTHORITY,
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_REQUEST_TIMEOUT_SECS,
};
pub use credentials::EntraCredentials;
pub use error::{Result, TokenError};
pub use secret::Secret;
