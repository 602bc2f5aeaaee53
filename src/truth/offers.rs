//! The routing check: every conversation D365's simulated router offered, against the truth.
//!
//! An offer to a representative who, by the truth, should not have been routable counts
//! against presync once it had `reaction_ms` to make them unroutable: from when they should no
//! longer be, or from when D365 last became routable (a recalculation, a choice of theirs that
//! a hold puts back: presync cannot act before it), whichever is later. Offers made while a
//! service kept presync from learning or writing, or while no instance of presync was up, are
//! counted apart: they are not presync's doing.

use std::collections::HashMap;

use presync_engine::{Availability, Millis};
use serde_json::json;

use super::Truth;
use crate::harness::Harness;

/// How long a restarted instance may take, once ready, to catch up with what changed while
/// no instance was up (its catch-up reconcile reads every representative in both systems).
pub const CATCH_UP_MS: Millis = 5_000;

/// A request of presync's to a simulator, as the check needs it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub at_ms: Millis,
    pub status: u16,
    pub retry_after_ms: Option<i64>,
    pub delayed_ms: Option<i64>,
    /// Lower-cased text naming whom it was for (D365: the `AgentId`; Graph: path and body).
    pub about: String,
}

impl Request {
    /// A recorded request of either simulator, `about` whom.
    fn of(
        at_ms: Millis,
        status: u16,
        (retry_after_ms, delayed_ms): (Option<i64>, Option<i64>),
        about: String,
    ) -> Request {
        Request {
            at_ms,
            status,
            retry_after_ms,
            delayed_ms,
            about,
        }
    }

    fn answered_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What the simulators recorded that the routing check reads. Ids are lower-cased.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// Per representative, in order: (D365 systemuserid, Entra object id).
    pub reps: Vec<(String, String)>,
    /// Every change of D365's presence: (agent, when, base status).
    pub d365_changes: Vec<(String, Millis, Availability)>,
    /// Every offer of the router: (agent, when).
    pub offers: Vec<(String, Millis)>,
    pub d365_requests: Vec<Request>,
    pub graph_requests: Vec<Request>,
    /// Webhooks D365 dropped: (agent, when the change was made).
    pub dropped_webhooks: Vec<(String, Millis)>,
    /// Notifications Graph dropped: (user, when).
    pub dropped_notifications: Vec<(String, Millis)>,
    /// Notifications presync accepted: (user, when sent).
    pub notifications: Vec<(String, Millis)>,
}

impl Records {
    pub fn of(h: &Harness) -> Records {
        let lower = |s: &str| s.to_ascii_lowercase();
        let graph_text = |path: &str, body: &Option<serde_json::Value>| {
            let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            lower(&format!("{path} {body}"))
        };
        Records {
            reps: h
                .reps
                .iter()
                .map(|r| (lower(&r.agent), lower(&r.aad)))
                .collect(),
            d365_changes: h
                .dv
                .changes()
                .iter()
                .map(|c| (lower(&c.agent_id), c.at_ms, c.base))
                .collect(),
            offers: h
                .dv
                .offers()
                .iter()
                .map(|o| (lower(&o.agent_id), o.at_ms))
                .collect(),
            d365_requests: h
                .dv
                .requests()
                .iter()
                .map(|q| {
                    let agent = q.body.as_ref().and_then(|b| b.get("AgentId"));
                    let about = agent.and_then(|a| a.as_str()).map(lower);
                    let waits = (q.retry_after_ms, q.delayed_ms);
                    Request::of(q.at_ms, q.status, waits, about.unwrap_or_default())
                })
                .collect(),
            graph_requests: h
                .graph
                .requests()
                .iter()
                .map(|q| {
                    let waits = (q.retry_after_ms, q.delayed_ms);
                    Request::of(q.at_ms, q.status, waits, graph_text(&q.path, &q.body))
                })
                .collect(),
            dropped_webhooks: h
                .dv
                .dropped_webhook_changes()
                .iter()
                .map(|d| (lower(&d.agent_id), d.at_ms))
                .collect(),
            dropped_notifications: h
                .graph
                .dropped_notification_records()
                .iter()
                .filter_map(|d| Some((lower(d.user_id.as_deref()?), d.at_ms)))
                .collect(),
            notifications: h
                .graph
                .notifications()
                .iter()
                .filter(|n| n.accepted)
                .filter_map(|n| Some((lower(n.user_id.as_deref()?), n.at_ms)))
                .collect(),
        }
    }
}

