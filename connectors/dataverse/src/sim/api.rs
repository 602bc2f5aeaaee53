//! The Web API under `/api/data/v9.2/`: authentication, impersonation, the service-protection
//! limit and injected faults, then the CCaaS presence APIs and the OData reads.
//!
//! Order of checks for every request: bearer token (401), impersonation header (400/403), the
//! per-caller limit (429), the next injected API fault, then the operation itself. A `Slow`
//! fault delays the answer after the operation ran, so a client that times out on a write does
//! not know whether it happened, as with the real service.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::errors::{code, ApiError};
use super::faults::ApiFault;
use super::odata::{self, EntitySet, Read, MAX_PAGE_SIZE};
use super::query::percent_decode;
use super::state::{norm_guid, SetError, User};
use super::{lock, DataverseSim, RecordedRequest, Shared};

/// The Web API path prefix.
pub(crate) const API_PREFIX: &str = "/api/data/v9.2";
const MODIFY: &str = "CCaaS_ModifyAgentPresence";
const GET_PRESENCE: &str = "CCaaS_GetPresence";
const CALLER_ID: &str = "MSCRMCallerID";
const CALLER_OBJECT_ID: &str = "CallerObjectId";

pub(crate) fn router(sim: DataverseSim) -> Router {
    Router::new()
        .route("/api/data/v9.2/{*rest}", any(handle))
        .with_state(sim)
}

/// Who a request acts as.
#[derive(Debug, Clone)]
enum Caller {
    /// No impersonation header: the application user.
    App,
    /// An impersonated system user.
    User(User),
}

impl Caller {
    fn limit_key(&self, client_id: &str) -> String {
        match self {
            Caller::App => format!("app:{client_id}"),
            Caller::User(u) => format!("user:{}", u.id),
        }
    }
}

/// Everything a handler needs from the request.
struct Req<'a> {
    method: &'a Method,
    /// The decoded path below the prefix, e.g. `msdyn_agentstatuses(…)`.
    resource: String,
    raw_query: &'a str,
    pairs: Vec<(String, String)>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    base: String,
}

async fn handle(
    State(sim): State<DataverseSim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let shared = &sim.shared;
    let path = percent_decode(uri.path()).unwrap_or_else(|| uri.path().to_owned());
    let raw_query = uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let req = Req {
        method: &method,
        resource: path
            .strip_prefix(API_PREFIX)
            .unwrap_or(&path)
            .trim_start_matches('/')
            .to_owned(),
        raw_query,
        pairs,
        headers: &headers,
        body: &body,
        base: format!("http://{host}{API_PREFIX}"),
    };
    let mut delay = None;
    let response = match process(shared, &req, &mut delay) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(status = %e.status, code = e.code, message = %e.message, "Simulated Dataverse refused a request");
            e.into_response()
        }
    };
    record(shared, &req, &path, &response, delay);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

fn record(
    shared: &Shared,
    req: &Req<'_>,
    path: &str,
    response: &Response,
    delay: Option<std::time::Duration>,
) {
    let status = response.status();
    let caller = [CALLER_ID, CALLER_OBJECT_ID].iter().find_map(|name| {
        req.headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(|v| ((*name).to_owned(), v.to_owned()))
    });
    let body = (!req.body.is_empty()).then(|| {
        serde_json::from_slice(req.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(req.body).into_owned()))
    });
    lock(&shared.requests).push(RecordedRequest {
        method: req.method.to_string(),
        path: path.to_owned(),
        query: percent_decode(req.raw_query).unwrap_or_else(|| req.raw_query.to_owned()),
        caller,
        prefer: header(req.headers, "prefer").map(str::to_owned),
        body,
        status: status.as_u16(),
        retry_after_ms: retry_after_ms(response.headers()),
        delayed_ms: delay.map(|d| d.as_millis() as i64),
        at_ms: super::state::wall_ms(),
    });
}

