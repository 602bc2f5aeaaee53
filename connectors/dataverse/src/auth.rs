//! Bearer tokens from Microsoft Entra ID (presync-entra) for the Dataverse client.

use async_trait::async_trait;
use presync_engine::ConnectorError;
use presync_entra::{TokenClient, TokenError};

use crate::client::Credentials;

/// [`Credentials`] backed by an Entra client-credentials [`TokenClient`].
#[derive(Debug, Clone)]
pub struct EntraCredentials {
    tokens: TokenClient,
}

impl EntraCredentials {
    /// Use `tokens` (scope: the environment URL + `/.default`).
    pub fn new(tokens: TokenClient) -> Self {
        EntraCredentials { tokens }
    }
}

#[async_trait]
impl Credentials for EntraCredentials {
    async fn bearer(&self) -> Result<String, ConnectorError> {
        let token = self.tokens.token().await.map_err(classify)?;
        Ok(token.secret().to_owned())
    }

    fn invalidate(&self) {
        self.tokens.invalidate();
    }
}

/// Token failures in the engine's terms. Messages carry Entra's code and description, never a
/// secret.
pub fn classify(e: TokenError) -> ConnectorError {
    let message = format!("token request: {e}");
    match e.retry_after() {
        Some(retry_after) => ConnectorError::RateLimited {
            retry_after: Some(retry_after),
            message,
        },
        None if e.is_transient() => ConnectorError::transient(message),
        None => ConnectorError::Unauthorized { message },
    }
}