/// The offers, sorted by what the truth says of them.
#[derive(Debug, Default)]
pub struct Offers {
    pub offered: usize,
    /// (representative, when, unroutable since).
    pub while_unavailable: Vec<(usize, Millis, Millis)>,
    /// Offers in that time while a service kept presync from learning or writing what would
    /// have made the representative unroutable: it refused, failed or held back presync's read
    /// or write for them (an injected 429, 5xx or slow answer, which a time-out may end), or
    /// rate-limited presync as a whole, and its `Retry-After` or delay had not run out the
    /// reaction time before; or it dropped the webhook or notification of their change, and
    /// presync had not heard of them since, or only within the reaction time. Not presync's
    /// doing; counted apart.
    pub while_refused: Vec<(usize, Millis, Millis)>,
    /// Offers that would count, but for the time presync could not yet know of the Teams
    /// change that made the representative unroutable (a notification Graph delivered late,
    /// a read of theirs not answered yet): counted from when it could. Shown, not failed.
    pub before_presync_could_know: Vec<(usize, Millis, Millis)>,
    /// Offers in that time when the representative became unroutable while no instance of
    /// presync was up (a single instance killed and restarting), before the restarted one
    /// could catch up: the change reached no one. Counted apart too.
    pub while_presync_was_down: Vec<(usize, Millis, Millis)>,
}

impl Offers {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "offered": self.offered,
            "offers_while_unavailable": self.while_unavailable.len(),
            "offers_while_a_service_refused_presync": self.while_refused.len(),
            "offers_while_presync_was_down": self.while_presync_was_down.len(),
            "offers_before_presync_could_know": self.before_presync_could_know.len(),
            "examples": self.while_unavailable.iter().take(10).map(|(r, at, since)| {
                format!("rep {r} offered work at {at}, unroutable since {since}")
            }).collect::<Vec<_>>(),
        })
    }
}

/// Times a service kept presync from learning or writing, each as (from, until): a rate limit
/// keeps presync from everything on that service; a refused, failed or slow read or write for
/// one representative, from that one until its `Retry-After` or delay ran out; a webhook D365
/// dropped, from that representative until their next change in D365; a notification Graph
/// dropped, until presync next heard of the person (a read of theirs answered, a notification
/// accepted).
#[derive(Debug, Default)]
struct Refusals {
    everyone: Vec<(Millis, Millis)>,
    by_rep: HashMap<usize, Vec<(Millis, Millis)>>,
}

fn refusals(r: &Records, d365_changes: &HashMap<usize, Vec<(Millis, Availability)>>) -> Refusals {
    let mut out = Refusals::default();
    let by_agent = |agent: &str| r.reps.iter().position(|(a, _)| a == agent);
    let by_user = |user: &str| r.reps.iter().position(|(_, u)| u == user);
    for (agent, at) in &r.dropped_webhooks {
        let Some(rep) = by_agent(agent) else {
            continue;
        };
        let next = d365_changes
            .get(&rep)
            .and_then(|line| line.iter().map(|(t, _)| *t).find(|t| t > at))
            .unwrap_or(Millis::MAX);
        out.by_rep.entry(rep).or_default().push((*at, next));
    }
    for (user, at) in &r.dropped_notifications {
        let Some(rep) = by_user(user) else {
            continue;
        };
        let read = r
            .graph_requests
            .iter()
            .filter(|q| q.at_ms >= *at && q.answered_ok() && q.about.contains(user.as_str()))
            .map(|q| q.at_ms + q.delayed_ms.unwrap_or(0))
            .min();
        let notified = r
            .notifications
            .iter()
            .filter(|(u, t)| u == user && t > at)
            .map(|(_, t)| *t)
            .min();
        let until = read
            .into_iter()
            .chain(notified)
            .min()
            .unwrap_or(Millis::MAX);
        out.by_rep.entry(rep).or_default().push((*at, until));
    }
    // Whom a request was for: D365's names its agent, Graph's mentions users in its path or
    // body (a batch read, many).
    let agents: HashMap<&str, usize> = r
        .reps
        .iter()
        .enumerate()
        .filter(|(_, (agent, _))| !agent.is_empty())
        .map(|(rep, (agent, _))| (agent.as_str(), rep))
        .collect();
    let about = |q: &Request, graph: bool| -> Vec<usize> {
        match graph {
            false => agents.get(q.about.as_str()).copied().into_iter().collect(),
            true => r
                .reps
                .iter()
                .enumerate()
                .filter(|(_, (_, user))| !user.is_empty() && q.about.contains(user.as_str()))
                .map(|(rep, _)| rep)
                .collect(),
        }
    };
    let requests = r
        .d365_requests
        .iter()
        .map(|q| (q, false))
        .chain(r.graph_requests.iter().map(|q| (q, true)));
    for (q, graph) in requests {
        if q.answered_ok() && q.delayed_ms.is_none() {
            continue;
        }
        let window = (
            q.at_ms,
            q.at_ms + q.retry_after_ms.unwrap_or(0) + q.delayed_ms.unwrap_or(0),
        );
        if q.status == 429 {
            out.everyone.push(window);
        }
        for rep in about(q, graph) {
            out.by_rep.entry(rep).or_default().push(window);
        }
    }
    out
}

