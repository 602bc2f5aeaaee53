//! The simulator's router (which agents a workstream offers work to, dataverse.md §2.3) and its
//! record of every presence change with its cause.
#![allow(clippy::unwrap_used)]

mod sim_support;

use presync_dataverse::mapping::{builtin, BaseStatus, PresenceEntry};
use presync_dataverse::sim::{ChangeCause, SystemReason};
use presync_engine::Availability;
use sim_support::*;

#[tokio::test]
async fn the_router_offers_only_to_signed_in_agents_with_capacity_in_a_routable_status() {
    let env = start(|_| {}).await;
    assert!(env.sim.routable(ANN), "signed in, Available, capacity free");
    assert!(!env.sim.routable(BOB), "signed out");
    assert!(!env.sim.offer(BOB));

    env.sim.accept(ANN).unwrap();
    assert!(env.sim.routable(ANN), "Busy is routable by default");
    env.sim.accept(ANN).unwrap();
    assert!(!env.sim.routable(ANN), "no capacity left (and Busy - DND)");
    env.sim.close(ANN).unwrap();
    env.sim.close(ANN).unwrap();

    env.sim.agent_sets(ANN, builtin::AWAY).unwrap();
    assert!(!env.sim.routable(ANN), "Away is not in the list");
    env.sim.agent_sets(ANN, builtin::AVAILABLE).unwrap();
    env.sim.disconnect(ANN).unwrap();
    assert!(!env.sim.routable(ANN), "disconnected");
    env.sim.reconnect(ANN).unwrap();
    assert!(env.sim.offer(ANN));
    let offers = env.sim.offers();
    assert_eq!(offers.len(), 1, "refused offers are not recorded");
    assert_eq!(offers[0].agent_id, ANN);
    assert_eq!(offers[0].presence_id, builtin::AVAILABLE);
    assert_eq!(offers[0].base, Availability::Available);
    assert_eq!(
        env.sim.capacity(ANN),
        Some((100, 0)),
        "an offer is not an accept"
    );
}

#[tokio::test]
async fn busy_is_not_routable_when_the_workstream_allows_only_available() {
    let env = start(|c| c.routable = vec![Availability::Available]).await;
    assert!(env.sim.routable(ANN));
    env.sim.accept(ANN).unwrap();
    assert_eq!(env.sim.presence(ANN).as_deref(), Some(builtin::BUSY));
    assert!(!env.sim.routable(ANN));
    assert!(!env.sim.offer(ANN));
    assert_eq!(env.sim.route_next(), None);
}

#[tokio::test]
async fn routing_follows_the_base_status_of_a_custom_presence() {
    let env = start(|_| {}).await;
    let looks_available = "11111111-0000-4000-8000-00000000aaaa";
    env.sim.add_custom_presence(PresenceEntry {
        id: looks_available.into(),
        name: "Ready (offline)".into(),
        text: "Ready".into(),
        base: BaseStatus::Offline,
    });
    env.sim.agent_sets(ANN, looks_available).unwrap();
    assert!(!env.sim.routable(ANN), "its base status is Offline");
}

