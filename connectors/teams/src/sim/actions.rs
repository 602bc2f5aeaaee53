//! Presence reads and writes (graph.md §2): `GET …/presence`, `getPresencesByUserId`, and the
//! actions `setPresence`, `clearPresence`, `setUserPreferredPresence`,
//! `clearUserPreferredPresence`.
//!
//! Reads answer each user in its value schema (`schema.rs`), with `sequenceNumber` unless
//! [`super::GraphSimConfig::emit_sequence_number`] is off; an id the tenant does not know has no
//! version, so its `PresenceUnknown` answer carries none. The pairs setPresence and
//! setUserPreferredPresence accept are graph.md §2.3's in every schema.
//!
//! Actions answer [`super::GraphSimConfig::action_status`] (200, as documented) with an empty
//! body; the OpenAPI description says 204, so clients must accept both. Unknown action
//! parameters are refused with 400, as OData does. What a write changes is recorded as
//! [`super::ChangeCause::App`] of the calling application.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use presync_engine::Millis;
use serde_json::{json, Map, Value};

use super::api::{json_body, json_response, only, unqualified, Req};
use super::dates::{parse_duration, MINUTE};
use super::errors::GraphError;
use super::presence::{
    allowed, describe, AppSession, Pair, Preferred, UserPresence, PREFERRED_PAIRS, SESSION_MAX,
    SESSION_MIN, SESSION_PAIRS,
};
use super::record::{stamp, ChangeCause};
use super::state::{parse_guid, user_key, State};
use super::tokens::{Caller, TokenKind};
use super::{lock, preferred_default, Shared};

/// Most ids getPresencesByUserId takes.
pub(crate) const MAX_IDS: usize = 650;

/// `…/presence` (GET) and `…/presence/{action}` (POST) for user `id`.
pub(crate) fn presence(
    shared: &Shared,
    caller: &Caller,
    req: &Req<'_>,
    id: &str,
    rest: &[&str],
) -> Result<Response, GraphError> {
    let key = parse_guid(id).ok_or_else(|| {
        GraphError::bad_request(format!(
            "Invalid user id '{id}': presence is addressed by the user's object id (a GUID)."
        ))
    })?;
    match rest {
        [] => {
            only(req, Method::GET)?;
            read_one(shared, &key)
        }
        [action] => {
            only(req, Method::POST)?;
            let action = unqualified(action);
            let write = match action {
                "setPresence" => set_presence,
                "clearPresence" => clear_presence,
                "setUserPreferredPresence" => set_preferred,
                "clearUserPreferredPresence" => clear_preferred,
                "setStatusMessage" => {
                    return Err(GraphError::new(
                        StatusCode::NOT_IMPLEMENTED,
                        "NotImplemented",
                        "setStatusMessage is not simulated.",
                    ))
                }
                other => {
                    return Err(GraphError::bad_request(format!(
                        "Resource not found for the segment '{other}'."
                    )))
                }
            };
            if caller.kind == TokenKind::Delegated
                && caller.user.as_deref().map(user_key) != Some(key.clone())
            {
                // Delegated Presence.ReadWrite covers the signed-in user only.
                return Err(GraphError::forbidden(""));
            }
            let body = if action == "clearUserPreferredPresence" && req.body.is_empty() {
                Map::new()
            } else {
                json_body(req)?
            };
            check_parameters(action, &body)?;
            write(shared, caller, &key, &body)?;
            let status = StatusCode::from_u16(shared.cfg.action_status).unwrap_or(StatusCode::OK);
            Ok(status.into_response())
        }
        _ => Err(GraphError::bad_request(format!(
            "Resource not found for the segment '{}'.",
            rest.first().copied().unwrap_or_default()
        ))),
    }
}

fn presence_json(id: &str, pair: &Pair) -> Value {
    json!({
        "id": id,
        "availability": pair.availability,
        "activity": pair.activity,
        "statusMessage": null,
        "outOfOfficeSettings": {"message": null, "isOutOfOffice": false},
    })
}

/// A known user's presence resource: in its value schema, with `sequenceNumber` if configured.
fn user_json(shared: &Shared, user: &UserPresence) -> Value {
    let mut body = presence_json(&user.id, &user.answered(shared.cfg.schema));
    if shared.cfg.emit_sequence_number {
        body["sequenceNumber"] = json!(stamp(user.sequence));
    }
    body
}

