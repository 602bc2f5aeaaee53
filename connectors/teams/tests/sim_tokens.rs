//! The simulator's token endpoint: app-only tokens from client credentials, delegated tokens
//! from the refresh token (with rotation), and Graph's 401 for missing, revoked and expired
//! tokens.
#![allow(clippy::unwrap_used)]

mod sim_support;

use std::time::Duration;

use base64::Engine as _;
use presync_teams::sim::{Fault, TokenKind};
use sim_support::*;

const DELEGATED_SCOPE: &str = "https://graph.microsoft.com/Presence.Read.All offline_access";

#[tokio::test]
async fn client_credentials_with_the_secret_issue_an_app_only_token() {
    let env = start(|_| {}).await;
    let a = env
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["expires_in"], 3599);
    assert!(
        a.body.get("refresh_token").is_none(),
        "client credentials issue no refresh token"
    );
    let token = a.body["access_token"].as_str().unwrap();
    let read = env.get(token, &format!("users/{ANN}/presence")).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        env.sim.requests().last().unwrap().token,
        Some(TokenKind::App)
    );
}

#[tokio::test]
async fn http_basic_client_authentication_is_accepted() {
    let env = start(|_| {}).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{APP}:{SECRET}"));
    let r = env
        .http
        .post(env.token_url())
        .header("Authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.status, 200);
}

#[tokio::test]
async fn a_wrong_secret_or_scope_is_refused_in_entras_words() {
    let env = start(|_| {}).await;
    let wrong = env
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", "nope"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["error"], "invalid_client");
    assert_eq!(wrong.body["error_codes"][0], 7000215);
    assert!(!wrong.body.to_string().contains(SECRET));

    let scope = env
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/Presence.Read.All"),
        ])
        .await;
    assert_eq!(scope.status, 400);
    assert_eq!(scope.body["error"], "invalid_scope");

    let tenant = env
        .http
        .post(format!("{}/other-tenant/oauth2/v2.0/token", env.base))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer(tenant).await.status, 400);
}

#[tokio::test]
async fn a_refresh_token_issues_a_delegated_token_and_rotates() {
    let env = start(|_| {}).await;
    let a = env
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", APP),
            ("refresh_token", REFRESH),
            ("scope", DELEGATED_SCOPE),
        ])
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["scope"], DELEGATED_SCOPE);
    let rotated = a.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, REFRESH);
    assert_eq!(
        env.sim.current_refresh_token().as_deref(),
        Some(rotated.as_str())
    );

    // The delegated token acts for the service account: /me works.
    let token = a.body["access_token"].as_str().unwrap();
    let me = env.get(token, "me/presence").await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["id"], SERVICE);
    assert_eq!(
        env.sim.requests().last().unwrap().token,
        Some(TokenKind::Delegated)
    );

    let redeem = |rt: String| {
        let env = &env;
        async move {
            env.token_request(&[
                ("grant_type", "refresh_token"),
                ("client_id", APP),
                ("refresh_token", &rt),
                ("scope", DELEGATED_SCOPE),
            ])
            .await
        }
    };
    // The replaced token still works within the grace period...
    env.clock.advance(4 * MINUTE);
    let again = redeem(REFRESH.to_owned()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    // ...and not after it.
    env.clock.advance(2 * MINUTE);
    let late = redeem(REFRESH.to_owned()).await;
    assert_eq!(late.status, 400);
    assert_eq!(late.body["error"], "invalid_grant");
    // The latest one works.
    let latest = env.sim.current_refresh_token().unwrap();
    assert_eq!(redeem(latest).await.status, 200);
    assert_eq!(
        redeem("garbage".to_owned()).await.body["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn without_offline_access_the_refresh_token_is_not_rotated() {
    let env = start(|_| {}).await;
    let a = env
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", APP),
            ("refresh_token", REFRESH),
            ("scope", "https://graph.microsoft.com/Presence.Read.All"),
        ])
        .await;
    assert_eq!(a.status, 200);
    assert!(a.body.get("refresh_token").is_none());
    assert_eq!(env.sim.current_refresh_token().as_deref(), Some(REFRESH));
}

#[tokio::test]
async fn revoked_refresh_tokens_need_a_new_sign_in() {
    let env = start(|_| {}).await;
    env.sim.revoke_refresh_tokens();
    let a = env
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", APP),
            ("refresh_token", REFRESH),
            ("scope", DELEGATED_SCOPE),
        ])
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"], "invalid_grant");
    assert_eq!(a.body["error_codes"][0], 50173);
}

#[tokio::test]
async fn graph_answers_401_without_a_valid_token() {
    let env = start(|c| c.token_lifetime = Duration::from_secs(600)).await;
    let path = format!("users/{ANN}/presence");
    let none = answer(env.http.get(env.url(&path)).send().await.unwrap()).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.code(), "InvalidAuthenticationToken");
    assert!(none.body["error"]["innerError"]["request-id"].is_string());
    assert!(none.header("www-authenticate").is_some());
    assert_eq!(env.get("made-up", &path).await.status, 401);

    let token = env.app_token().await;
    assert_eq!(env.get(&token, &path).await.status, 200);
    env.sim.inject(Fault::RevokeTokens);
    assert_eq!(env.get(&token, &path).await.status, 401);

    let token = env.app_token().await;
    env.clock.advance(10 * MINUTE);
    let expired = env.get(&token, &path).await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.code(), "InvalidAuthenticationToken");
    let recorded = env.sim.requests();
    assert_eq!(recorded.last().unwrap().token, None);
    assert!(
        !format!("{recorded:?}").contains(&token),
        "tokens are never recorded"
    );
}
