//! [`EntraCredentials`]: a [`TokenClient`] as the bearer source of a connector's client
//! (`presync_engine::remote::Credentials`), with token failures in the engine's error classes.

use async_trait::async_trait;
use presync_engine::remote::Credentials;
use presync_engine::ConnectorError;

use crate::{TokenClient, TokenError};

/// Client-credentials tokens for a connector (Dataverse with the environment's `/.default`
/// scope, Graph with `https://graph.microsoft.com/.default`).
#[derive(Debug, Clone)]
pub struct EntraCredentials {
    tokens: TokenClient,
}

impl EntraCredentials {
    /// Use `tokens`.
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
