//! `TokenClient` against `sim::router` on a real loopback socket.

// Test helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use presync_entra::sim::{self, SimAuthority, SimFault};
use presync_entra::{AssertionMode, Credential, EntraConfig, TokenClient, TokenError};

const CERT_PEM: &str = include_str!("../../../fixtures/entra/test-only-cert.pem");
const KEY_PEM: &str = include_str!("../../../fixtures/entra/test-only-key.pem");
const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://contoso.crm.dynamics.com/.default";
const SECRET: &str = "sEcReT~value-that-must-never-be-printed";

/// Serves `authority` on 127.0.0.1 and returns its base URL.
async fn serve(authority: &SimAuthority) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = sim::router(authority.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn certificate_authority() -> SimAuthority {
    SimAuthority::with_certificate(TENANT, CLIENT, CERT_PEM)
        .unwrap()
        .with_scopes([SCOPE])
}

fn secret_authority() -> SimAuthority {
    SimAuthority::with_client_secret(TENANT, CLIENT, SECRET).with_scopes([SCOPE])
}

fn config(base_url: &str, credential: Credential) -> EntraConfig {
    EntraConfig::new(TENANT, CLIENT, SCOPE, credential).with_authority(base_url)
}

fn certificate(mode: AssertionMode) -> Credential {
    Credential::certificate(CERT_PEM, KEY_PEM, mode)
}

async fn client_for(authority: &SimAuthority, credential: Credential) -> TokenClient {
    let base_url = serve(authority).await;
    TokenClient::new(&config(&base_url, credential)).unwrap()
}

/// Asserts nothing secret shows in `text`.
fn assert_no_secrets(text: &str) {
    assert!(!text.contains(SECRET), "client secret leaked: {text}");
    for line in KEY_PEM.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "private key leaked: {text}");
    }
}

#[tokio::test]
async fn certificate_ps256_assertion_gets_a_token_the_resource_accepts() {
    let authority = certificate_authority();
    let client = client_for(&authority, certificate(AssertionMode::Ps256)).await;
    let token = client.token().await.unwrap();
    let header = token.header_value();
    assert!(authority.validate_bearer(header.to_str().unwrap()));
    assert!(!token.is_expired());
    assert_eq!(authority.tokens_issued(), 1);
}

#[tokio::test]
async fn certificate_rs256_assertion_with_sha1_thumbprint_gets_a_token() {
    let authority = certificate_authority();
    let client = client_for(&authority, certificate(AssertionMode::Rs256)).await;
    let token = client.token().await.unwrap();
    assert!(authority.validate_bearer(&format!("Bearer {}", token.secret())));
}

#[tokio::test]
async fn certificate_loaded_from_files_gets_a_token() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/entra");
    let authority = certificate_authority();
    // Paths straight in the config...
    let by_path = Credential::certificate(
        format!("{fixtures}/test-only-cert.pem"),
        format!("{fixtures}/test-only-key.pem"),
        AssertionMode::Ps256,
    );
    client_for(&authority, by_path).await.token().await.unwrap();
    // ...or read up front.
    let from_files = Credential::certificate_from_files(
        format!("{fixtures}/test-only-cert.pem"),
        format!("{fixtures}/test-only-key.pem"),
        AssertionMode::Ps256,
    )
    .unwrap();
    client_for(&authority, from_files)
        .await
        .token()
        .await
        .unwrap();
}

#[tokio::test]
async fn client_secret_gets_a_token() {
    let authority = secret_authority();
    let client = client_for(&authority, Credential::client_secret(SECRET)).await;
    let token = client.token().await.unwrap();
    assert!(authority.validate_bearer(token.header_value().to_str().unwrap()));
}

#[tokio::test]
async fn wrong_client_secret_is_refused_without_leaking_either_secret() {
    let authority = secret_authority();
    let wrong = "wrong-secret-also-never-printed";
    let client = client_for(&authority, Credential::client_secret(wrong)).await;
    let err = client.token().await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.retry_after(), None);
    let TokenError::Refused {
        status,
        code,
        description,
    } = &err
    else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(*status, 401);
    assert_eq!(code, "invalid_client");
    assert!(description.starts_with("AADSTS7000215"), "{description}");
    for shown in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert_no_secrets(&shown);
        assert!(!shown.contains(wrong), "{shown}");
    }
}

