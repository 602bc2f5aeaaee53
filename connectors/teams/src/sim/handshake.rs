//! The validation handshake (graph.md §6.2): `POST {url}?validationToken={opaque}` with
//! `Content-Type: text/plain; charset=utf-8`; the endpoint must answer, within
//! [`super::GraphSimConfig::notification_timeout`], `200` with a `text/plain` body equal to the
//! URL-decoded token. The token is Graph's ("Validation: Testing client application reachability
//! for subscription Request-Id: …"): its spaces and colons arrive encoded (`+`, `%3A`), so a
//! receiver that echoes the raw query value fails, as it would against Graph.

use super::notify::{NotificationKind, SentNotification};
use super::{lock, Shared};

/// POST `url?validationToken=…` and check the echo. Records the attempt.
pub(crate) async fn handshake(shared: &Shared, url: &str) -> bool {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let target = match url::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut().append_pair("validationToken", &token);
            u.to_string()
        }
        Err(_) => return false,
    };
    let mut sent = SentNotification {
        seq: 0,
        kind: NotificationKind::Validation,
        subscription_id: None,
        user_id: None,
        url: target.clone(),
        attempt: 1,
        duplicate: false,
        body: String::new(),
        status: None,
        reply: None,
        error: None,
        accepted: false,
        at_ms: shared.clock.now(),
    };
    if lock(&shared.faults).take_validation_failure() {
        sent.error = Some("not sent: FailValidation fault".to_owned());
        shared.outbox.record(sent);
        return false;
    }
    let result = shared
        .http
        .post(&target)
        .header("Content-Type", "text/plain; charset=utf-8")
        .timeout(shared.cfg.notification_timeout)
        .send()
        .await;
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let text = resp.text().await.unwrap_or_default();
            sent.status = Some(status);
            sent.accepted =
                status == 200 && content_type.starts_with("text/plain") && text == token;
            if !sent.accepted {
                sent.error = Some(if status != 200 {
                    format!("answered {status}, not 200")
                } else if !content_type.starts_with("text/plain") {
                    format!("answered Content-Type '{content_type}', not text/plain")
                } else {
                    "the body is not the decoded validationToken".to_owned()
                });
            }
            sent.reply = Some(text);
        }
        Err(e) => sent.error = Some(e.without_url().to_string()),
    }
    let accepted = sent.accepted;
    shared.outbox.record(sent);
    accepted
}