/// The `Retry-After` a response carries, in ms (decimal seconds, or whole seconds).
fn retry_after_ms(headers: &axum::http::HeaderMap) -> Option<i64> {
    let secs: f64 = headers
        .get(axum::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((secs * 1000.0).round() as i64)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn process(
    shared: &Shared,
    req: &Req<'_>,
    delay: &mut Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let authorized = header(req.headers, AUTHORIZATION.as_str())
        .is_some_and(|v| shared.authority.validate_bearer(v));
    if !authorized {
        return Err(ApiError::unauthorized(format!(
            "Bearer authorization_uri=https://login.microsoftonline.com/{}/oauth2/authorize, resource_id=https://{}/",
            shared.tenant_id, shared.org_host
        )));
    }
    let caller = caller(shared, req.headers)?;
    let limit_key = caller.limit_key(&shared.client_id);
    if let Err(retry_after) = lock(&shared.limiter).check(&limit_key) {
        let (limit, window) = shared.rate_limit;
        return Err(ApiError::rate_limited(limit, window.as_secs(), retry_after));
    }
    let fault = lock(&shared.api_faults).take();
    match fault {
        Some(ApiFault::RateLimited { retry_after_secs }) => {
            let (limit, window) = shared.rate_limit;
            return Err(ApiError::rate_limited(
                limit,
                window.as_secs(),
                retry_after_secs,
            ));
        }
        Some(ApiFault::ServerError(status)) => return Err(ApiError::server(status)),
        Some(ApiFault::Slow(d)) => *delay = Some(d),
        None => {}
    }
    route(shared, req, &caller)
}

/// Resolve `MSCRMCallerID` (a systemuserid) or `CallerObjectId` (an Entra object id).
/// When both are sent, `MSCRMCallerID` is used.
fn caller(shared: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let st = lock(&shared.state);
    if let Some(v) = header(headers, CALLER_ID) {
        let id = norm_guid(v).ok_or_else(|| {
            ApiError::bad_request(format!("{CALLER_ID} header value '{v}' is not a GUID."))
        })?;
        return st
            .user(&id)
            .cloned()
            .map(Caller::User)
            .ok_or_else(|| not_in_org(&id));
    }
    if let Some(v) = header(headers, CALLER_OBJECT_ID) {
        let id = norm_guid(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{CALLER_OBJECT_ID} header value '{v}' is not a GUID."
            ))
        })?;
        return st
            .user_by_aad(&id)
            .cloned()
            .map(Caller::User)
            .ok_or_else(|| not_in_org(&id));
    }
    Ok(Caller::App)
}

/// An impersonation header naming nobody in the org (status and code UNCONFIRMED).
fn not_in_org(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        code::USER_NOT_IN_ORG,
        format!("The user with id {id} is not a member of the organization."),
    )
}

fn route(shared: &Shared, req: &Req<'_>, caller: &Caller) -> Result<Response, ApiError> {
    let resource = req.resource.as_str();
    let not_allowed = || {
        ApiError::odata(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "The HTTP method '{}' is not allowed for '{resource}'.",
                req.method
            ),
        )
    };
    if resource == MODIFY {
        return if *req.method == Method::POST {
            modify_presence(shared, req, caller)
        } else {
            Err(not_allowed())
        };
    }
    if resource == GET_PRESENCE || resource.starts_with(&format!("{GET_PRESENCE}(")) {
        return if *req.method == Method::GET {
            get_presence(shared, req, caller)
        } else {
            Err(not_allowed())
        };
    }
    let (segment, key) = match resource.split_once('(') {
        Some((s, rest)) => (s, Some(rest.strip_suffix(')').unwrap_or(rest))),
        None => (resource, None),
    };
    let Some(set) = EntitySet::from_segment(segment) else {
        return Err(ApiError::odata(
            StatusCode::NOT_FOUND,
            format!("Resource not found for the segment '{segment}'."),
        ));
    };
    if *req.method != Method::GET {
        return Err(not_allowed());
    }
    let page_size = max_page_size(req.headers);
    let body = odata::read(
        &lock(&shared.state),
        &Read {
            set,
            key,
            pairs: &req.pairs,
            raw_query: req.raw_query,
            base: &req.base,
            page_size: page_size.unwrap_or(MAX_PAGE_SIZE),
        },
    )?;
    let mut response = json_response(body);
    if let Some(n) = page_size.filter(|_| key.is_none()) {
        if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={n}")) {
            response.headers_mut().insert("Preference-Applied", v);
        }
    }
    Ok(response)
}