#[tokio::test]
async fn unknown_scope_is_refused_as_invalid_scope() {
    let authority = secret_authority();
    let base_url = serve(&authority).await;
    let mut config = config(&base_url, Credential::client_secret(SECRET));
    config.scope = "https://graph.microsoft.com/.default".into();
    let err = TokenClient::new(&config)
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.entra_code(), Some("invalid_scope"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn token_is_cached_between_calls() {
    let authority = certificate_authority();
    let client = client_for(&authority, certificate(AssertionMode::Ps256)).await;
    let first = client.token().await.unwrap();
    for _ in 0..5 {
        assert_eq!(client.clone().token().await.unwrap(), first);
    }
    assert_eq!(authority.token_requests(), 1);
}

#[tokio::test]
async fn concurrent_callers_cause_one_token_request() {
    let authority = certificate_authority();
    let client = client_for(&authority, certificate(AssertionMode::Ps256)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        tasks.spawn(async move { client.token().await });
    }
    let tokens: Vec<_> = tasks
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(authority.token_requests(), 1);
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let authority = certificate_authority().with_token_lifetime(Duration::from_secs(600));
    let client = client_for(&authority, certificate(AssertionMode::Ps256)).await;
    let first = client.token().await.unwrap();

    // 600 s lifetime: refreshed when less than a tenth (60 s) remains. Jump the clock, then
    // let it run again for the real socket I/O.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(539)).await;
    tokio::time::resume();
    assert_eq!(client.token().await.unwrap(), first);
    assert_eq!(authority.token_requests(), 1);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    let second = client.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(authority.token_requests(), 2);
    // The old token had not expired yet when it was replaced.
    assert!(authority.validate_bearer(first.header_value().to_str().unwrap()));
}

#[tokio::test]
async fn invalidate_forces_a_new_token_after_a_401() {
    let authority = secret_authority();
    let client = client_for(&authority, Credential::client_secret(SECRET)).await;
    let first = client.token().await.unwrap();

    authority.revoke_all();
    // The resource now answers 401 for `first`: the connector invalidates and retries once.
    assert!(!authority.validate_bearer(first.header_value().to_str().unwrap()));
    client.invalidate();
    let second = client.token().await.unwrap();
    assert_ne!(second, first);
    assert!(authority.validate_bearer(second.header_value().to_str().unwrap()));
    assert_eq!(authority.token_requests(), 2);

    // Invalidating with a token that is no longer cached does not refetch.
    client.invalidate_token(&first);
    assert_eq!(client.token().await.unwrap(), second);
    assert_eq!(authority.token_requests(), 2);
}

#[tokio::test]
async fn server_error_from_the_token_endpoint_is_transient() {
    let authority = certificate_authority();
    let client = client_for(&authority, certificate(AssertionMode::Ps256)).await;
    authority.fail_next(1, SimFault::ServerError);
    let err = client.token().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(
        err,
        TokenError::Transient {
            status: Some(500),
            ..
        }
    ));
    assert_no_secrets(&format!("{err} {err:?}"));
    // The next call tries again and succeeds.
    client.token().await.unwrap();
    assert_eq!(authority.token_requests(), 2);
}

#[tokio::test]
async fn throttled_token_request_reports_retry_after() {
    let authority = secret_authority();
    let client = client_for(&authority, Credential::client_secret(SECRET)).await;
    authority.fail_next(
        1,
        SimFault::TooManyRequests {
            retry_after: Duration::from_secs(7),
        },
    );
    let err = client.token().await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_no_secrets(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn unreachable_endpoint_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = TokenClient::new(&config(&base_url, Credential::client_secret(SECRET))).unwrap();
    let err = client.token().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_no_secrets(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn bad_private_key_is_a_credential_error_that_does_not_echo_the_key() {
    let mangled = KEY_PEM.replacen("MII", "MIX", 1);
    let err = TokenClient::new(&config(
        "http://127.0.0.1:9",
        Credential::certificate(CERT_PEM, mangled.as_str(), AssertionMode::Ps256),
    ))
    .unwrap_err();
    assert!(matches!(err, TokenError::Credential(_)), "{err:?}");
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert_no_secrets(&shown);
    for line in mangled.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(line), "{shown}");
    }
}

#[tokio::test]
async fn config_and_client_debug_never_show_secrets() {
    let secret_config = config("http://127.0.0.1:9", Credential::client_secret(SECRET));
    let cert_config = config("http://127.0.0.1:9", certificate(AssertionMode::Ps256));
    for shown in [
        format!("{secret_config:?}"),
        format!("{cert_config:?}"),
        format!("{:?}", TokenClient::new(&secret_config).unwrap()),
        format!("{:?}", TokenClient::new(&cert_config).unwrap()),
    ] {
        assert_no_secrets(&shown);
    }
}
