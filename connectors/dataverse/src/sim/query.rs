//! OData query options as the simulator understands them: `$select`, `$expand` (with a nested
//! `$select`), `$filter` (`column eq literal [and ...]`), `$top`, and the `$skiptoken` paging
//! cookie, plus the percent-coding they need. Unknown columns are refused as Dataverse refuses
//! them; options the simulator does not evaluate answer 501 rather than being ignored.

use axum::http::StatusCode;
use serde_json::Value;

use super::errors::ApiError;
use super::odata::EntitySet;
use super::state::norm_guid;

/// An `$expand` item: the navigation property and its nested `$select`.
pub(crate) type Expand = (String, Option<Vec<String>>);

#[derive(Debug, Default)]
pub(crate) struct Options {
    pub(crate) select: Option<Vec<String>>,
    pub(crate) expand: Vec<Expand>,
    pub(crate) filter: Vec<(String, Value)>,
    pub(crate) after: Option<(u64, String)>,
    pub(crate) top: Option<usize>,
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
            "msdyn_assignedconversationcount",
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
            if known.contains(&c) {
                Ok(c.to_owned())
            } else {
                Err(unknown_property(set, c))
            }
        })
        .collect()
}

pub(crate) fn options(set: EntitySet, pairs: &[(String, String)]) -> Result<Options, ApiError> {
    let mut o = Options::default();
    for (name, value) in pairs {
        match name.as_str() {
            "$select" => o.select = Some(select_list(set, value)?),
            "$expand" => o.expand = expand_list(set, value)?,
            "$filter" => o.filter = filter(set, value)?,
            "$skiptoken" => o.after = Some(parse_skiptoken(value)?),
            "$top" => {
                o.top = Some(value.trim().parse().map_err(|_| {
                    ApiError::odata(
                        StatusCode::BAD_REQUEST,
                        format!("Invalid value '{value}' for $top query option."),
                    )
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
fn expand_list(set: EntitySet, value: &str) -> Result<Vec<Expand>, ApiError> {
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
                    ApiError::odata(
                        StatusCode::BAD_REQUEST,
                        format!("Syntax error in $expand at '{item}'."),
                    )
                })?;
                (nav.trim(), Some(inner))
            }
            None => (item, None),
        };
        let target = set
            .navigation(nav)
            .ok_or_else(|| unknown_property(set, nav))?;
        let mut select = None;
        for opt in inner
            .into_iter()
            .flat_map(|i| i.split(';'))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
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
        if !known.contains(&col) {
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

/// The paging cookie: `<cookie pagenumber="N" pagingcookie="<encoded inner cookie>" istracking="False" />`.
pub(crate) fn skiptoken(set: EntitySet, page: u64, first: &str, last: &str) -> String {
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
    let bad = || {
        ApiError::odata(
            StatusCode::BAD_REQUEST,
            "The $skiptoken is not a paging cookie this server issued.",
        )
    };
    let attr = |s: &str, name: &str| -> Option<String> {
        let start = s.find(&format!("{name}=\""))? + name.len() + 2;
        let len = s[start..].find('"')?;
        Some(s[start..start + len].to_owned())
    };
    let page: u64 = attr(token, "pagenumber")
        .and_then(|p| p.parse().ok())
        .ok_or_else(bad)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = select_list(
            EntitySet::AgentStatuses,
            "msdyn_agentstatusid,msdyn_agentid",
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("'msdyn_agentid'"), "{}", e.message);
        assert!(expand_list(
            EntitySet::AgentStatuses,
            "msdyn_currentpresenceid($select=msdyn_name)"
        )
        .is_ok());
        assert!(expand_list(EntitySet::AgentStatuses, "msdyn_presence").is_err());
        assert!(filter(EntitySet::AgentStatuses, "msdyn_isagentloggedin eq true").is_ok());
        assert_eq!(
            filter(EntitySet::AgentStatuses, "contains(fullname,'x')")
                .unwrap_err()
                .status,
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
