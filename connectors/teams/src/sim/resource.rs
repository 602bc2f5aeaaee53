//! The `resource` of a presence subscription (graph.md §6.1): one user,
//! `communications/presences/{id}`, or many, `/communications/presences?$filter=id in ('a','b',…)`
//! with at most 650 distinct GUIDs. The leading `/` is optional and the query may arrive
//! percent-encoded.

use std::collections::BTreeSet;

use super::api::decode;
use super::errors::GraphError;
use super::state::parse_guid;

/// Most users one presence subscription may cover.
pub(crate) const MAX_USERS: usize = 650;

/// The users of `communications/presences/{id}` or
/// `/communications/presences?$filter=id in ('a','b',…)`.
pub(crate) fn parse_resource(resource: &str) -> Result<BTreeSet<String>, GraphError> {
    let invalid = |why: &str| {
        GraphError::invalid_request(format!(
            "Resource '{resource}' is not supported: {why}. Use communications/presences/{{id}} or /communications/presences?$filter=id in ('{{id}}',...)."
        ))
    };
    let r = resource.trim().trim_start_matches('/');
    if let Some(id) = r.strip_prefix("communications/presences/") {
        let key = parse_guid(id).ok_or_else(|| invalid("the id is not a GUID"))?;
        return Ok(BTreeSet::from([key]));
    }
    let query = r
        .strip_prefix("communications/presences?")
        .ok_or_else(|| invalid("unknown resource"))?;
    let query = decode(query);
    let filter = query
        .strip_prefix("$filter=")
        .ok_or_else(|| invalid("expected a $filter"))?
        .trim();
    let list = filter
        .strip_prefix("id")
        .map(str::trim_start)
        .and_then(|f| f.strip_prefix("in"))
        .map(str::trim_start)
        .and_then(|f| f.strip_prefix('('))
        .and_then(|f| f.strip_suffix(')'))
        .ok_or_else(|| invalid("expected id in ('…','…')"))?;
    let mut users = BTreeSet::new();
    for item in list.split(',') {
        let quoted = item.trim();
        let id = quoted
            .strip_prefix('\'')
            .and_then(|q| q.strip_suffix('\''))
            .ok_or_else(|| invalid("ids must be quoted with '"))?;
        users.insert(parse_guid(id).ok_or_else(|| invalid("an id is not a GUID"))?);
    }
    if users.len() > MAX_USERS {
        return Err(GraphError::invalid_request(format!(
            "Too many users in the filter: {} (at most {MAX_USERS}).",
            users.len()
        )));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";
    const B: &str = "7f8c879f-18f3-4921-9560-596f95f9f315";

    #[test]
    fn both_resource_forms_parse() {
        let one = parse_resource(&format!("communications/presences/{A}")).expect("single");
        assert_eq!(one.len(), 1);
        let many = parse_resource(&format!(
            "/communications/presences?$filter=id in ('{A}', '{}')",
            B.to_uppercase()
        ))
        .expect("filter");
        assert_eq!(many, BTreeSet::from([A.to_owned(), B.to_owned()]));
        let encoded = parse_resource(&format!(
            "/communications/presences?$filter=id%20in%20('{A}')"
        ))
        .expect("encoded");
        assert_eq!(encoded.len(), 1);
    }

    #[test]
    fn malformed_resources_are_refused() {
        for bad in [
            "/users/x/presence".to_owned(),
            "communications/presences/not-a-guid".to_owned(),
            format!("/communications/presences?$filter=id in ({A})"),
            format!("/communications/presences?$filter=id eq '{A}'"),
        ] {
            assert!(parse_resource(&bad).is_err(), "{bad}");
        }
    }
}
