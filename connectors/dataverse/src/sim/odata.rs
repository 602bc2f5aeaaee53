//! The OData reads: `msdyn_agentstatuses`, `msdyn_presences` and `systemusers`, as collections
//! (with `$select`, `$expand`, a small `$filter`, and server-driven paging) or by key.
//!
//! Like Dataverse, an unknown column in `$select`, `$filter` or `$expand` is a 400, so a client
//! typo fails here as it would against Microsoft. Paging follows `Prefer: odata.maxpagesize`
//! (at most 5,000) and hands out an absolute `@odata.nextLink` whose `$skiptoken` is a paging
//! cookie naming the last primary key, in the same triple-encoded form Dataverse uses.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::dates::{iso_millis, iso_seconds};
use super::errors::ApiError;
use super::query::{options, percent_encode, skiptoken, Options};
use super::state::{key, norm_guid, AgentRow, State};

/// The largest page Dataverse returns.
pub(crate) const MAX_PAGE_SIZE: usize = 5_000;

/// The tables the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntitySet {
    AgentStatuses,
    Presences,
    SystemUsers,
}

impl EntitySet {
    pub(crate) fn from_segment(s: &str) -> Option<EntitySet> {
        match s {
            "msdyn_agentstatuses" => Some(EntitySet::AgentStatuses),
            "msdyn_presences" => Some(EntitySet::Presences),
            "systemusers" => Some(EntitySet::SystemUsers),
            _ => None,
        }
    }

    pub(crate) fn set_name(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatuses",
            EntitySet::Presences => "msdyn_presences",
            EntitySet::SystemUsers => "systemusers",
        }
    }

    pub(crate) fn logical_name(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatus",
            EntitySet::Presences => "msdyn_presence",
            EntitySet::SystemUsers => "systemuser",
        }
    }

    pub(crate) fn primary_key(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatusid",
            EntitySet::Presences => "msdyn_presenceid",
            EntitySet::SystemUsers => "systemuserid",
        }
    }

    /// The navigation properties `$expand` accepts, and the table each leads to.
    pub(crate) fn navigation(self, name: &str) -> Option<EntitySet> {
        match (self, name) {
            (EntitySet::AgentStatuses, "msdyn_currentpresenceid") => Some(EntitySet::Presences),
            (EntitySet::AgentStatuses, "msdyn_agentid") => Some(EntitySet::SystemUsers),
            _ => None,
        }
    }

    /// Every row, each with all its columns, sorted by primary key.
    fn rows(self, state: &State) -> Vec<Map<String, Value>> {
        let mut rows: Vec<Map<String, Value>> = match self {
            EntitySet::AgentStatuses => state.agents().map(agent_row).collect(),
            EntitySet::Presences => state.presences().map(presence_row).collect(),
            EntitySet::SystemUsers => state.users().map(user_row).collect(),
        };
        let pk = self.primary_key();
        rows.sort_by(|a, b| {
            a.get(pk)
                .and_then(Value::as_str)
                .cmp(&b.get(pk).and_then(Value::as_str))
        });
        rows
    }

    fn row(self, state: &State, id: &str) -> Option<Map<String, Value>> {
        match self {
            EntitySet::AgentStatuses => state.agent_by_status_id(id).map(agent_row),
            EntitySet::Presences => state.presence(id).map(presence_row),
            EntitySet::SystemUsers => state.user(id).map(user_row),
        }
    }

    /// The lookup value a navigation property of `row` points at.
    fn nav_target(self, nav: &str, row: &Map<String, Value>) -> Option<String> {
        let column = match (self, nav) {
            (EntitySet::AgentStatuses, "msdyn_currentpresenceid") => {
                "_msdyn_currentpresenceid_value"
            }
            (EntitySet::AgentStatuses, "msdyn_agentid") => "_msdyn_agentid_value",
            _ => return None,
        };
        row.get(column).and_then(Value::as_str).map(str::to_owned)
    }
}

fn agent_row(a: &AgentRow) -> Map<String, Value> {
    let v = serde_json::json!({
        "@odata.etag": format!("W/\"{}\"", a.row_version),
        "msdyn_agentstatusid": a.status_id,
        "_msdyn_agentid_value": a.agent_id,
        "_msdyn_currentpresenceid_value": a.presence_id,
        "msdyn_isagentloggedin": a.logged_in,
        "msdyn_presencemodifiedon": iso_seconds(a.modified_on_ms),
        "msdyn_presencemodifiedonwithmilliseconds": iso_millis(a.modified_on_ms),
        "msdyn_presencemodifiedby": a.modified_by,
        "versionnumber": a.row_version,
        "msdyn_availableunitscapacity": a.capacity,
        "msdyn_assignedconversationcount": a.assigned_conversations,
        "msdyn_capacitymodifiedon": iso_seconds(a.capacity_modified_on_ms),
        "msdyn_isblockedbysomeprofile": false,
        "createdon": iso_seconds(a.created_on_ms),
        "modifiedon": iso_seconds(a.modified_on_ms),
        "statecode": 0,
        "statuscode": 1,
    });
    into_map(v)
}

fn presence_row(p: &crate::mapping::PresenceEntry) -> Map<String, Value> {
    into_map(serde_json::json!({
        "@odata.etag": "W/\"1000\"",
        "msdyn_presenceid": p.id,
        "msdyn_name": p.name,
        "msdyn_presencestatustext": p.text,
        "msdyn_basepresencestatus": p.base.option(),
        "msdyn_canuserset": true,
        "msdyn_description": Value::Null,
        "statecode": 0,
        "statuscode": 1,
    }))
}

