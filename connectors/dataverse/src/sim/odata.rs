//! The OData reads: `msdyn_agentstatuses`, `msdyn_presences` and `systemusers`, as collections
//! (with `$select`, `$expand`, a small `$filter`, and server-driven paging) or by key.
//!
//! Like Dataverse, an unknown column in `$select`, `$filter` or `$expand` is a 400, so a client
//! typo fails here as it would against Microsoft. Paging follows `Prefer: odata.maxpagesize`
//! (at most 5,000) and hands out an absolute `@odata.nextLink` whose `$skiptoken` is a paging
//! cookie naming the last primary key, in the same triple-encoded form Dataverse uses.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::errors::ApiError;
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

    fn set_name(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatuses",
            EntitySet::Presences => "msdyn_presences",
            EntitySet::SystemUsers => "systemusers",
        }
    }

    fn logical_name(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatus",
            EntitySet::Presences => "msdyn_presence",
            EntitySet::SystemUsers => "systemuser",
        }
    }

    fn primary_key(self) -> &'static str {
        match self {
            EntitySet::AgentStatuses => "msdyn_agentstatusid",
            EntitySet::Presences => "msdyn_presenceid",
            EntitySet::SystemUsers => "systemuserid",
        }
    }

    /// The navigation properties `$expand` accepts, and the table each leads to.
    fn navigation(self, name: &str) -> Option<EntitySet> {
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
        rows.sort_by(|a, b| a.get(pk).and_then(Value::as_str).cmp(&b.get(pk).and_then(Value::as_str)));
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
            (EntitySet::AgentStatuses, "msdyn_currentpresenceid") => "_msdyn_currentpresenceid_value",
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

#[derive(Debug, Default)]
struct Options {
    select: Option<Vec<String>>,
    expand: Vec<(String, Option<Vec<String>>)>,
    filter: Vec<(String, Value)>,
    after: Option<(u64, String)>,
    top: Option<usize>,
}

/// Answer a read with the response body.
pub(crate) fn read(state: &State, r: &Read<'_>) -> Result<Value, ApiError> {
    let opts = options(r.set, r.pairs)?;
    let context = context_url(r.base, r.set, &opts);
    if let Some(id) = r.key {
        let id = norm_guid(id).ok_or_else(|| {
            ApiError::odata(StatusCode::BAD_REQUEST, format!("Bad Request - Error in query syntax: {id:?} is not a GUID key."))
        })?;
        let row = r
            .set
            .row(state, &id)
            .ok_or_else(|| ApiError::not_found(r.set.logical_name(), &id))?;
        let mut out = shape(state, r.set, &row, &opts);
        out.insert("@odata.context".into(), Value::String(format!("{context}/$entity")));
        return Ok(reorder_context_first(out));
    }
    let pk = r.set.primary_key();
    let mut rows: Vec<Map<String, Value>> = r
        .set
        .rows(state)
        .into_iter()
        .filter(|row| opts.filter.iter().all(|(col, want)| matches(row.get(col), want)))
        .collect();
    // With $top there is no paging: the first `top` rows come in one answer.
    if let Some(top) = opts.top {
        rows.truncate(top);
    }
    let (page_no, start) = match &opts.after {
        Some((page, last)) => (
            *page,
            rows.iter()
                .position(|row| row.get(pk).and_then(Value::as_str).is_some_and(|id| id > last.as_str()))
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
        let first = rows[start].get(pk).and_then(Value::as_str).unwrap_or_default();
        let last = rows[end - 1].get(pk).and_then(Value::as_str).unwrap_or_default();
        let token = skiptoken(r.set, page_no + 1, first, last);
        let kept: Vec<&str> = r
            .raw_query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("$skiptoken=") && !p.starts_with("%24skiptoken="))
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
fn shape(state: &State, set: EntitySet, row: &Map<String, Value>, opts: &Options) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in row {
        let keep = k == "@odata.etag"
            || k == set.primary_key()
            || opts.select.as_ref().is_none_or(|sel| sel.iter().any(|s| s == k));
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

fn unknown_property(set: EntitySet, name: &str) -> ApiError {
    ApiError::odata(
        StatusCode::BAD_REQUEST,
        format!(
            "Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{}'.",
            set.logical_name()
        ),
    )
}

/// The columns of each table (what `$select` and `$filter` accept).
fn columns(set: EntitySet) -> &'static [&'static str] {
    match set {
        EntitySet::AgentStatuses => &[
            "msdyn_agentstatusid",
            "_msdyn_agentid_value",
            "_msdyn_currentpresenceid_value",
            "msdyn_isagentloggedin",
            "msdyn_presencemodifiedon",
            "msdyn_presencemodifiedonwithmilliseconds",
            "msdyn_presencemodifiedby",
            "versionnumber",
            "msdyn_availableunitscapacity",
            "msdyn_capacitymodifiedon",
            "msdyn_isblockedbysomeprofile",
            "createdon",
            "modifiedon",
            "statecode",
            "statuscode",
        ],
        EntitySet::Presences => &[
            "msdyn_presenceid",
            "msdyn_name",
            "msdyn_presencestatustext",
            "msdyn_basepresencestatus",
            "msdyn_canuserset",
            "msdyn_description",
            "statecode",
            "statuscode",
        ],
        EntitySet::SystemUsers => &[
            "systemuserid",
            "fullname",
            "azureactivedirectoryobjectid",
            "isdisabled",
            "applicationid",
        ],
    }
}

fn select_list(set: EntitySet, value: &str) -> Result<Vec<String>, ApiError> {
    let known = columns(set);
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            if known.iter().any(|k| k == c) {
                Ok(c.to_owned())
            } else {
                Err(unknown_property(set, c))
            }
        })
        .collect()
}

fn options(set: EntitySet, pairs: &[(String, String)]) -> Result<Options, ApiError> {
    let mut o = Options::default();
    for (name, value) in pairs {
        match name.as_str() {
            "$select" => o.select = Some(select_list(set, value)?),
            "$expand" => o.expand = expand_list(set, value)?,
            "$filter" => o.filter = filter(set, value)?,
            "$skiptoken" => o.after = Some(parse_skiptoken(value)?),
            "$top" => {
                o.top = Some(value.trim().parse().map_err(|_| {
                    ApiError::odata(StatusCode::BAD_REQUEST, format!("Invalid value '{value}' for $top query option."))
                })?);
            }
            "$orderby" | "$count" | "$apply" | "$search" | "$skip" | "$format" => {
                return Err(ApiError::odata(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("The simulator does not implement the {name} query option."),
                ));
            }
            other if other.starts_with('$') => {
                return Err(ApiError::odata(
                    StatusCode::BAD_REQUEST,
                    format!("The query parameter '{other}' is not supported."),
                ));
            }
            _ => {}
        }
    }
    Ok(o)
}

/// `nav($select=a,b),other`: split on top-level commas.
fn expand_list(set: EntitySet, value: &str) -> Result<Vec<(String, Option<Vec<String>>)>, ApiError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in value.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let (nav, inner) = match item.split_once('(') {
            Some((nav, rest)) => {
                let inner = rest.strip_suffix(')').ok_or_else(|| {
                    ApiError::odata(StatusCode::BAD_REQUEST, format!("Syntax error in $expand at '{item}'."))
                })?;
                (nav.trim(), Some(inner))
            }
            None => (item, None),
        };
        let target = set.navigation(nav).ok_or_else(|| unknown_property(set, nav))?;
        let mut select = None;
        for opt in inner.into_iter().flat_map(|i| i.split(';')).map(str::trim).filter(|s| !s.is_empty()) {
            match opt.split_once('=') {
                Some(("$select", cols)) => select = Some(select_list(target, cols)?),
                _ => {
                    return Err(ApiError::odata(
                        StatusCode::NOT_IMPLEMENTED,
                        format!("The simulator supports only $select inside $expand, not '{opt}'."),
                    ))
                }
            }
        }
        out.push((nav.to_owned(), select));
    }
    Ok(out)
}

