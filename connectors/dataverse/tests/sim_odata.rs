//! The simulator's OData reads on a loopback port: paging by `Prefer: odata.maxpagesize` and
//! `@odata.nextLink`, `$select`/`$expand`/`$filter`, single rows, the presence catalog and
//! system users.
#![allow(clippy::unwrap_used)]

mod sim_support;

use presync_dataverse::mapping::{builtin, BaseStatus, PresenceEntry};
use presync_dataverse::time::parse_iso8601;
use serde_json::Value;
use sim_support::*;

const QUERY: &str = "$select=msdyn_agentstatusid,_msdyn_agentid_value,msdyn_isagentloggedin,\
msdyn_presencemodifiedon,msdyn_presencemodifiedonwithmilliseconds,msdyn_presencemodifiedby,versionnumber\
&$expand=msdyn_currentpresenceid($select=msdyn_presenceid,msdyn_name,msdyn_basepresencestatus,msdyn_presencestatustext)";

fn agent(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

#[tokio::test]
async fn twelve_rows_at_five_per_page_come_in_three_pages_linked_by_next_link() {
    let env = start(|_| {}).await;
    for i in 0..10 {
        env.sim.add_agent(
            &agent(i),
            &format!("aad-{i}"),
            &format!("Agent {i}"),
            builtin::AVAILABLE,
            true,
        );
    }
    let token = env.token().await;
    let mut url = env.url(&format!("msdyn_agentstatuses?{QUERY}"));
    let mut pages = Vec::new();
    loop {
        let (status, page) = env
            .get(&token, &url, None, Some("odata.maxpagesize=5"))
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(page["@odata.context"]
            .as_str()
            .unwrap()
            .contains("$metadata#msdyn_agentstatuses("));
        pages.push(page["value"].as_array().unwrap().clone());
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}{API}/msdyn_agentstatuses?", env.base)),
                    "absolute: {next}"
                );
                assert!(next.contains("$skiptoken="));
                assert!(next.contains("$select="), "the query is kept");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 5, 2]
    );
    let mut ids: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|r| r["msdyn_agentstatusid"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "every row once");
    let prefer: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter_map(|r| r.prefer)
        .collect();
    assert_eq!(prefer, vec!["odata.maxpagesize=5"; 3]);
}

