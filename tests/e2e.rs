//! End to end: the real `presync` binary (`presync run`) against both simulators on loopback.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use presync_dataverse::mapping::builtin;
use presync_dataverse::sim::DataverseSim;
use presync_teams::sim::GraphSim;

#[path = "../engine/tests/common/mod.rs"]
mod common;
mod rig;

use rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_flows_both_ways_through_the_real_binary() {
    let st = setup().await;
    let (dv, graph, presync_url) = (&st.dv, &st.graph, st.presync_url.clone());
    let _presync = st.run("presync-e2e.log");
    st.ready().await;
    let http = reqwest::Client::new();

    // A D365 presence change reaches Teams.
    dv.system_sets(AGENT, builtin::BUSY);
    wait_for("Busy in Teams", || {
        graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Busy")
    })
    .await;

    // D365 frees the agent; then a Teams meeting makes the agent Busy in D365.
    dv.system_sets(AGENT, builtin::AVAILABLE);
    wait_for("Available in Teams", || {
        graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Available")
    })
    .await;
    // A meeting holds D365 at Busy - DND (the default hold), so no customer is routed to it.
    graph.person_joins_meeting(AAD);
    wait_for("Busy - DND in D365", || {
        dv.presence(AGENT).as_deref() == Some(builtin::BUSY_DND)
    })
    .await;

    // presync's own writes echoed back and were not propagated: D365 got one write (the
    // meeting's hold, which never echoes into Teams), Teams two session writes (D365's Busy,
    // then Available).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d365_writes = dv
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"))
        .count();
    assert_eq!(d365_writes, 1, "an echo came back to D365");
    let teams_writes = graph
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/presence/setPresence"))
        .count();
    assert_eq!(teams_writes, 2);

    // A malformed or unauthenticated webhook is refused with a clear message, nothing stored.
    let hook = format!("{presync_url}/webhooks/dataverse");
    let r = http.post(&hook).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&hook)
        .header("x-presync-secret", HOOK_SECRET)
        .header("x-ms-dynamics-organization", "contoso.crm.dynamics.com")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("line"));

    let metrics = http
        .get(format!("{presync_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("presync_decisions_total{rule=\"echo\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"unauthorized\"} 1"), "{metrics}");
    // Every stored event was resolved in a batch, and a batch holds one or more.
    let batches = metric(&presync_url, "presync_resolve_batches_total ")
        .await
        .expect("resolve batches are exported");
    let accepted = metric(&presync_url, "presync_events_accepted_total ")
        .await
        .expect("accepted events are exported");
    assert!(batches >= 1.0 && batches <= accepted, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_webhook_is_repaired_by_reconcile_once() {
    let st = setup().await;
    // Nobody listens for webhooks: every change is lost until a reconcile reads it.
    st.dv.system_sets(AGENT, builtin::BUSY_DND);
    st.dv.wait_deliveries_idle().await;
    let out = st
        .presync()
        .args(["reconcile", "--once", "--config"])
        .arg(&st.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(summary["complete"], true);
    assert!(st
        .graph
        .session(AAD, APP)
        .is_some_and(|s| s.posted_availability == "DoNotDisturb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_clear_message_and_store_nothing() {
    use reqwest::Method;
    let st = setup().await;
    let _presync = st.run("presync-e2e-bad.log");
    st.ready().await;
    let http = reqwest::Client::new();
    let hook = format!("{}/webhooks/dataverse", st.presync_url);
    let authed = |body: Vec<u8>| {
        http.post(&hook)
            .header("x-presync-secret", HOOK_SECRET)
            .header("x-ms-dynamics-organization", "contoso.crm.dynamics.com")
            .header("content-type", "application/json")
            .body(body)
    };
    // Oversized: refused on its Content-Length, before the body is sent. (A client streaming
    // the body would see the connection closed under it.)
    let reply = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = st.presync_url.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /webhooks/dataverse HTTP/1.1\r\nhost: {addr}\r\nx-presync-secret: {HOOK_SECRET}\r\n\
             x-ms-dynamics-organization: contoso.crm.dynamics.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            4 * 1024 * 1024
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("larger than the configured limit"),
        "{reply}"
    );
    // Malformed: says what and where.
    let r = authed(b"{\"MessageName\": ".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("line"));
    // Unauthenticated, and a wrong secret.
    let r = http.post(&hook).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&hook)
        .header("x-presync-secret", "not-the-secret-at-all")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains(HOOK_SECRET));
    // Nothing from Dataverse was stored, and each refusal was counted.
    for (outcome, n) in [
        ("accepted", 0.0),
        ("too_large", 1.0),
        ("malformed", 1.0),
        ("unauthorized", 2.0),
    ] {
        let line = format!("presync_webhooks_total{{system=\"dataverse\",outcome=\"{outcome}\"}} ");
        assert_eq!(st.metric(&line).await, Some(n), "{outcome}");
    }
    assert!(st
        .metric("presync_events_total{system=\"dataverse\",outcome=\"event\"} ")
        .await
        .is_none());

    // The admin API: refused without the token, then the directory, one representative's
    // state, an update that would steal an id (409), and a reconcile on demand.
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}/admin/{path}", st.presync_url))
            .bearer_auth(ADMIN_TOKEN)
    };
    let json = |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };
    let url = format!("{}/admin/reps", st.presync_url);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&url)
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let reps = json(admin(Method::GET, "reps").send().await.unwrap()).await;
    assert_eq!(reps[0]["id"], "agent-one", "{reps}");
    let one = json(admin(Method::GET, "reps/agent-one").send().await.unwrap()).await;
    assert_eq!(one["representative"]["display_name"], "Agent One", "{one}");
    assert!(one["history"].is_array(), "{one}");
    let r = admin(Method::PUT, "reps/agent-two")
        .json(&serde_json::json!({"display_name": "Two", "external_ids": {"teams": AAD}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Ids in any case are one; a system that is not configured is refused.
    let one = json(admin(Method::GET, "reps/AGENT-ONE").send().await.unwrap()).await;
    assert_eq!(one["representative"]["id"], "agent-one", "{one}");
    let r = admin(Method::PUT, "reps/agent-three")
        .json(&serde_json::json!({"display_name": "Three", "external_ids": {"team": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown system `team`"));
    // An import is all or nothing: its line 3 takes agent-one's Teams id, so line 2 is not
    // kept either, and the answer names line 3.
    let r = admin(Method::POST, "reps")
        .body(format!(
            "id,display_name,teams\nagent-four,Four,aad-four\nagent-five,Five,{AAD}\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("body.csv:3"));
    let r = admin(Method::GET, "reps/agent-four").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = admin(Method::GET, "reps/nobody").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let report = json(admin(Method::POST, "reconcile").send().await.unwrap()).await;
    assert_eq!(
        report["systems"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_burst_loses_nothing_acknowledged() {
    let st = setup().await;
    let mut presync = st.run("presync-e2e-kill.log");
    st.ready().await;
    // A burst of D365 changes; the process is killed with SIGKILL once it has acknowledged 20.
    let acked = |dv: &DataverseSim| {
        dv.deliveries()
            .iter()
            .filter(|d| d.status.is_some_and(|s| (200..300).contains(&s)))
            .count()
    };
    let mut killed = false;
    for i in 0..80 {
        let p = if i % 2 == 0 {
            builtin::BUSY
        } else {
            builtin::AVAILABLE
        };
        st.dv.system_sets(AGENT, p);
        if !killed && acked(&st.dv) >= 20 {
            presync.0.kill().unwrap();
            presync.0.wait().unwrap();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // On a slow machine fewer than 20 may be acknowledged by the time all 80 are queued: the
    // rest of the burst is still being delivered, one at a time, when the kill comes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !killed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "20 webhooks were never acknowledged"
        );
        if acked(&st.dv) >= 20 {
            presync.0.kill().unwrap();
            presync.0.wait().unwrap();
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    st.dv.wait_deliveries_idle().await;
    let _restarted = st.run("presync-e2e-kill-2.log");
    st.ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while st.metric("presync_queue_depth{queue=\"inbox\"} ").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "inbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every delivery presync acknowledged was resolved: it has its decision in history.
    let acknowledged: Vec<String> = st
        .dv
        .deliveries()
        .iter()
        .filter(|d| d.status.is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|d| {
            let ctx = presync_dataverse::context::parse(d.body.as_bytes()).unwrap();
            match presync_dataverse::context::agent_status(&ctx, false) {
                presync_dataverse::context::Derived::Change(c) => Some(c.delivery_key),
                _ => None,
            }
        })
        .collect();
    assert!(acknowledged.len() >= 20, "{}", acknowledged.len());
    let db = st.db.clone();
    let store = presync_engine::store::Store::open(&db).await.unwrap();
    for key in &acknowledged {
        let h = store.history_for_delivery(key).await.unwrap();
        assert!(!h.is_empty(), "acknowledged delivery {key} was lost");
    }
}

/// Found by `presync soak`: what changed while the only instance was down (its webhooks refused)
/// waited for the next scheduled reconcile, up to 5 minutes. A restarted instance now catches
/// up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_changed_while_presync_was_down_is_repaired_when_it_starts() {
    let st = setup().await;
    let presync = st.run("presync-e2e-down.log");
    st.ready().await;
    drop(presync); // SIGKILL
    st.dv.system_sets(AGENT, builtin::BUSY_DND);
    st.dv.wait_deliveries_idle().await;
    assert!(
        st.dv
            .deliveries()
            .iter()
            .all(|d| !d.status.is_some_and(|s| (200..300).contains(&s))),
        "nobody was there to take the webhook"
    );
    let _restarted = st.run("presync-e2e-down-2.log");
    st.ready().await;
    wait_for("DND in Teams after the restart", || {
        st.graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "DoNotDisturb")
    })
    .await;
}

/// Every `setPresence` body posted for `user`, as (availability, activity).
fn session_posts(graph: &GraphSim, user: &str) -> Vec<String> {
    graph
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/presence/setPresence") && r.path.contains(user))
        .filter_map(|r| {
            r.body
                .as_ref()?
                .get("availability")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_echo_settles_with_the_persons_real_state() {
    let st = setup().await;
    let _presync = st.run("presync-e2e-sticky.log");
    st.ready().await;
    // A customer conversation: presync's Teams session says Busy.
    st.dv.system_sets(AGENT, builtin::BUSY);
    wait_for("Busy in Teams", || {
        st.graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Busy")
    })
    .await;
    // The person sets Do not disturb by hand in Teams: D365 follows, and its echo must not come
    // back into presync's Teams session, or the session would hold DND after the person clears it.
    st.graph
        .person_sets_preferred(AAD, "DoNotDisturb", "DoNotDisturb");
    wait_for("DND in D365", || {
        st.dv.presence(AGENT).as_deref() == Some(builtin::BUSY_DND)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    st.graph.person_clears_preferred(AAD);
    wait_for("Available in D365 again", || {
        st.dv.presence(AGENT).as_deref() == Some(builtin::AVAILABLE)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(st.graph.presence(AAD).0, "Available");
    assert_eq!(st.dv.presence(AGENT).as_deref(), Some(builtin::AVAILABLE));
    let posts = session_posts(&st.graph, AAD);
    assert!(
        !posts.iter().any(|a| a == "DoNotDisturb"),
        "presync's session held the echo: {posts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL"
)]
async fn two_instances_on_postgres_share_the_work_and_survive_one_killed() {
    let pg = common::TestDb::postgres().await;
    const N: usize = 20;
    let st = setup_with(N, Some(pg.url())).await;
    // Instance A gets the webhooks; instance B listens elsewhere.
    let mut a = st.run("presync-e2e-pg-a.log");
    let b_url = format!("http://127.0.0.1:{}", free_port());
    let b_listen = b_url.trim_start_matches("http://").to_owned();
    let b = st.run_with(
        "presync-e2e-pg-b.log",
        &[("PRESYNC_HTTP__LISTEN", b_listen.as_str())],
    );
    st.ready().await;
    ready(&b_url).await;

    // Every agent goes Busy in D365: one Teams write each, whichever instance sends it.
    for i in 1..=N {
        st.dv.system_sets(&agent(i).0, builtin::BUSY);
    }
    wait_for("every agent Busy in Teams", || {
        (1..=N).all(|i| st.graph.presence_internal(&agent(i).1).0 == "Busy")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 1..=N {
        let posts = session_posts(&st.graph, &agent(i).1);
        assert_eq!(posts, vec!["Busy".to_owned()], "agent {i}");
    }

    // The two instances' writes add up to one per agent: the work was shared, not repeated.
    let by_a = st.metric("presync_writes_ok_total ").await.unwrap();
    let by_b = metric(&b_url, "presync_writes_ok_total ").await.unwrap();
    eprintln!("phase 1 writes: instance A {by_a}, instance B {by_b}");
    assert_eq!(by_a + by_b, N as f64);

    // A is killed; B carries on alone: the people set Do not disturb in Teams, and B reads it
    // and writes each agent once in D365.
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    for i in 1..=N {
        st.graph
            .person_sets_preferred(&agent(i).1, "DoNotDisturb", "DoNotDisturb");
    }
    wait_for("every agent DND in D365", || {
        (1..=N).all(|i| st.dv.presence(&agent(i).0).as_deref() == Some(builtin::BUSY_DND))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d365_writes = st
        .dv
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence") && (200..300).contains(&r.status))
        .count();
    assert_eq!(d365_writes, N, "one D365 write per agent");
    let by_b_after = metric(&b_url, "presync_writes_ok_total ").await.unwrap();
    // N D365 writes, plus the withdrawals of presync's Teams sessions (the change came from Teams).
    assert!(
        by_b_after - by_b >= N as f64,
        "B wrote {}",
        by_b_after - by_b
    );
    drop(b);
    drop(a);
    pg.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_change_notifications_drive_d365_through_the_real_binary() {
    let st = setup_full(1, None, TeamsIngress::Subscriptions).await;
    let _presync = st.run("presync-e2e-subscriptions.log");
    st.ready().await;
    // presync subscribes at start, with the delegated account, after the validation handshake.
    wait_for("a presence subscription", || {
        !st.graph.subscriptions().is_empty()
    })
    .await;
    let sub = st.graph.subscriptions().remove(0);
    assert_eq!(sub.user_ids, vec![AAD.to_owned()]);
    // A meeting in Teams is notified, read, and holds D365 at Busy - DND.
    st.graph.person_joins_meeting(AAD);
    wait_for("Busy - DND in D365", || {
        st.dv.presence(AGENT).as_deref() == Some(builtin::BUSY_DND)
    })
    .await;
    st.graph.person_leaves_meeting(AAD);
    wait_for("Available in D365", || {
        st.dv.presence(AGENT).as_deref() == Some(builtin::AVAILABLE)
    })
    .await;
    // D365's change reaches Teams; its echo comes back as a notification and stops there. (Basic
    // notifications name the user; presync reads the presence.)
    st.dv.system_sets(AGENT, builtin::BUSY_DND);
    wait_for("DND in Teams", || {
        st.graph.presence_internal(AAD).0 == "DoNotDisturb"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d365_writes = st
        .dv
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("CCaaS_ModifyAgentPresence"))
        .count();
    assert_eq!(
        d365_writes, 2,
        "the meeting's hold, then its release; no echo written back"
    );
    let notified = st
        .metric("presync_notifications_total{system=\"teams\",outcome=\"reread_queued\"} ")
        .await
        .unwrap_or(0.0);
    assert!(notified >= 3.0, "{notified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_refused_credentials_without_the_secret() {
    let st = setup().await;
    let _presync = st.run_with(
        "presync-e2e-readyz.log",
        &[("E2E_GRAPH_SECRET", "wrong-graph-secret-value")],
    );
    let url = format!("{}/readyz", st.presync_url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        if let Ok(r) = reqwest::get(&url).await {
            break (r.status(), r.text().await.unwrap());
        }
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"], "ok", "{v}");
    assert_eq!(v["connectors"]["dataverse"], "ok", "{v}");
    assert!(
        v["connectors"]["teams"]
            .as_str()
            .unwrap()
            .starts_with("credentials refused"),
        "{v}"
    );
    assert!(!body.contains("wrong-graph-secret-value"));
}

/// Found by `presync bench` (memory): mimalloc 3 keeps freed memory for a second before it
/// returns it, so one burst's freed memory was still resident while the next allocated its own
/// (peak holding 100,000 representatives 148-153 MiB, 132.6 at 10 ms). `presync run` starts
/// itself again with `MIMALLOC_PURGE_DELAY=10` unless its environment sets the option, whose
/// value it then keeps.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_returns_freed_memory_promptly_unless_told_otherwise() {
    const NAME: &str = "MIMALLOC_PURGE_DELAY";
    fn purge_delay(p: &Presync) -> Option<String> {
        let environ = std::fs::read(format!("/proc/{}/environ", p.0.id())).unwrap();
        environ
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(format!("{NAME}=").as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
    let st = setup().await;
    if std::env::var_os(NAME).is_none() {
        let default = st.run("presync-e2e-purge.log");
        st.ready().await;
        assert_eq!(purge_delay(&default).as_deref(), Some("10"));
        drop(default);
    }
    let own = st.run_with("presync-e2e-purge-own.log", &[(NAME, "250")]);
    st.ready().await;
    assert_eq!(purge_delay(&own).as_deref(), Some("250"));
}

/// Since 2026-05-07 `CCaaS_ModifyAgentPresence` needs the Omnichannel Supervisor role. Without
/// it no write to D365 will ever land, which is a configuration problem, not an event's: the
/// instance stays ready (webhooks are still stored) but `/readyz` says degraded and what to
/// grant, a metric counts the refusals, one ERROR is logged however many writes are refused,
/// and `explain` says why D365 was not changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_supervisor_role_is_reported_once_counted_and_explained() {
    let st = setup_roles(1, None, TeamsIngress::Polling, false).await;
    let (dv, graph) = (&st.dv, &st.graph);
    let log = std::env::temp_dir().join(format!("presync-e2e-role-{}.log", std::process::id()));
    let _presync = st.run(log.file_name().unwrap().to_str().unwrap());
    st.ready().await;
    dv.system_sets(AGENT, builtin::AVAILABLE);
    wait_for("Available in Teams", || {
        graph
            .session(AAD, APP)
            .is_some_and(|s| s.posted_availability == "Available")
    })
    .await;

    // Two meetings: each would hold D365 at Busy - DND, and each write is refused.
    let modify = || {
        dv.requests()
            .iter()
            .filter(|r| {
                r.path.ends_with("CCaaS_ModifyAgentPresence") && matches!(r.status, 403 | 405)
            })
            .count()
    };
    graph.person_joins_meeting(AAD);
    wait_for("a refused write to D365", || modify() >= 1).await;
    graph.person_leaves_meeting(AAD);
    tokio::time::sleep(Duration::from_secs(2)).await;
    graph.person_joins_meeting(AAD);
    wait_for("a second refused write to D365", || modify() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dv.presence(AGENT).as_deref(),
        Some(builtin::AVAILABLE),
        "the simulator let a write without the role land"
    );

    let r = reqwest::get(format!("{}/readyz", st.presync_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "webhooks are still stored: still ready");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    let why = body["connectors"]["dataverse"].as_str().unwrap_or_default();
    assert!(
        why.contains("writes refused") && why.contains("Omnichannel Supervisor"),
        "{body}"
    );
    let refused = st
        .metric("presync_target_writes_total{target=\"dataverse\",outcome=\"forbidden\"}")
        .await
        .unwrap_or(0.0);
    assert!(refused >= 2.0, "refusals counted: {refused}");

    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one ERROR, not one per write:\n{text}");
    assert!(
        errors[0].contains("Omnichannel Supervisor"),
        "{}",
        errors[0]
    );

    let out = Command::new(env!("CARGO_BIN_EXE_presync"))
        .args(["explain", "agent-one", "--database", &st.db])
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{explained}");
    assert!(
        explained.contains("write forbidden") && explained.contains("Omnichannel Supervisor"),
        "{explained}"
    );
    // Times are RFC 3339, not milliseconds since the epoch.
    let epoch_ms = explained
        .split(|c: char| !c.is_ascii_digit())
        .any(|t| t.len() >= 12);
    assert!(!epoch_ms, "{explained}");
    assert!(
        explained
            .lines()
            .any(|l| l.contains('T') && l.contains("Z ")),
        "{explained}"
    );
    let _ = std::fs::remove_file(&log);
}