/// `col eq literal [and col eq literal ...]`, the only filters the simulator evaluates.
fn filter(set: EntitySet, value: &str) -> Result<Vec<(String, Value)>, ApiError> {
    let known = columns(set);
    let mut out = Vec::new();
    for clause in value.split(" and ") {
        let parts: Vec<&str> = clause.trim().splitn(3, ' ').collect();
        let [col, "eq", lit] = parts[..] else {
            return Err(ApiError::odata(
                StatusCode::NOT_IMPLEMENTED,
                format!("The simulator evaluates only `column eq value [and ...]` filters, not '{clause}'."),
            ));
        };
        if !known.iter().any(|k| k == col) {
            return Err(unknown_property(set, col));
        }
        let lit = lit.trim();
        let v = if let Some(s) = lit.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            Value::String(s.replace("''", "'"))
        } else if lit == "true" || lit == "false" {
            Value::Bool(lit == "true")
        } else if lit == "null" {
            Value::Null
        } else if let Some(g) = norm_guid(lit) {
            Value::String(g)
        } else if let Ok(n) = lit.parse::<i64>() {
            Value::from(n)
        } else {
            return Err(ApiError::odata(
                StatusCode::BAD_REQUEST,
                format!("Syntax error in $filter: '{lit}' is not a literal."),
            ));
        };
        out.push((col.to_owned(), v));
    }
    Ok(out)
}