fn read_one(shared: &Shared, key: &str) -> Result<Response, GraphError> {
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let user = st.users().get(key).ok_or_else(|| unknown_user(key))?;
    let mut body = user_json(shared, user);
    body["@odata.context"] = json!(format!(
        "https://graph.microsoft.com/v1.0/$metadata#users('{}')/presence/$entity",
        user.id
    ));
    Ok(json_response(StatusCode::OK, body))
}

fn unknown_user(id: &str) -> GraphError {
    GraphError::not_found("NotFound", format!("User '{id}' was not found."))
}

/// `POST /communications/getPresencesByUserId` `{"ids":[…]}`: at most 650 GUIDs; an id the
/// tenant does not know answers `PresenceUnknown` (UNCONFIRMED).
pub(crate) fn get_presences_by_user_id(
    shared: &Shared,
    req: &Req<'_>,
) -> Result<Response, GraphError> {
    let body = json_body(req)?;
    check_parameters("getPresencesByUserId", &body)?;
    let ids = match body.get("ids") {
        Some(Value::Array(ids)) => ids,
        None | Some(Value::Null) => {
            return Err(GraphError::bad_request(
                "Required parameter 'ids' is missing.",
            ))
        }
        Some(_) => {
            return Err(GraphError::bad_request(
                "Parameter 'ids' must be a collection of strings.",
            ))
        }
    };
    if ids.is_empty() {
        return Err(GraphError::bad_request(
            "Parameter 'ids' must not be empty.",
        ));
    }
    if ids.len() > MAX_IDS {
        return Err(GraphError::bad_request(format!(
            "The number of ids ({}) exceeds the limit of {MAX_IDS} per request.",
            ids.len()
        )));
    }
    let mut keys = Vec::with_capacity(ids.len());
    for v in ids {
        let s = v.as_str().ok_or_else(|| {
            GraphError::bad_request("Parameter 'ids' must be a collection of strings.")
        })?;
        let key = parse_guid(s).ok_or_else(|| {
            GraphError::bad_request(format!(
                "Invalid user id '{s}': ids must be object ids (GUIDs)."
            ))
        })?;
        if !keys.iter().any(|(k, _)| *k == key) {
            keys.push((key, s.to_owned()));
        }
    }
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    let value: Vec<Value> = keys
        .iter()
        .map(|(key, given)| match st.users().get(key) {
            Some(u) => user_json(shared, u),
            None => presence_json(given, &Pair::new("PresenceUnknown", "PresenceUnknown")),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.presence)",
            "value": value,
        }),
    ))
}

/// Refuse parameters the action does not have.
fn check_parameters(action: &str, body: &Map<String, Value>) -> Result<(), GraphError> {
    let known: &[&str] = match action {
        "setPresence" => &[
            "sessionId",
            "availability",
            "activity",
            "expirationDuration",
        ],
        "clearPresence" => &["sessionId"],
        "setUserPreferredPresence" => &["availability", "activity", "expirationDuration"],
        "getPresencesByUserId" => &["ids"],
        _ => &[],
    };
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(GraphError::bad_request(format!(
            "The parameter '{k}' in the request payload is not a valid parameter for the operation '{action}'."
        ))),
        None => Ok(()),
    }
}

fn string_param<'b>(
    body: &'b Map<String, Value>,
    name: &str,
) -> Result<Option<&'b str>, GraphError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(GraphError::bad_request(format!(
            "Cannot convert the literal '{other}' to the expected type 'Edm.String' for parameter '{name}'."
        ))),
    }
}

fn required<'b>(body: &'b Map<String, Value>, name: &str) -> Result<&'b str, GraphError> {
    string_param(body, name)?
        .ok_or_else(|| GraphError::bad_request(format!("Required parameter '{name}' is missing.")))
}

/// `sessionId` must be the calling application's id.
fn check_session_id(caller: &Caller, body: &Map<String, Value>) -> Result<(), GraphError> {
    let session_id = required(body, "sessionId")?;
    let same = match (parse_guid(session_id), parse_guid(&caller.app_id)) {
        (Some(a), Some(b)) => a == b,
        _ => session_id == caller.app_id,
    };
    if same {
        Ok(())
    } else {
        Err(GraphError::bad_request(format!(
            "Invalid sessionId '{session_id}': the session id must be the application (client) id of the caller."
        )))
    }
}

