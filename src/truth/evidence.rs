//! One representative's day as text, for a failed check: what happened in each system, what
//! presync wrote, what the router offered, and what the truth expected, in time order.

use std::fmt::Write as _;

use presync_engine::Millis;

use super::Truth;
use crate::harness::Harness;

/// The day of representative `rep`, times in seconds from `start`.
pub fn day(h: &Harness, truth: &Truth, rep: usize, start: Millis) -> String {
    let r = &h.reps[rep];
    let secs = |t: Millis| (t - start) as f64 / 1000.0;
    let mut lines: Vec<(Millis, String)> = Vec::new();
    for c in h.dv.changes() {
        if c.agent_id.eq_ignore_ascii_case(&r.agent) {
            lines.push((c.at_ms, format!("D365     {} ({:?})", c.base, c.cause)));
        }
    }
    // Every edit of the person's Teams sources (a change beneath a session included) and what
    // time alone changed: what the truth replays.
    let timer = h
        .graph
        .changes()
        .into_iter()
        .filter(|c| c.cause == presync_teams::sim::ChangeCause::Timer);
    for c in h.graph.edits().into_iter().chain(timer) {
        if c.user.eq_ignore_ascii_case(&r.aad) {
            lines.push((
                c.at,
                format!(
                    "Teams    shows {}/{} (the person's own {}/{}{}) by {:?}",
                    c.internal.0,
                    c.internal.1,
                    c.own.0,
                    c.own.1,
                    if c.own_preferred { ", chosen" } else { "" },
                    c.cause
                ),
            ));
        }
    }
    for q in h.graph.requests() {
        if q.method == "POST"
            && q.path
                .to_ascii_lowercase()
                .contains(&r.aad.to_ascii_lowercase())
        {
            let body = q.body.map(|b| b.to_string()).unwrap_or_default();
            let action = q.path.rsplit('/').next().unwrap_or_default().to_owned();
            lines.push((
                q.at_ms,
                format!("  write  teams {action} {body} -> {}", q.status),
            ));
        }
    }
    // presync's reads of the person's Teams presence, and the notifications Graph sent it.
    let aad = r.aad.to_ascii_lowercase();
    for q in h.graph.requests() {
        let path = q.path.to_ascii_lowercase();
        let batch = path.ends_with("getpresencesbyuserid")
            && q.body
                .as_ref()
                .is_some_and(|b| b.to_string().to_ascii_lowercase().contains(&aad));
        let single = q.method == "GET" && path.ends_with(&format!("{aad}/presence"));
        if batch || single {
            let slow = q
                .delayed_ms
                .map(|d| format!(" (answered {d} ms later)"))
                .unwrap_or_default();
            lines.push((q.at_ms, format!("  read   teams -> {}{slow}", q.status)));
        }
    }
    for n in h.graph.notifications() {
        if n.user_id
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(&aad))
        {
            let answer = n.status.map_or("no answer".to_owned(), |s| s.to_string());
            lines.push((
                n.at_ms,
                format!(
                    "Graph    notified presync (attempt {}{}) -> {answer}",
                    n.attempt,
                    if n.duplicate { ", duplicate" } else { "" }
                ),
            ));
        }
    }
    for q in h.dv.requests() {
        let agent = q
            .body
            .as_ref()
            .and_then(|b| b.get("AgentId"))
            .and_then(|a| a.as_str());
        if q.path.ends_with("CCaaS_ModifyAgentPresence")
            && agent.is_some_and(|a| a.eq_ignore_ascii_case(&r.agent))
        {
            let presence = q
                .body
                .as_ref()
                .and_then(|b| b.get("PresenceId"))
                .map(|p| p.to_string())
                .unwrap_or_default();
            let slow = q
                .delayed_ms
                .map(|d| format!(" (answered {d} ms later)"))
                .unwrap_or_default();
            lines.push((
                q.at_ms,
                format!("  write  d365 {presence} -> {}{slow}", q.status),
            ));
        }
    }
    for o in h.dv.offers() {
        if o.agent_id.eq_ignore_ascii_case(&r.agent) {
            lines.push((
                o.at_ms,
                format!("Router   offered work (D365 showed {})", o.base),
            ));
        }
    }
    for c in h.dv.conversation_changes() {
        if c.agent_id.eq_ignore_ascii_case(&r.agent) {
            lines.push((c.at_ms, format!("D365     conversations open: {}", c.open)));
        }
    }
    let t = &truth.reps[rep];
    for (at, a) in t.d365.points() {
        lines.push((*at, format!("  truth  D365 should show {a}")));
    }
    for (at, s) in t.session.points() {
        lines.push((*at, format!("  truth  presync's Teams part should be {s}")));
    }
    for (at, held) in t.held.points() {
        lines.push((*at, format!("  truth  held: {held}")));
    }
    lines.sort_by_key(|(at, _)| *at);
    let mut out = format!(
        "== {} (agent {}, user {}); times in seconds from {start} ms\n",
        r.id, r.agent, r.aad
    );
    for (at, line) in lines {
        let _ = writeln!(out, "{:>9.3} {line}", secs(at));
    }
    out
}