fn context_url(base: &str, set: EntitySet, o: &Options) -> String {
    let mut parts: Vec<String> = o.select.clone().unwrap_or_default();
    for (nav, sel) in &o.expand {
        parts.push(format!("{nav}({})", sel.as_ref().map(|s| s.join(",")).unwrap_or_default()));
    }
    if parts.is_empty() {
        format!("{base}/$metadata#{}", set.set_name())
    } else {
        format!("{base}/$metadata#{}({})", set.set_name(), parts.join(","))
    }
}

/// The paging cookie: `<cookie pagenumber="N" pagingcookie="<encoded inner cookie>" istracking="False" />`.
fn skiptoken(set: EntitySet, page: u64, first: &str, last: &str) -> String {
    let inner = format!(
        "<cookie page=\"{}\"><{} last=\"{{{}}}\" first=\"{{{}}}\" /></cookie>",
        page - 1,
        set.primary_key(),
        last.to_ascii_uppercase(),
        first.to_ascii_uppercase()
    );
    format!(
        "<cookie pagenumber=\"{page}\" pagingcookie=\"{}\" istracking=\"False\" />",
        percent_encode(&percent_encode(&inner))
    )
}

fn parse_skiptoken(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::odata(StatusCode::BAD_REQUEST, "The $skiptoken is not a paging cookie this server issued.");
    let attr = |s: &str, name: &str| -> Option<String> {
        let start = s.find(&format!("{name}=\""))? + name.len() + 2;
        let len = s[start..].find('"')?;
        Some(s[start..start + len].to_owned())
    };
    let page: u64 = attr(token, "pagenumber").and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let cookie = attr(token, "pagingcookie").ok_or_else(bad)?;
    let inner = percent_decode(&percent_decode(&cookie).ok_or_else(bad)?).ok_or_else(bad)?;
    let last = attr(&inner, "last").ok_or_else(bad)?;
    let last = norm_guid(last.trim_matches(|c| c == '{' || c == '}')).ok_or_else(bad)?;
    Ok((page, last))
}

/// Percent-encode everything but unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (`+` stays `+`); `None` on a broken escape or invalid UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `2024-08-02T07:00:38Z`: whole seconds, as the Web API writes Dataverse date-times.
pub(crate) fn iso_seconds(ms: i64) -> String {
    let (date, secs) = civil(ms);
    format!("{date}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `2024-08-02T07:00:38.123Z`.
pub(crate) fn iso_millis(ms: i64) -> String {
    let (date, secs) = civil(ms);
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

/// `YYYY-MM-DD` and the second of the day.
fn civil(ms: i64) -> (String, i64) {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), sod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_iso8601;

    #[test]
    fn timestamps_round_trip_through_the_crate_parser() {
        for ms in [0, 1_722_582_038_000, 1_722_582_038_123, 951_782_400_999] {
            assert_eq!(parse_iso8601(&iso_millis(ms)), Some(ms));
            assert_eq!(parse_iso8601(&iso_seconds(ms)), Some(ms - ms % 1000));
        }
        assert_eq!(iso_seconds(1_722_582_038_000), "2024-08-02T07:00:38Z");
    }

    #[test]
    fn skiptoken_round_trips() {
        let last = "0a0b0c0d-0000-0000-0000-000000000001";
        let t = skiptoken(EntitySet::AgentStatuses, 3, last, last);
        let once = percent_decode(&percent_encode(&t)).unwrap();
        assert_eq!(parse_skiptoken(&once).unwrap(), (3, last.to_owned()));
        assert!(parse_skiptoken("<cookie/>").is_err());
    }

    #[test]
    fn unknown_columns_are_refused_like_dataverse() {
        let e = select_list(EntitySet::AgentStatuses, "msdyn_agentstatusid,msdyn_agentid").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("'msdyn_agentid'"), "{}", e.message);
        assert!(expand_list(EntitySet::AgentStatuses, "msdyn_currentpresenceid($select=msdyn_name)").is_ok());
        assert!(expand_list(EntitySet::AgentStatuses, "msdyn_presence").is_err());
    }
}