/// `Prefer: odata.maxpagesize=N` (among other preferences), capped at 5,000.
fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let n = p.trim().strip_prefix("odata.maxpagesize=")?;
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| n.min(MAX_PAGE_SIZE))
        })
}

fn json_response(body: Value) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; odata.metadata=minimal"),
    );
    r.headers_mut()
        .insert("OData-Version", HeaderValue::from_static("4.0"));
    r
}

fn is_supervisor(shared: &Shared, caller: &Caller) -> bool {
    match caller {
        Caller::App => shared.app_user_is_supervisor,
        Caller::User(u) => shared.supervisors.contains(&u.id),
    }
}

/// The answer to a caller without Omnichannel Supervisor: [`super::SimConfig::role_missing_status`]
/// (403 or 405, UNCONFIRMED); anything that is not a 4xx status is answered as 403.
fn role_missing_status(shared: &Shared) -> StatusCode {
    StatusCode::from_u16(shared.role_missing_status)
        .ok()
        .filter(StatusCode::is_client_error)
        .unwrap_or(StatusCode::FORBIDDEN)
}

/// `POST CCaaS_ModifyAgentPresence` (dataverse.md §5.2).
fn modify_presence(shared: &Shared, req: &Req<'_>, caller: &Caller) -> Result<Response, ApiError> {
    let content_type = header(req.headers, CONTENT_TYPE.as_str()).unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ApiError::odata(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("The content type '{content_type}' is not supported; send application/json."),
        ));
    }
    let params = action_parameters(req.body)?;
    if params.api_version != "1.0" {
        // Only 1.0 is documented; what other values do is UNCONFIRMED.
        return Err(ApiError::bad_request(format!(
            "ApiVersion '{}' is not supported.",
            params.api_version
        )));
    }
    let agent_id = norm_guid(&params.agent_id).ok_or_else(|| {
        ApiError::bad_request(format!("AgentId '{}' is not a GUID.", params.agent_id))
    })?;
    let presence_id = norm_guid(&params.presence_id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "PresenceId '{}' is not a GUID.",
            params.presence_id
        ))
    })?;
    if !is_supervisor(shared, caller) {
        let who = match caller {
            Caller::App => format!("application user {}", shared.client_id),
            Caller::User(u) => format!("user {}", u.id),
        };
        return Err(ApiError::new(
            role_missing_status(shared),
            code::PRIVILEGE_DENIED,
            format!("Principal {who} is missing the Omnichannel Supervisor role, which {MODIFY} requires."),
        ));
    }
    {
        let st = lock(&shared.state);
        let agent = st
            .agent(&agent_id)
            .ok_or_else(|| ApiError::not_found("agent", &agent_id))?;
        if st.presence(&presence_id).is_none() {
            return Err(ApiError::bad_request(format!(
                "PresenceId {presence_id} is not a presence of this organization."
            )));
        }
        if shared.require_signed_in && !agent.logged_in {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                code::OBJECT_DOES_NOT_EXIST,
                format!("Agent {agent_id} is not signed in."),
            ));
        }
    }
    let caller_id = match caller {
        Caller::App => "app".to_owned(),
        Caller::User(u) => u.id.clone(),
    };
    let written = shared.apply(|st, rules| {
        st.set_by_api(
            &agent_id,
            &presence_id,
            &shared.modified_by_for_api,
            caller_id,
            rules,
        )
        .map(|c| vec![c])
    });
    match written {
        Ok(_) => Ok(json_response(json!({}))),
        Err(SetError::UnknownAgent) => Err(ApiError::not_found("agent", &agent_id)),
        Err(SetError::UnknownPresence) => Err(ApiError::bad_request(format!(
            "PresenceId {presence_id} is not a presence of this organization."
        ))),
    }
}

struct ModifyParams {
    api_version: String,
    agent_id: String,
    presence_id: String,
}