#[tokio::test]
async fn route_next_offers_to_the_agent_offered_least_recently_and_records_it() {
    let env = start(|_| {}).await;
    env.sim.sign_in(BOB, builtin::AVAILABLE).unwrap();
    let order: Vec<_> = (0..3).map(|_| env.sim.route_next().unwrap()).collect();
    assert_eq!(
        order,
        [ANN, BOB, ANN],
        "ties by id, then least recently offered"
    );
    let offers = env.sim.offers();
    assert_eq!(
        offers
            .iter()
            .map(|o| o.agent_id.as_str())
            .collect::<Vec<_>>(),
        [ANN, BOB, ANN]
    );
    assert!(offers.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert_eq!(env.sim.offers_to(BOB).len(), 1);

    env.sim.agent_sets(ANN, builtin::BUSY_DND).unwrap();
    assert_eq!(env.sim.route_next().as_deref(), Some(BOB));
    assert_eq!(env.sim.route_next().as_deref(), Some(BOB), "only Bob left");
    env.sim.sign_out(BOB).unwrap();
    assert_eq!(env.sim.route_next(), None);
    assert_eq!(env.sim.offers().len(), 5);
}

#[tokio::test]
async fn changes_record_who_made_each_presence_change() {
    let env = start(|_| {}).await;
    let token = env.token().await;
    let from = env.sim.changes().len();

    env.sim.agent_sets(ANN, builtin::AVAILABLE).unwrap();
    env.sim.accept(ANN).unwrap();
    env.sim.system_sets(ANN, builtin::AWAY).unwrap();
    let (status, _) = env
        .modify(
            &token,
            Some(("MSCRMCallerID", SUE)),
            modify_body(ANN, builtin::BUSY_DND),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = env
        .modify(&token, None, modify_body(ANN, builtin::BUSY))
        .await;
    assert_eq!(status, 200);
    env.sim.disconnect(ANN).unwrap();
    env.sim.reconnect(ANN).unwrap();
    env.sim.sign_out(ANN).unwrap();
    env.sim.sign_in(ANN, builtin::AVAILABLE).unwrap();

    let changes = env.sim.changes()[from..].to_vec();
    let seen: Vec<_> = changes
        .iter()
        .map(|c| (c.presence_id.as_str(), c.base, c.cause.clone()))
        .collect();
    let system = |r| ChangeCause::System(r);
    assert_eq!(
        seen,
        [
            (
                builtin::AVAILABLE,
                Availability::Available,
                ChangeCause::Agent
            ),
            (
                builtin::BUSY,
                Availability::Busy,
                system(SystemReason::Recalculated)
            ),
            (
                builtin::AWAY,
                Availability::Away,
                system(SystemReason::Other)
            ),
            (
                builtin::BUSY_DND,
                Availability::DoNotDisturb,
                ChangeCause::Api {
                    caller: SUE.to_owned()
                }
            ),
            (
                builtin::BUSY,
                Availability::Busy,
                ChangeCause::Api {
                    caller: "app".to_owned()
                }
            ),
            (
                builtin::OFFLINE,
                Availability::Offline,
                system(SystemReason::Disconnected)
            ),
            (
                builtin::BUSY,
                Availability::Busy,
                system(SystemReason::Restored)
            ),
            (
                builtin::OFFLINE,
                Availability::Offline,
                system(SystemReason::SignedOut)
            ),
            (
                builtin::AVAILABLE,
                Availability::Available,
                system(SystemReason::SignedIn)
            ),
        ]
    );
    assert!(changes.iter().all(|c| c.agent_id == ANN));
    assert!(changes.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert_eq!(
        changes.last().unwrap().at_ms,
        env.sim.row(ANN).unwrap().modified_on_ms
    );
    let genuine = changes.iter().filter(|c| c.cause.is_genuine()).count();
    assert_eq!(
        genuine,
        changes.len() - 2,
        "the two API writes are presync's"
    );
}

/// Changes made faster than the clock ticks are stamped a millisecond apart, past the wall
/// clock; an offer after them saw the last one, and is stamped no earlier (the soak flagged
/// an offer recorded a millisecond before the restore that made the agent routable).
#[tokio::test]
async fn an_offer_is_stamped_no_earlier_than_the_change_it_saw() {
    let env = start(|_| {}).await;
    for _ in 0..50 {
        env.sim.agent_sets(ANN, builtin::AWAY).unwrap();
        env.sim.agent_sets(ANN, builtin::AVAILABLE).unwrap();
    }
    assert!(env.sim.offer(ANN));
    let last = env
        .sim
        .changes()
        .into_iter()
        .filter(|c| c.agent_id == ANN)
        .map(|c| c.at_ms)
        .max()
        .unwrap();
    let offer = env.sim.offers()[0].at_ms;
    assert!(offer >= last, "offer at {offer}, last change at {last}");
}