#[tokio::test]
async fn rows_carry_the_selected_columns_and_the_expanded_presence() {
    let env = start(|_| {}).await;
    env.sim.agent_sets(ANN, builtin::BUSY);
    let truth = env.sim.row(ANN).unwrap();
    let token = env.token().await;
    let url = env.url(&format!(
        "msdyn_agentstatuses?{QUERY}&$filter=_msdyn_agentid_value eq {ANN}"
    ));
    let (status, page) = env.get(&token, &url, None, None).await;
    assert_eq!(status, 200, "{page}");
    let rows = page["value"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["msdyn_agentstatusid"], truth.agent_status_id.as_str());
    assert_eq!(row["_msdyn_agentid_value"], ANN);
    assert_eq!(row["msdyn_isagentloggedin"], true);
    assert_eq!(row["msdyn_presencemodifiedby"], "AGENT");
    assert_eq!(row["versionnumber"], truth.row_version, "a number");
    let secs = row["msdyn_presencemodifiedon"].as_str().unwrap();
    assert!(secs.ends_with('Z') && !secs.contains('.'), "{secs}");
    assert_eq!(
        parse_iso8601(secs),
        Some(truth.modified_on_ms / 1000 * 1000)
    );
    let ms = row["msdyn_presencemodifiedonwithmilliseconds"]
        .as_str()
        .unwrap();
    assert_eq!(parse_iso8601(ms), Some(truth.modified_on_ms));
    assert!(
        row.get("msdyn_availableunitscapacity").is_none(),
        "not selected"
    );
    let p = &row["msdyn_currentpresenceid"];
    assert_eq!(p["msdyn_presenceid"], builtin::BUSY);
    assert_eq!(p["msdyn_name"], "Busy");
    assert_eq!(p["msdyn_basepresencestatus"], 192_360_001);
    assert_eq!(p["msdyn_presencestatustext"], "Busy");

    let one = env.url(&format!(
        "msdyn_agentstatuses({})?{QUERY}",
        truth.agent_status_id
    ));
    let (status, single) = env.get(&token, &one, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        single["msdyn_agentstatusid"],
        truth.agent_status_id.as_str()
    );
    assert!(single["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("/$entity"));
    let missing = env.url(&format!(
        "msdyn_agentstatuses(deadbeef-0000-4000-8000-000000000000)?{QUERY}"
    ));
    let (status, err) = env.get(&token, &missing, None, None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "0x80040217");
}

#[tokio::test]
async fn a_misspelt_column_or_navigation_fails_as_it_would_in_dataverse() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    for q in [
        "msdyn_agentstatuses?$select=msdyn_agentid",
        "msdyn_agentstatuses?$expand=msdyn_presence",
        "msdyn_agentstatuses?$expand=msdyn_currentpresenceid($select=msdyn_basestatus)",
        "msdyn_agentstatuses?$filter=msdyn_loggedin eq true",
        "msdyn_agentstatuses?$sellect=msdyn_agentstatusid",
    ] {
        let (status, err) = env.get(&token, &env.url(q), None, None).await;
        assert_eq!(status, 400, "{q}: {err}");
    }
    let (status, _) = env
        .get(&token, &env.url("msdyn_agentstatus"), None, None)
        .await;
    assert_eq!(status, 404, "the entity set is plural");
}

#[tokio::test]
async fn the_presence_catalog_lists_the_built_ins_and_custom_presences() {
    let env = start(|_| {}).await;
    env.sim.add_custom_presence(PresenceEntry {
        id: "aaaaaaaa-0000-4000-8000-000000000001".into(),
        name: "Focus".into(),
        text: "Focus time".into(),
        base: BaseStatus::BusyDnd,
    });
    let token = env.token().await;
    let url = env.url("msdyn_presences?$select=msdyn_presenceid,msdyn_name,msdyn_presencestatustext,msdyn_basepresencestatus");
    let mut rows: Vec<Value> = Vec::new();
    let mut next = Some(url);
    while let Some(u) = next.take() {
        let (status, page) = env.get(&token, &u, None, Some("odata.maxpagesize=4")).await;
        assert_eq!(status, 200);
        rows.extend(page["value"].as_array().unwrap().iter().cloned());
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(rows.len(), 6);
    for id in [
        builtin::AVAILABLE,
        builtin::BUSY,
        builtin::BUSY_DND,
        builtin::AWAY,
        builtin::OFFLINE,
    ] {
        assert!(rows.iter().any(|r| r["msdyn_presenceid"] == id), "{id}");
    }
    let focus = rows.iter().find(|r| r["msdyn_name"] == "Focus").unwrap();
    assert_eq!(focus["msdyn_presencestatustext"], "Focus time");
    assert_eq!(
        focus["msdyn_basepresencestatus"],
        BaseStatus::BusyDnd.option()
    );
}

#[tokio::test]
async fn system_users_are_read_by_key_and_by_entra_id() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let url = env.url(&format!(
        "systemusers({ANN})?$select=azureactivedirectoryobjectid,fullname"
    ));
    let (status, user) = env.get(&token, &url, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(user["azureactivedirectoryobjectid"], ANN_AAD);
    assert_eq!(user["fullname"], "Ann Agent");
    let url = env.url(&format!("systemusers?$select=systemuserid,fullname&$filter=azureactivedirectoryobjectid eq {SUE_AAD}"));
    let (status, page) = env.get(&token, &url, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(page["value"][0]["systemuserid"], SUE);
    assert_eq!(page["value"].as_array().unwrap().len(), 1);
}
