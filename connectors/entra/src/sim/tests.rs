//! The simulated token endpoint, driven through `Router::oneshot`.

use super::*;
use crate::assertion::tests::{signer, CERT_PEM};
use crate::assertion::{AssertionClaims, AssertionSigner};
use crate::config::AssertionMode;
use axum::body::Body;
use axum::http::Request;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const HOST: &str = "login.sim";
const AUD: &str = "http://login.sim/contoso.onmicrosoft.com/oauth2/v2.0/token";
const SCOPE: &str = "https://graph.microsoft.com/.default";

fn cert_authority() -> SimAuthority {
    SimAuthority::with_certificate(TENANT, CLIENT, CERT_PEM).unwrap()
}

fn encode(form: &[(&str, &str)]) -> String {
    fn escape(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    form.iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

async fn post_to(authority: &SimAuthority, tenant: &str, form: &[(&str, &str)]) -> Reply {
    let request = Request::post(format!("/{tenant}/oauth2/v2.0/token"))
        .header("host", HOST)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(encode(form)))
        .unwrap();
    let response = router(authority.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn post_assertion(authority: &SimAuthority, assertion: &str) -> Reply {
    post_to(
        authority,
        TENANT,
        &[
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ],
    )
    .await
}

async fn post_secret(authority: &SimAuthority, secret: &str) -> Reply {
    post_to(
        authority,
        TENANT,
        &[
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            ("client_secret", secret),
        ],
    )
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> AssertionClaims {
    AssertionClaims::new(CLIENT, AUD, now())
}

fn sign(signer: &AssertionSigner, claims: &AssertionClaims) -> String {
    signer.sign_claims(&signer.header(), claims).unwrap()
}

/// Asserts an Entra error envelope with `error` and an `AADSTS{code}` description.
fn assert_entra_error(reply: &Reply, status: StatusCode, error: &str, code: u32) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"], error, "{}", reply.body);
    let description = reply.body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert_eq!(reply.body["error_codes"], serde_json::json!([code]));
    assert!(reply.body["trace_id"].is_string());
    assert!(reply.body["correlation_id"].is_string());
    assert!(reply.body["timestamp"].is_string());
}

fn bearer(reply: &Reply) -> String {
    format!("Bearer {}", reply.body["access_token"].as_str().unwrap())
}

#[tokio::test]
async fn ps256_assertion_with_sha256_thumbprint_is_accepted() {
    let authority = cert_authority();
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &claims())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 3599);
    assert!(authority.validate_bearer(&bearer(&reply)));
    assert_eq!(authority.tokens_issued(), 1);
}

#[tokio::test]
async fn rs256_assertion_with_sha1_thumbprint_is_accepted() {
    let authority = cert_authority();
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Rs256), &claims())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn assertion_with_a_wrong_thumbprint_is_refused() {
    let authority = cert_authority();
    let signer = signer(AssertionMode::Ps256);
    let mut header = signer.header();
    header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode([0u8; 32]));
    let assertion = signer.sign_claims(&header, &claims()).unwrap();
    let reply = post_assertion(&authority, &assertion).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700027);
    assert!(reply.body["error_description"]
        .as_str()
        .unwrap()
        .contains("not registered"));
}

#[tokio::test]
async fn ps256_assertion_with_only_a_sha1_thumbprint_is_refused() {
    let authority = cert_authority();
    let signer = signer(AssertionMode::Ps256);
    let mut header = signer.header();
    header.x5t_s256 = None;
    header.x5t = Some(signer.certificate().x5t().to_owned());
    let reply = post_assertion(&authority, &signer.sign_claims(&header, &claims()).unwrap()).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700027);
}

#[tokio::test]
async fn assertion_with_a_modified_payload_fails_signature_validation() {
    let authority = cert_authority();
    let original = sign(&signer(AssertionMode::Ps256), &claims());
    let parts: Vec<&str> = original.split('.').collect();
    let mut tampered = claims();
    tampered.exp += 3600;
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
    let assertion = format!("{}.{payload}.{}", parts[0], parts[2]);
    let reply = post_assertion(&authority, &assertion).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700027);
    assert!(reply.body["error_description"]
        .as_str()
        .unwrap()
        .contains("signature validation"));
    assert_eq!(authority.tokens_issued(), 0);
}

#[tokio::test]
async fn replayed_assertion_is_refused() {
    let authority = cert_authority();
    let assertion = sign(&signer(AssertionMode::Ps256), &claims());
    assert_eq!(
        post_assertion(&authority, &assertion).await.status,
        StatusCode::OK
    );
    let reply = post_assertion(&authority, &assertion).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700025);
}

#[tokio::test]
async fn expired_assertion_is_refused() {
    let authority = cert_authority();
    let mut old = claims();
    old.nbf -= 1000;
    old.exp = old.nbf + 300;
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &old)).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700024);
}

#[tokio::test]
async fn assertion_for_another_audience_is_refused() {
    let authority = cert_authority();
    let mut wrong = claims();
    wrong.aud = "https://login.microsoftonline.com/other/oauth2/v2.0/token".into();
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &wrong)).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700212);
}