/// Every offer of D365's router against the truth: `routable` is the router's list; `outages`
/// the times no instance of presync was up (from a kill to the restarted one's readiness).
pub fn offers(
    r: &Records,
    truth: &Truth,
    routable: &[Availability],
    reaction_ms: i64,
    outages: &[(Millis, Millis)],
) -> Offers {
    let by_agent = |agent: &str| r.reps.iter().position(|(a, _)| a == agent);
    // When D365 last became routable, per representative: its changes in order.
    let mut changes: HashMap<usize, Vec<(Millis, Availability)>> = HashMap::new();
    for (agent, at, base) in &r.d365_changes {
        if let Some(rep) = by_agent(agent) {
            changes.entry(rep).or_default().push((*at, *base));
        }
    }
    let became_routable = |rep: usize, t: Millis| {
        let line = changes.get(&rep).map_or(&[][..], Vec::as_slice);
        let before = line.partition_point(|(at, _)| *at <= t);
        line[..before]
            .iter()
            .rev()
            .take_while(|(_, a)| routable.contains(a))
            .last()
            .map(|(at, _)| *at)
    };
    let refused = refusals(r, &changes);
    let mut out = Offers::default();
    for (agent, at) in &r.offers {
        let at = *at;
        out.offered += 1;
        let Some(rep) = by_agent(agent) else {
            continue;
        };
        let Some(since) = truth.reps[rep]
            .d365
            .true_since(at, |a| a.all(|a| !routable.contains(a)))
        else {
            continue;
        };
        let unroutable_since = since;
        let since = since.max(became_routable(rep, at).unwrap_or(since));
        if at - since <= reaction_ms {
            continue;
        }
        // A Teams change made them unroutable: presync can act once it can know of it.
        let known = truth.reps[rep].known_at(unroutable_since);
        if known.is_some_and(|k| at - k <= reaction_ms) {
            out.before_presync_could_know.push((rep, at, since));
            continue;
        }
        // A refusal whose wait overlaps the time the representative should have been
        // unroutable (D365 may have gone routable again by itself meanwhile), and ended less
        // than the reaction time before the offer.
        let blocked = |(from, until): &(Millis, Millis)| {
            *from <= at && *until >= unroutable_since && until.saturating_add(reaction_ms) >= at
        };
        let was_refused = refused.everyone.iter().any(blocked)
            || refused
                .by_rep
                .get(&rep)
                .is_some_and(|r| r.iter().any(blocked));
        let unseen = outages.iter().any(|(down, up)| {
            (*down..=*up).contains(&since) && at <= up + reaction_ms + CATCH_UP_MS
        });
        if was_refused {
            out.while_refused.push((rep, at, since));
        } else if unseen {
            out.while_presync_was_down.push((rep, at, since));
        } else {
            out.while_unavailable.push((rep, at, since));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::replay::RepTruth;
    use crate::truth::timeline::Allowed;
    use crate::truth::{Rules, Timeline};
    use Availability::*;

    const AGENT: &str = "agent-1";
    const USER: &str = "user-1";

    /// One representative whom the truth makes unroutable (a meeting: held at Do not disturb)
    /// at 10_000, and D365's router offering them work at 12_500.
    fn meeting() -> (Records, Truth) {
        let mut d365 = Timeline::new(0, Allowed::one(Available));
        d365.set(10_000, Allowed::one(DoNotDisturb));
        let rep = RepTruth {
            d365,
            session: Timeline::new(0, Allowed::one(None)),
            held: Timeline::new(0, false),
            canonical: Timeline::new(0, Allowed::one(Available)),
            genuine: (0, 0),
            ambiguous: 0,
            learnt: vec![(10_000, 10_000)],
        };
        let records = Records {
            reps: vec![(AGENT.into(), USER.into())],
            d365_changes: vec![(AGENT.into(), 0, Available)],
            offers: vec![(AGENT.into(), 12_500)],
            ..Records::default()
        };
        let truth = Truth {
            reps: vec![rep],
            rules: Rules::default(),
        };
        (records, truth)
    }

    fn check(r: &Records, truth: &Truth, outages: &[(Millis, Millis)]) -> (usize, usize, usize) {
        let o = offers(r, truth, &[Available, Busy], 1_000, outages);
        (
            o.while_unavailable.len(),
            o.while_refused.len(),
            o.while_presync_was_down.len(),
        )
    }

    #[test]
    fn an_offer_long_after_the_person_became_unroutable_counts_against_presync() {
        let (r, truth) = meeting();
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
        // Within the reaction time, it does not count.
        let mut soon = r.clone();
        soon.offers = vec![(AGENT.into(), 10_900)];
        assert_eq!(check(&soon, &truth, &[]), (0, 0, 0));
    }

    #[test]
    fn an_offer_before_presync_could_know_of_the_teams_change_is_counted_apart() {
        let (r, mut truth) = meeting();
        // Graph delivered the meeting's notification 2 s late.
        truth.reps[0].learnt = vec![(10_000, 12_000)];
        let o = offers(&r, &truth, &[Available, Busy], 1_000, &[]);
        assert_eq!(o.before_presync_could_know.len(), 1);
        assert_eq!(o.while_unavailable.len(), 0);
        // Known at once: presync had the time.
        truth.reps[0].learnt = vec![(10_000, 10_050)];
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
    }

    #[test]
    fn an_offer_before_presync_could_hear_of_a_dropped_notification_is_counted_apart() {
        let (mut r, truth) = meeting();
        r.dropped_notifications = vec![(USER.into(), 10_001)];
        // presync's next read of the person is answered after the offer.
        r.graph_requests = vec![Request {
            at_ms: 13_000,
            status: 200,
            about: format!("/communications/getpresencesbyuserid {{\"ids\":[\"{USER}\"]}}"),
            ..Request::default()
        }];
        assert_eq!(check(&r, &truth, &[]), (0, 1, 0));
        // Once read (or notified) before the offer, presync knew: it counts against it.
        r.graph_requests[0].at_ms = 11_000;
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
        r.graph_requests.clear();
        r.notifications = vec![(USER.into(), 11_000)];
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
        // Another person's read tells presync nothing of this one.
        r.notifications.clear();
        r.graph_requests = vec![Request {
            at_ms: 11_000,
            status: 200,
            about: "/communications/getpresencesbyuserid {\"ids\":[\"user-2\"]}".into(),
            ..Request::default()
        }];
        assert_eq!(check(&r, &truth, &[]), (0, 1, 0));
    }

    #[test]
    fn an_offer_after_a_dropped_d365_webhook_is_counted_apart_until_the_next_change() {
        let (mut r, truth) = meeting();
        r.dropped_webhooks = vec![(AGENT.into(), 10_000)];
        assert_eq!(check(&r, &truth, &[]), (0, 1, 0));
        // A later change of the agent's in D365 brought presync up to date before the offer.
        r.d365_changes.push((AGENT.into(), 11_000, DoNotDisturb));
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
    }

    #[test]
    fn an_offer_while_presync_was_down_is_counted_apart_until_it_caught_up() {
        let (r, truth) = meeting();
        assert_eq!(check(&r, &truth, &[(9_000, 11_000)]), (0, 0, 1));
        // Down and back long before the person became unroutable: presync's doing.
        assert_eq!(check(&r, &truth, &[(1_000, 2_000)]), (1, 0, 0));
        // An offer past the catch-up time after the restart counts against presync.
        let mut late = r.clone();
        late.offers = vec![(AGENT.into(), 11_000 + 1_000 + CATCH_UP_MS + 1)];
        assert_eq!(check(&late, &truth, &[(9_000, 11_000)]), (1, 0, 0));
    }

    #[test]
    fn an_offer_while_a_service_rate_limited_presync_is_counted_apart() {
        let (mut r, truth) = meeting();
        r.d365_requests = vec![Request {
            at_ms: 10_100,
            status: 429,
            retry_after_ms: Some(3_000),
            ..Request::default()
        }];
        assert_eq!(check(&r, &truth, &[]), (0, 1, 0));
        // A refused write for another agent keeps presync from nothing of this one's.
        r.d365_requests[0].status = 500;
        r.d365_requests[0].about = "agent-2".into();
        assert_eq!(check(&r, &truth, &[]), (1, 0, 0));
    }
}