/// `expirationDuration` in milliseconds, if given.
fn duration(body: &Map<String, Value>) -> Result<Option<Millis>, GraphError> {
    let Some(s) = string_param(body, "expirationDuration")? else {
        return Ok(None);
    };
    parse_duration(s).map(Some).ok_or_else(|| {
        GraphError::bad_request(format!(
            "Cannot convert the literal '{s}' to the expected type 'Edm.Duration'."
        ))
    })
}

/// Run a write by `caller` on the user under `key`, between two settles (the second records
/// what changed as [`ChangeCause::App`]).
fn with_user(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    f: impl FnOnce(&mut State, Millis) -> Result<(), GraphError>,
) -> Result<(), GraphError> {
    let now = shared.clock.now();
    let mut st = lock(&shared.state);
    shared.settle(&mut st);
    if !st.users().contains_key(key) {
        return Err(unknown_user(key));
    }
    let result = f(&mut st, now);
    let cause = ChangeCause::App {
        app_id: caller.app_id.clone(),
    };
    shared.settle_by(&mut st, key, cause);
    result
}

fn set_presence(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    body: &Map<String, Value>,
) -> Result<(), GraphError> {
    check_session_id(caller, body)?;
    let availability = required(body, "availability")?;
    let activity = required(body, "activity")?;
    if !allowed(&SESSION_PAIRS, availability, activity) {
        return Err(GraphError::bad_request(format!(
            "The availability/activity pair '{availability}/{activity}' is not valid for setPresence. Supported: {}.",
            describe(&SESSION_PAIRS)
        )));
    }
    let ttl = duration(body)?.unwrap_or(SESSION_MIN);
    if !(SESSION_MIN..=SESSION_MAX).contains(&ttl) {
        return Err(GraphError::bad_request(format!(
            "expirationDuration must be between PT5M and PT4H; got {} minutes.",
            ttl as f64 / MINUTE as f64
        )));
    }
    let pair = Pair::new(availability, activity);
    with_user(shared, caller, key, |st, now| {
        if let Some(u) = st.user_mut(key) {
            u.apps.insert(
                caller.app_id.clone(),
                AppSession {
                    posted: pair,
                    posted_at: now,
                    expires_at: now + ttl,
                },
            );
        }
        Ok(())
    })
}

fn clear_presence(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    body: &Map<String, Value>,
) -> Result<(), GraphError> {
    check_session_id(caller, body)?;
    with_user(shared, caller, key, |st, _| {
        match st.user_mut(key).and_then(|u| u.apps.remove(&caller.app_id)) {
            Some(_) => Ok(()),
            None => Err(GraphError::not_found(
                "NotFound",
                "The presence session was not found.",
            )),
        }
    })
}

fn check_preferred_caller(shared: &Shared, caller: &Caller) -> Result<(), GraphError> {
    if shared.cfg.preferred_requires_delegated && caller.kind == TokenKind::App {
        return Err(GraphError::forbidden(""));
    }
    Ok(())
}

fn set_preferred(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    body: &Map<String, Value>,
) -> Result<(), GraphError> {
    check_preferred_caller(shared, caller)?;
    let availability = required(body, "availability")?;
    let activity = required(body, "activity")?;
    if !allowed(&PREFERRED_PAIRS, availability, activity) {
        return Err(GraphError::bad_request(format!(
            "The availability/activity pair '{availability}/{activity}' is not valid for setUserPreferredPresence. Supported: {}.",
            describe(&PREFERRED_PAIRS)
        )));
    }
    let ttl = duration(body)?.unwrap_or_else(|| preferred_default(availability));
    if ttl <= 0 {
        return Err(GraphError::bad_request(
            "expirationDuration must be positive.",
        ));
    }
    let pair = Pair::new(availability, activity);
    with_user(shared, caller, key, |st, now| {
        if let Some(u) = st.user_mut(key) {
            u.preferred = Some(Preferred {
                state: pair,
                expires_at: now.saturating_add(ttl),
            });
        }
        Ok(())
    })
}

fn clear_preferred(
    shared: &Shared,
    caller: &Caller,
    key: &str,
    _body: &Map<String, Value>,
) -> Result<(), GraphError> {
    check_preferred_caller(shared, caller)?;
    with_user(shared, caller, key, |st, _| {
        if let Some(u) = st.user_mut(key) {
            u.preferred = None;
        }
        Ok(())
    })
}