#[tokio::test]
async fn configured_authority_fixes_the_audience() {
    let authority = cert_authority().with_authority("https://login.microsoftonline.us");
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &claims())).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700212);
    let mut us = claims();
    us.aud = authority.token_url("https://login.microsoftonline.us");
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &us)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn assertion_from_another_application_is_refused() {
    let authority = cert_authority();
    let mut wrong = claims();
    wrong.iss = "someone-else".into();
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &wrong)).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 700021);
}

#[tokio::test]
async fn assertion_without_jti_is_refused() {
    let authority = cert_authority();
    let mut wrong = claims();
    wrong.jti = None;
    let reply = post_assertion(&authority, &sign(&signer(AssertionMode::Ps256), &wrong)).await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 50027);
}

#[tokio::test]
async fn garbage_assertion_is_refused_as_malformed() {
    let reply = post_assertion(&cert_authority(), "not.a.jwt").await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 50027);
}

#[tokio::test]
async fn client_secret_sent_to_a_certificate_app_is_refused() {
    let reply = post_secret(&cert_authority(), "whatever").await;
    assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
}

#[tokio::test]
async fn right_client_secret_is_accepted_and_wrong_one_refused() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "correct horse");
    let reply = post_secret(&authority, "correct horse").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(authority.validate_bearer(&bearer(&reply)));

    for wrong in ["correct hors", "correct horse battery", "Correct horse"] {
        let reply = post_secret(&authority, wrong).await;
        assert_entra_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
        assert!(!reply.body.to_string().contains(wrong));
    }
    assert_eq!(authority.token_requests(), 4);
    assert_eq!(authority.tokens_issued(), 1);
}

#[tokio::test]
async fn request_without_a_credential_is_refused() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    let reply = post_to(
        &authority,
        TENANT,
        &[
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_entra_error(&reply, StatusCode::BAD_REQUEST, "invalid_client", 7000218);
}

#[tokio::test]
async fn other_grant_types_are_unsupported() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    let reply = post_to(
        &authority,
        TENANT,
        &[
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("grant_type", "password"),
            ("client_secret", "s"),
        ],
    )
    .await;
    assert_entra_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
        70003,
    );
}

#[tokio::test]
async fn unknown_tenant_and_unknown_client_are_refused() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    let reply = post_to(&authority, "fabrikam.onmicrosoft.com", &[]).await;
    assert_entra_error(&reply, StatusCode::BAD_REQUEST, "invalid_request", 90002);
    let reply = post_to(
        &authority,
        TENANT,
        &[
            ("client_id", "other"),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            ("client_secret", "s"),
        ],
    )
    .await;
    assert_entra_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
    );
}

#[tokio::test]
async fn scope_must_be_one_known_default_scope() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s").with_scopes([SCOPE]);
    for (scope, code) in [
        ("https://graph.microsoft.com/User.Read", 1002012),
        ("https://contoso.crm.dynamics.com/.default", 70011),
    ] {
        let reply = post_to(
            &authority,
            TENANT,
            &[
                ("client_id", CLIENT),
                ("scope", scope),
                ("grant_type", "client_credentials"),
                ("client_secret", "s"),
            ],
        )
        .await;
        assert_entra_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope", code);
    }
}

#[tokio::test]
async fn body_that_is_not_a_form_is_an_invalid_request() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    let request = Request::post(format!("/{TENANT}/oauth2/v2.0/token"))
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = router(authority).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn queued_faults_answer_before_normal_processing() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    authority.fail_next(2, SimFault::ServerError);
    authority.fail_next(
        1,
        SimFault::TooManyRequests {
            retry_after: Duration::from_millis(1500),
        },
    );
    for _ in 0..2 {
        let reply = post_secret(&authority, "s").await;
        assert_entra_error(
            &reply,
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
        );
    }
    let reply = post_secret(&authority, "s").await;
    assert_entra_error(
        &reply,
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        90055,
    );
    assert_eq!(reply.headers[RETRY_AFTER], "2");
    assert_eq!(post_secret(&authority, "s").await.status, StatusCode::OK);
    assert_eq!(authority.token_requests(), 4);
}

#[tokio::test(start_paused = true)]
async fn issued_tokens_expire_after_their_lifetime() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s")
        .with_token_lifetime(Duration::from_secs(60));
    let reply = post_secret(&authority, "s").await;
    assert_eq!(reply.body["expires_in"], 60);
    let header = bearer(&reply);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(authority.validate_bearer(&header));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!authority.validate_bearer(&header));
}

#[tokio::test]
async fn revoke_all_invalidates_issued_tokens() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    let header = bearer(&post_secret(&authority, "s").await);
    assert!(authority.validate_bearer(&header));
    assert!(authority.validate_bearer(&header.replacen("Bearer", "bearer", 1)));
    authority.revoke_all();
    assert!(!authority.validate_bearer(&header));
}

#[test]
fn validate_bearer_rejects_other_schemes_and_unknown_tokens() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "s");
    assert!(!authority.validate_bearer(""));
    assert!(!authority.validate_bearer("Bearer"));
    assert!(!authority.validate_bearer("Bearer sim.unknown"));
    assert!(!authority.validate_bearer("Basic czpz"));
}

#[test]
fn debug_of_a_secret_authority_hides_the_secret() {
    let authority = SimAuthority::with_client_secret(TENANT, CLIENT, "the-sim-secret");
    let shown = format!("{authority:?}");
    assert!(!shown.contains("the-sim-secret"), "{shown}");
}