fn user_row(u: &super::state::User) -> Map<String, Value> {
    into_map(serde_json::json!({
        "@odata.etag": "W/\"1000\"",
        "systemuserid": u.id,
        "fullname": u.name,
        "azureactivedirectoryobjectid": u.aad_object_id,
        "isdisabled": false,
        "applicationid": Value::Null,
    }))
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// One read: `<set>` or `<set>(<key>)` with its query options.
#[derive(Debug)]
pub(crate) struct Read<'a> {
    pub set: EntitySet,
    pub key: Option<&'a str>,
    /// Decoded query pairs.
    pub pairs: &'a [(String, String)],
    /// The query string as received (kept in `@odata.nextLink`).
    pub raw_query: &'a str,
    /// `http://host/api/data/v9.2`.
    pub base: &'a str,
    /// From `Prefer: odata.maxpagesize`, already capped.
    pub page_size: usize,
}

/// Answer a read with the response body.
pub(crate) fn read(state: &State, r: &Read<'_>) -> Result<Value, ApiError> {
    let opts = options(r.set, r.pairs)?;
    let context = context_url(r.base, r.set, &opts);
    if let Some(id) = r.key {
        let id = norm_guid(id).ok_or_else(|| {
            ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!("Bad Request - Error in query syntax: {id:?} is not a GUID key."),
            )
        })?;
        let row = r
            .set
            .row(state, &id)
            .ok_or_else(|| ApiError::not_found(r.set.logical_name(), &id))?;
        let mut out = shape(state, r.set, &row, &opts);
        out.insert(
            "@odata.context".into(),
            Value::String(format!("{context}/$entity")),
        );
        return Ok(reorder_context_first(out));
    }
    let pk = r.set.primary_key();
    let mut rows: Vec<Map<String, Value>> = r
        .set
        .rows(state)
        .into_iter()
        .filter(|row| {
            opts.filter
                .iter()
                .all(|(col, want)| matches(row.get(col), want))
        })
        .collect();
    // With $top there is no paging: the first `top` rows come in one answer.
    if let Some(top) = opts.top {
        rows.truncate(top);
    }
    let (page_no, start) = match &opts.after {
        Some((page, last)) => (
            *page,
            rows.iter()
                .position(|row| {
                    row.get(pk)
                        .and_then(Value::as_str)
                        .is_some_and(|id| id > last.as_str())
                })
                .unwrap_or(rows.len()),
        ),
        None => (1, 0),
    };
    let size = opts.top.unwrap_or(r.page_size).clamp(1, MAX_PAGE_SIZE);
    let end = (start + size).min(rows.len());
    let page: Vec<Value> = rows[start..end]
        .iter()
        .map(|row| Value::Object(shape(state, r.set, row, &opts)))
        .collect();
    let mut body = Map::new();
    body.insert("@odata.context".into(), Value::String(context));
    body.insert("value".into(), Value::Array(page));
    if end < rows.len() {
        let first = rows[start]
            .get(pk)
            .and_then(Value::as_str)
            .unwrap_or_default();
        let last = rows[end - 1]
            .get(pk)
            .and_then(Value::as_str)
            .unwrap_or_default();
        let token = skiptoken(r.set, page_no + 1, first, last);
        let kept: Vec<&str> = r
            .raw_query
            .split('&')
            .filter(|p| {
                !p.is_empty() && !p.starts_with("$skiptoken=") && !p.starts_with("%24skiptoken=")
            })
            .collect();
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("$skiptoken=");
        query.push_str(&percent_encode(&token));
        body.insert(
            "@odata.nextLink".into(),
            Value::String(format!("{}/{}?{query}", r.base, r.set.set_name())),
        );
    }
    Ok(Value::Object(body))
}

fn reorder_context_first(row: Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(c) = row.get("@odata.context") {
        out.insert("@odata.context".into(), c.clone());
    }
    for (k, v) in row {
        if k != "@odata.context" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

fn matches(have: Option<&Value>, want: &Value) -> bool {
    match (have, want) {
        (Some(Value::String(h)), Value::String(w)) => key(h) == key(w),
        (Some(h), w) => h == w,
        (None, Value::Null) => true,
        (None, _) => false,
    }
}

/// The selected columns of a row, with `@odata.etag`, the primary key and expansions.
fn shape(
    state: &State,
    set: EntitySet,
    row: &Map<String, Value>,
    opts: &Options,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in row {
        let keep = k == "@odata.etag"
            || k == set.primary_key()
            || opts
                .select
                .as_ref()
                .is_none_or(|sel| sel.iter().any(|s| s == k));
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    for (nav, select) in &opts.expand {
        let Some(target) = set.navigation(nav) else {
            continue;
        };
        let related = set
            .nav_target(nav, row)
            .and_then(|id| target.row(state, &id))
            .map(|r| {
                let nested = Options {
                    select: select.clone(),
                    ..Options::default()
                };
                let mut m = shape(state, target, &r, &nested);
                m.remove("@odata.etag");
                Value::Object(m)
            })
            .unwrap_or(Value::Null);
        out.insert(nav.clone(), related);
    }
    out
}

fn context_url(base: &str, set: EntitySet, o: &Options) -> String {
    let mut parts: Vec<String> = o.select.clone().unwrap_or_default();
    for (nav, sel) in &o.expand {
        parts.push(format!(
            "{nav}({})",
            sel.as_ref().map(|s| s.join(",")).unwrap_or_default()
        ));
    }
    if parts.is_empty() {
        format!("{base}/$metadata#{}", set.set_name())
    } else {
        format!("{base}/$metadata#{}({})", set.set_name(), parts.join(","))
    }
}