/// The action's three `Edm.String` parameters; anything else is a 400, as Dataverse answers for
/// an unknown parameter or a value of the wrong type.
fn action_parameters(body: &[u8]) -> Result<ModifyParams, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    for k in map.keys() {
        if !matches!(k.as_str(), "ApiVersion" | "AgentId" | "PresenceId") {
            return Err(ApiError::bad_request(format!(
                "The parameter '{k}' in the request payload is not a valid parameter for the operation '{MODIFY}'."
            )));
        }
    }
    let string = |m: &Map<String, Value>, name: &str| -> Result<String, ApiError> {
        match m.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(ApiError::bad_request(format!(
                "Cannot convert the literal '{other}' to the expected type 'Edm.String' for parameter '{name}'."
            ))),
            None => Err(ApiError::bad_request(format!("Required parameter '{name}' is missing."))),
        }
    };
    Ok(ModifyParams {
        api_version: string(&map, "ApiVersion")?,
        agent_id: string(&map, "AgentId")?,
        presence_id: string(&map, "PresenceId")?,
    })
}

/// `ApiVersion` of `CCaaS_GetPresence(ApiVersion=@p1)?@p1='1.0'`, of the inline
/// `(ApiVersion='1.0')`, or `None` for the bare form.
fn get_presence_version(req: &Req<'_>) -> Result<Option<String>, ApiError> {
    let Some(inner) = req
        .resource
        .strip_prefix(GET_PRESENCE)
        .filter(|r| !r.is_empty())
    else {
        return Ok(None);
    };
    let args = inner
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!("Bad Request - Error in query syntax: '{}'.", req.resource),
            )
        })?;
    if args.trim().is_empty() {
        return Ok(None);
    }
    let mut version = None;
    for arg in args.split(',') {
        let (name, value) = arg.split_once('=').ok_or_else(|| {
            ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!("Bad Request - Error in query syntax: '{arg}'."),
            )
        })?;
        if name.trim() != "ApiVersion" {
            return Err(ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!(
                    "The parameter '{}' is not a parameter of the function '{GET_PRESENCE}'.",
                    name.trim()
                ),
            ));
        }
        let value = value.trim();
        let literal = match value.strip_prefix('@') {
            Some(_) => req
                .pairs
                .iter()
                .find(|(k, _)| k == value)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    ApiError::odata(
                        StatusCode::BAD_REQUEST,
                        format!("The parameter alias '{value}' is not defined in the query."),
                    )
                })?,
            None => value.to_owned(),
        };
        let s = literal.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')).ok_or_else(|| {
            ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!("The value {literal} of parameter 'ApiVersion' is not an Edm.String literal; quote it: '{literal}'."),
            )
        })?;
        version = Some(s.to_owned());
    }
    Ok(version)
}

/// `GET CCaaS_GetPresence` for the impersonated agent (dataverse.md §5.1).
fn get_presence(shared: &Shared, req: &Req<'_>, caller: &Caller) -> Result<Response, ApiError> {
    if let Some(v) = get_presence_version(req)? {
        if v != "1.0" {
            return Err(ApiError::bad_request(format!(
                "ApiVersion '{v}' is not supported."
            )));
        }
    }
    let Caller::User(user) = caller else {
        return Err(ApiError::bad_request(format!(
            "{GET_PRESENCE} answers for the calling agent: impersonate one with {CALLER_ID} or {CALLER_OBJECT_ID}."
        )));
    };
    let st = lock(&shared.state);
    let agent = st
        .agent(&user.id)
        .ok_or_else(|| ApiError::not_found("agent", &user.id))?;
    let presence = st.presence(&agent.presence_id);
    let body = json!({
        "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.{GET_PRESENCE}Response", req.base),
        "ActiveBrowserSessions": i64::from(agent.logged_in),
        "AgentId": agent.agent_id,
        "AgentName": user.name,
        "Timestamp": agent.signed_in_at_ms.map_or(0, |ms| ms.div_euclid(1000)),
        "AllowedChannels": [],
        "CurrentPresenceStatusInfo": presence.map_or_else(String::new, |p| p.name.clone()),
        "DisabledChannels": [],
        "PresenceId": agent.presence_id,
    });
    Ok(json_response(body))
}
