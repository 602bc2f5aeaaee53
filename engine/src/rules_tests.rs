//! Unit tests of the conflict rules: one per rule and per hard case of DESIGN.md.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::config::{DebounceOffline, ManualWins, Remap, UndatedChanges};
use crate::connector::Connector;
use crate::memory::MemorySystem;
use crate::model::{NativeState, WrittenState};
use crate::topology::{EdgeSpec, TopologyConfig};
use Availability::*;

const D365: &str = "d365";
const TEAMS: &str = "teams";
const T0: Millis = 1_000_000;

fn topology() -> Topology {
    let clock = Arc::new(ManualClock::new(T0));
    let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert(
        D365.into(),
        MemorySystem::new(D365, clock.clone()).connector(),
    );
    connectors.insert(
        TEAMS.into(),
        MemorySystem::new(TEAMS, clock)
            .with_semantics(WriteSemantics::Contribution)
            .connector(),
    );
    Topology::build(&TopologyConfig::full_mesh(&connectors), &connectors).unwrap()
}

/// The same two systems, with Teams dating nothing (as the real one): the engine dates its states
/// by when it reads them.
fn untimed_topology() -> Topology {
    let clock = Arc::new(ManualClock::new(T0));
    let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert(
        D365.into(),
        MemorySystem::new(D365, clock.clone()).connector(),
    );
    connectors.insert(
        TEAMS.into(),
        MemorySystem::new(TEAMS, clock)
            .with_semantics(WriteSemantics::Contribution)
            .without_timestamps()
            .connector(),
    );
    Topology::build(&TopologyConfig::full_mesh(&connectors), &connectors).unwrap()
}

fn decide_untimed(o: &Observation, v: &RepView) -> Decision {
    decide_untimed_with(o, v, &RulesConfig::default())
}

fn decide_untimed_with(o: &Observation, v: &RepView, cfg: &RulesConfig) -> Decision {
    let topo = untimed_topology();
    let a = remap(cfg, o, o.native.code.parse().unwrap_or(Offline));
    decide(o, a, v, Context::new(&topo, cfg, o.observed_at))
}

fn written(a: Option<Availability>, version: i64, at: Millis) -> WrittenState {
    WrittenState {
        availability: a,
        version,
        written_at: at,
    }
}

fn view() -> RepView {
    let mut v = RepView::default();
    v.external_ids.insert(D365.into(), "agent-1".into());
    v.external_ids.insert(TEAMS.into(), "aad-1".into());
    v
}

/// An event of `system` (D365 or Teams) setting `a` at `source_time`; other tests use it too.
pub(crate) fn obs(system: &str, a: Availability, source_time: Millis) -> Observation {
    Observation {
        system: system.into(),
        external_id: if system == D365 { "agent-1" } else { "aad-1" }.into(),
        native: NativeState::new(a.as_str()),
        source_time,
        sequence: None,
        origin: Origin::Automatic,
        kind: ObservationKind::Event,
        delivery_key: format!("{system}-{source_time}"),
        observed_at: source_time,
        changed_by: None,
        automatic: None,
    }
}

fn presence(system: &str, a: Availability, t: Millis, version: i64) -> Presence {
    Presence {
        availability: a,
        native: NativeState::new(a.as_str()),
        source: system.into(),
        source_time: t,
        origin: Origin::Automatic,
        observed_at: t,
        version,
    }
}

pub(crate) fn observed(a: Availability, t: Millis) -> ObservedState {
    ObservedState {
        availability: a,
        native: NativeState::new(a.as_str()),
        source_time: t,
        sequence: None,
        observed_at: t,
        genuine_time: Some(t),
        genuine_sequence: None,
        by_presync: false,
        automatic: None,
        own: None,
    }
}

/// The untimed two systems, and the native pair presync writes to Teams per availability,
/// for the contribution rules (a context borrowed for the whole test binary).
pub(crate) fn contribution_ctx(now: Millis) -> Context<'static> {
    use std::sync::LazyLock;
    static TOPOLOGY: LazyLock<Topology> = LazyLock::new(untimed_topology);
    static CONFIG: LazyLock<RulesConfig> = LazyLock::new(RulesConfig::default);
    static NATIVES: LazyLock<NativeTable> = LazyLock::new(teams_natives);
    Context {
        natives: &NATIVES,
        ..Context::new(&TOPOLOGY, &CONFIG, now)
    }
}

/// Teams' session pairs, as presync writes them.
fn teams_natives() -> NativeTable {
    let pairs = [
        (Available, "Available/Available"),
        (Busy, "Busy/InACall"),
        (DoNotDisturb, "DoNotDisturb/Presenting"),
        (Away, "Away/Away"),
    ];
    let table = pairs.into_iter().map(|(a, p)| (a, p.to_owned())).collect();
    [(TEAMS.into(), table)].into_iter().collect()
}

/// A representative whose Teams aggregate was last seen at `t`, showing what presync wrote
/// there at `t`: `contribution` (`None`: withdrawn).
pub(crate) fn teams_view(contribution: Option<Availability>, t: Millis) -> RepView {
    let mut v = view();
    let shown = contribution.unwrap_or(Available);
    v.systems.insert(
        TEAMS.into(),
        SystemState {
            observed: Some(observed(shown, t)),
            written: Some(written(contribution, 1, t)),
        },
    );
    v
}

fn expectation(id: i64, system: &str, a: Availability, completed: Option<Millis>) -> Expectation {
    Expectation {
        id,
        system: system.into(),
        availability: a,
        version: 1,
        opened_at: T0,
        completed_at: completed,
        expires_at: T0 + 600_000,
        superseded: false,
    }
}

/// A bulk read at `read_at` of a state the system set at `set_at`.
fn reconcile_read(system: &str, a: Availability, set_at: Millis, read_at: Millis) -> Observation {
    let mut o = obs(system, a, set_at);
    o.observed_at = read_at;
    o.kind = ObservationKind::Reconcile;
    o
}

#[test]
fn a_reconcile_read_of_the_same_state_set_again_is_a_missed_change() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0 + 10, 2));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Busy, T0));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 + 10));
    // Teams went Busy -> (lost) -> Busy again at T0+20: newer than the canonical state.
    let d = decide_default(&reconcile_read(TEAMS, Busy, T0 + 20, T0 + 100), &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
}

fn run(o: &Observation, v: &RepView, cfg: &RulesConfig, now: Millis) -> Decision {
    let topo = topology();
    let a = remap(cfg, o, o.native.code.parse().unwrap_or(Offline));
    decide(o, a, v, Context::new(&topo, cfg, now))
}

fn decide_default(o: &Observation, v: &RepView) -> Decision {
    run(o, v, &RulesConfig::default(), o.observed_at)
}

fn upserts(d: &Decision) -> Vec<(String, Option<Availability>)> {
    d.outbox
        .iter()
        .filter_map(|op| match op {
            OutboxOp::Upsert { target, desired } => {
                Some((target.to_string(), desired.availability()))
            }
            OutboxOp::Cancel { .. } => None,
        })
        .collect()
}

/// Apply a decision to a view the way the store does, for multi-step scenarios.
fn fold(v: &mut RepView, o: &Observation, d: &Decision) {
    if let Some(obs) = &d.observed {
        v.systems.entry(o.system.clone()).or_default().observed = Some(obs.clone());
    }
    if let Some(c) = &d.canonical {
        v.canonical = Some(c.clone());
    }
    v.expectations
        .retain(|e| !d.close_expectations.contains(&e.id));
    for e in &mut v.expectations {
        e.superseded |= d.supersede_expectations.contains(&e.id);
    }
}

#[test]
fn first_observation_becomes_canonical_and_is_written_to_the_other_system() {
    let d = decide_default(&obs(D365, Busy, T0), &view());
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(d.outcome, Outcome::Applied);
    assert_eq!(d.canonical.as_ref().unwrap().version, 1);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(Busy))]);
}

#[test]
fn echo_of_our_own_write_is_not_propagated() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.expectations
        .push(expectation(7, TEAMS, Busy, Some(T0 + 10)));
    let d = decide_default(&obs(TEAMS, Busy, T0 + 20), &v);
    assert_eq!(d.rule, Rule::Echo);
    assert!(d.outbox.is_empty());
    assert!(d.canonical.is_none());
    assert_eq!(
        d.supersede_expectations,
        vec![7],
        "kept for a redelivery of the same echo"
    );
    assert_eq!(d.observed.unwrap().availability, Busy);
}

#[test]
fn echo_is_matched_at_the_canonical_level_not_the_native_one() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.expectations.push(expectation(1, TEAMS, Busy, None));
    let mut o = obs(TEAMS, Busy, T0 + 5);
    o.native = NativeState::new("Busy"); // presync wrote Busy/InACall; Teams echoes Busy/Busy
    let cfg = RulesConfig::default();
    let topo = topology();
    let d = decide(&o, Busy, &v, Context::new(&topo, &cfg, T0 + 5));
    assert_eq!(d.rule, Rule::Echo);
}

#[test]
fn an_echo_closes_older_expectations_of_the_same_system_only() {
    let mut v = view();
    v.canonical = Some(presence(D365, Away, T0, 2));
    v.expectations.push(expectation(1, TEAMS, Busy, Some(T0)));
    v.expectations.push(expectation(2, TEAMS, Away, Some(T0)));
    v.expectations.push(expectation(3, D365, Away, None));
    let d = decide_default(&obs(TEAMS, Away, T0 + 5), &v);
    assert_eq!(d.rule, Rule::Echo);
    assert_eq!(d.supersede_expectations, vec![1, 2]);
}

#[test]
fn a_late_echo_of_a_superseded_write_is_dropped() {
    // presync wrote Busy (landing at T0+10), then Away (T0+31); Away's echo came first. Busy's
    // echo then arrives late: it must not count as a change of the person's.
    let mut v = view();
    v.canonical = Some(presence(D365, Away, T0 + 8, 2));
    let mut busy = expectation(1, TEAMS, Busy, Some(T0 + 10));
    busy.superseded = true;
    v.expectations.push(busy);
    let mut away_echo = observed(Away, T0 + 31);
    away_echo.genuine_time = None;
    v.systems.entry(TEAMS.into()).or_default().observed = Some(away_echo);
    let d = decide_default(&obs(TEAMS, Busy, T0 + 10), &v);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert_eq!(d.outcome, Outcome::Dropped);
    assert!(d.outbox.is_empty());
    // The same state set by the person after the newer write landed is theirs, not a late echo.
    let d = decide_default(&obs(TEAMS, Busy, T0 + 40), &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
}

#[test]
fn a_state_long_after_a_write_is_not_its_echo() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.expectations
        .push(expectation(1, TEAMS, Available, Some(T0 + 10)));
    let d = decide_default(&obs(TEAMS, Available, T0 + 10 * 60_000), &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
}

#[test]
fn a_stale_observation_is_never_taken_for_an_echo() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0 + 50, 2));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Away, T0 + 40));
    v.expectations.push(expectation(1, TEAMS, Busy, None));
    let d = decide_default(&obs(TEAMS, Busy, T0 + 30), &v);
    assert_eq!(d.rule, Rule::Stale);
    assert!(d.close_expectations.is_empty());
}

#[test]
fn expired_expectation_does_not_suppress_and_is_cleaned_up() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    let mut e = expectation(4, TEAMS, Available, Some(T0));
    e.expires_at = T0 + 10;
    v.expectations.push(e);
    let d = decide_default(&obs(TEAMS, Available, T0 + 20), &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(d.close_expectations, vec![4]);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Available))]);
}

#[test]
fn a_different_state_after_our_write_landed_closes_its_expectation() {
    // presync wrote Available to Teams; the person was in a meeting (Busy), then the meeting
    // ended and Teams shows Available. That Available is the person's, not an echo.
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0, 3));
    v.expectations
        .push(expectation(9, TEAMS, Available, Some(T0 + 5)));
    let meeting = obs(TEAMS, Busy, T0 + 10);
    let d = decide_default(&meeting, &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(d.supersede_expectations, vec![9]);
    fold(&mut v, &meeting, &d);
    let ended = obs(TEAMS, Available, T0 + 30 * 60_000);
    let d = decide_default(&ended, &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(
        upserts(&d).first(),
        Some(&(D365.to_string(), Some(Available)))
    );
}

#[test]
fn an_in_flight_write_keeps_its_expectation_when_the_target_reports_something_else() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 2));
    v.expectations.push(expectation(5, D365, Busy, None));
    let d = decide_default(&obs(D365, Away, T0 + 10), &v);
    assert!(!d.close_expectations.contains(&5));
}

#[test]
fn an_older_sequence_is_dropped_as_stale() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    let mut prev = observed(Busy, T0);
    prev.sequence = Some(10);
    prev.genuine_sequence = Some(10);
    v.systems.entry(D365.into()).or_default().observed = Some(prev);
    let mut o = obs(D365, Available, T0 + 100);
    o.sequence = Some(9);
    let d = decide_default(&o, &v);
    assert_eq!(d.rule, Rule::Stale);
    assert!(d.outbox.is_empty() && d.observed.is_none());
}

#[test]
fn an_older_source_time_is_dropped_as_stale_when_there_is_no_sequence() {
    let mut v = view();
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Busy, T0 + 10));
    let d = decide_default(&obs(D365, Available, T0 + 5), &v);
    assert_eq!(d.rule, Rule::Stale);
}

#[test]
fn the_same_state_at_the_same_time_is_a_duplicate() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Busy, T0));
    let d = decide_default(&obs(D365, Busy, T0), &v);
    assert_eq!(d.rule, Rule::Duplicate);
    assert_eq!(d.outcome, Outcome::Dropped);
}

#[test]
fn a_newer_observation_wins_and_is_never_written_back_to_its_source() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    let d = decide_default(&obs(D365, Available, T0 + 1), &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    let targets: Vec<_> = upserts(&d).into_iter().map(|(t, _)| t).collect();
    assert_eq!(targets, vec![TEAMS.to_string()]);
    assert_eq!(d.canonical.unwrap().version, 2);
}

#[test]
fn an_older_observation_from_a_target_already_sent_the_canonical_state_is_superseded() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0 + 10, 1));
    v.systems.entry(D365.into()).or_default().written = Some(WrittenState {
        availability: Some(Busy),
        version: 1,
        written_at: T0 + 11,
    });
    let d = decide_default(&obs(D365, Available, T0 + 5), &v);
    assert_eq!(d.rule, Rule::Superseded);
    assert!(d.outbox.is_empty() && d.canonical.is_none());
    assert_eq!(d.observed.unwrap().availability, Available);
}

#[test]
fn an_older_observation_from_a_target_never_sent_the_canonical_state_is_repaired() {
    // The write to D365 was cancelled when D365 seemed to agree; then D365's older change
    // arrived: it shows something stale and nothing is on its way there.
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0 + 10, 1));
    let d = decide_default(&obs(D365, Available, T0 + 5), &v);
    assert_eq!(d.rule, Rule::Drift, "{}", d.detail);
    assert!(d.canonical.is_none());
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Busy))]);
}

#[test]
fn equal_timestamps_are_broken_by_the_configured_system_priority() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    let mut cfg = RulesConfig::default();
    cfg.system_priority = vec![D365.into(), TEAMS.into()];
    let d = run(&obs(D365, Available, T0), &v, &cfg, T0);
    assert_eq!(d.rule, Rule::LastWriterWins);
    cfg.system_priority = vec![TEAMS.into(), D365.into()];
    let d = run(&obs(D365, Available, T0), &v, &cfg, T0);
    assert_ne!(d.rule, Rule::LastWriterWins);
    assert!(d.canonical.is_none());
}

#[test]
fn agreement_advances_the_timestamp_without_writes() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 4));
    let d = decide_default(&obs(TEAMS, Busy, T0 + 30), &v);
    assert_eq!(d.rule, Rule::Agree);
    let c = d.canonical.unwrap();
    assert_eq!(
        (c.version, c.source_time, c.source.as_str()),
        (4, T0 + 30, TEAMS)
    );
    assert!(d.outbox.is_empty());
}

#[test]
fn a_source_time_from_the_future_is_clamped_by_the_skew_bound() {
    let v = view();
    let mut o = obs(D365, Busy, T0 + 3_600_000);
    o.observed_at = T0;
    let d = decide_default(&o, &v);
    let cfg = RulesConfig::default();
    assert_eq!(d.canonical.unwrap().source_time, T0 + cfg.max_clock_skew_ms);
}

#[test]
fn a_reconcile_read_equal_to_the_last_observation_is_unchanged() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Busy, T0));
    let mut o = reconcile_read(TEAMS, Busy, T0, T0 + 100);
    o.kind = ObservationKind::Reconcile;
    let d = decide_default(&o, &v);
    assert_eq!(d.rule, Rule::Unchanged);
    assert!(d.outbox.is_empty());
}

#[test]
fn a_reconcile_read_finds_a_lost_write_and_queues_a_repair() {
    // D365 became Busy; presync's write to Teams never landed, so Teams still shows what it
    // showed before. Teams did not change: the read is drift, not a newer Teams state.
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0 + 10, 2));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Available, T0));
    let mut o = reconcile_read(TEAMS, Available, T0, T0 + 100);
    o.kind = ObservationKind::Reconcile;
    let d = decide_default(&o, &v);
    assert_eq!(d.rule, Rule::Drift, "{}", d.detail);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(Busy))]);
}

#[test]
fn a_reconcile_read_does_not_repair_while_a_write_is_on_its_way() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0 + 10, 2));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Available, T0));
    v.outbox.insert(
        TEAMS.into(),
        PendingWrite {
            availability: Some(Busy),
            in_flight: true,
        },
    );
    let mut o = reconcile_read(TEAMS, Available, T0, T0 + 100);
    o.kind = ObservationKind::Reconcile;
    assert_eq!(decide_default(&o, &v).rule, Rule::Unchanged);
    v.outbox.clear();
    v.expectations.push(expectation(3, TEAMS, Busy, None));
    assert_eq!(decide_default(&o, &v).rule, Rule::Unchanged);
    // A write that completed long ago and did not stick is no reason to wait.
    v.expectations = vec![expectation(3, TEAMS, Offline, Some(T0 + 20))];
    assert_eq!(decide_default(&o, &v).rule, Rule::Drift);
}

#[test]
fn a_reconcile_read_of_a_missed_change_is_applied() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0, 1));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Available, T0));
    let mut o = obs(D365, Busy, T0 + 50);
    o.kind = ObservationKind::Reconcile;
    let d = decide_default(&o, &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(Busy))]);
}

/// Found by the soak: the person cleared DND in Teams (the notification was lost), then set DND
/// in D365, which agreed with the canonical state. The reconcile's read of Teams, dated by the
/// read, put the older Teams change after the D365 one and overwrote the person's D365 DND.
#[test]
fn a_missed_undated_change_does_not_overwrite_a_dated_change_made_after_the_last_sight() {
    let mut v = view();
    // Teams was last seen DoNotDisturb at T0; D365 set DoNotDisturb at T0 + 50.
    v.canonical = Some(presence(D365, DoNotDisturb, T0 + 50, 3));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(DoNotDisturb, T0));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(DoNotDisturb, T0 + 50));
    // Teams changed at some time after T0: the read at T0 + 1000 cannot tell when.
    let o = reconcile_read(TEAMS, Available, T0 + 1_000, T0 + 1_000);
    let d = decide_untimed(&o, &v);
    assert_eq!(d.rule, Rule::Drift, "{}", d.detail);
    assert!(d.detail.contains("unknown time"), "{}", d.detail);
    assert!(d.canonical.is_none(), "{}", d.detail);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(DoNotDisturb))]);
    assert_eq!(
        d.observed.as_ref().map(|o| o.availability),
        Some(Available),
        "what Teams shows is recorded"
    );

    // With the read's time deciding, the Teams change wins (the behaviour before the policy).
    let mut cfg = RulesConfig::default();
    cfg.undated_changes = UndatedChanges::ReadTime;
    let d = decide_untimed_with(&o, &v, &cfg);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Available))]);

    // A notification is not a bulk read: it arrives as the change is made, so its time stands.
    let mut event = o.clone();
    event.kind = ObservationKind::Event;
    assert_eq!(decide_untimed(&event, &v).rule, Rule::LastWriterWins);
}

/// Found by the soak: the person cleared DND in Teams, then set DND in D365; the read after
/// Teams' notification failed and was made again after the D365 change. Dated by itself, the
/// read put the Teams change last and overwrote D365's DND; it was set by the time the
/// notification arrived.
#[test]
fn a_late_read_after_a_notification_is_ordered_by_the_notification() {
    let mut v = view();
    v.canonical = Some(presence(D365, DoNotDisturb, T0 + 50, 6));
    let teams = v.systems.entry(TEAMS.into()).or_default();
    teams.observed = Some(observed(DoNotDisturb, T0));
    // presync withdrew its session when the DND came from Teams itself.
    teams.written = Some(written(None, 6, T0 + 5));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(DoNotDisturb, T0 + 50));
    let mut o = obs(TEAMS, Available, T0 + 100);
    o.changed_by = Some(T0 + 20);
    let d = decide_untimed(&o, &v);
    assert_eq!(d.rule, Rule::Drift, "{}", d.detail);
    assert!(d.canonical.is_none());
    // The withdrawal was not the canonical state: Teams is sent it.
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(DoNotDisturb))]);

    // Without the notification's time the read's own decides, as before.
    o.changed_by = None;
    let d = decide_untimed(&o, &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Available))]);
    // A notification after the D365 change: the Teams change is newer.
    o.changed_by = Some(T0 + 60);
    assert_eq!(decide_untimed(&o, &v).rule, Rule::LastWriterWins);
}

#[test]
fn a_missed_undated_change_after_the_last_sight_wins_over_an_older_dated_change() {
    // D365 changed at T0 + 50; Teams was seen after that (T0 + 60) and changed later unseen:
    // the order is known and the Teams change wins.
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0 + 50, 3));
    v.systems.entry(TEAMS.into()).or_default().observed = Some(observed(Busy, T0 + 60));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Busy, T0 + 50));
    let d = decide_untimed(
        &reconcile_read(TEAMS, Available, T0 + 1_000, T0 + 1_000),
        &v,
    );
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Available))]);
}

/// Found by a scenario: Teams was last seen by a poll, whose state has no time of its own
/// (source time 0), after D365's change; the person's status picked after that poll and read by
/// a reconcile pass was taken for a change of unknown time "after 0" and lost to D365's older
/// one. The poll saw Teams when it read it.
#[test]
fn a_poll_is_a_sight_of_the_system_at_its_read() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0 + 50, 3));
    let mut polled = observed(Available, 0);
    polled.observed_at = T0 + 60;
    v.systems.entry(TEAMS.into()).or_default().observed = Some(polled);
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 + 50));
    let d = decide_untimed(
        &reconcile_read(TEAMS, DoNotDisturb, T0 + 1_000, T0 + 1_000),
        &v,
    );
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(DoNotDisturb))]);
}

#[test]
fn a_change_at_a_contribution_system_withdraws_presyncs_contribution_there() {
    // presync holds a Busy session in Teams (from D365). The person sets DND by hand in Teams:
    // the canonical state becomes DND, and presync's stale Busy session is withdrawn so it can
    // never hold the Teams aggregate once the person clears DND.
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 1));
    v.systems.entry(TEAMS.into()).or_default().written = Some(WrittenState {
        availability: Some(Busy),
        version: 1,
        written_at: T0 + 1,
    });
    let d = decide_default(&obs(TEAMS, DoNotDisturb, T0 + 10), &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(
        upserts(&d),
        vec![(D365.into(), Some(DoNotDisturb)), (TEAMS.into(), None)]
    );
}

#[test]
fn sticky_echo_settles_with_the_persons_real_state() {
    // DESIGN.md: the person sets DND in Teams, presync writes DND to D365, D365 echoes DND. If
    // that echo reached Teams, presync's session would hold DND after the person clears it.
    let mut v = view();
    let dnd = obs(TEAMS, DoNotDisturb, T0);
    let d = decide_default(&dnd, &v);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(DoNotDisturb))]);
    fold(&mut v, &dnd, &d);
    v.expectations
        .push(expectation(1, D365, DoNotDisturb, Some(T0 + 5)));

    let echo = obs(D365, DoNotDisturb, T0 + 8);
    let d = decide_default(&echo, &v);
    assert_eq!(d.rule, Rule::Echo);
    assert!(d.outbox.is_empty(), "the echo must not be written to Teams");
    fold(&mut v, &echo, &d);

    let cleared = obs(TEAMS, Available, T0 + 60);
    let d = decide_default(&cleared, &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(Available))]);
    fold(&mut v, &cleared, &d);
    assert_eq!(v.canonical.unwrap().availability, Available);
}

#[test]
fn a_pending_write_to_the_source_is_cancelled_by_its_newer_state() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    v.outbox.insert(
        D365.into(),
        PendingWrite {
            availability: Some(Busy),
            in_flight: false,
        },
    );
    let d = decide_default(&obs(D365, Away, T0 + 10), &v);
    assert!(d.outbox.iter().any(|op| matches!(op,
        OutboxOp::Cancel { target, if_in_flight: Desired::Set(p) } if target.as_str() == D365 && p.availability == Away)));
}

#[test]
fn an_automatic_offline_is_deferred_for_its_grace_window() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0, 1));
    let mut cfg = RulesConfig::default();
    cfg.policies.debounce_offline = vec![DebounceOffline {
        system: D365.into(),
        grace_ms: 150_000,
    }];
    let o = obs(D365, Offline, T0 + 10);
    let d = run(&o, &v, &cfg, T0 + 10);
    assert_eq!(d.rule, Rule::Deferred);
    assert_eq!(d.defer_until, Some(T0 + 10 + 150_000));
    assert!(d.observed.is_none() && d.outbox.is_empty());
}

#[test]
fn an_offline_superseded_within_its_grace_window_is_debounced() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0, 1));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 + 60_000));
    let mut cfg = RulesConfig::default();
    cfg.policies.debounce_offline = vec![DebounceOffline {
        system: D365.into(),
        grace_ms: 150_000,
    }];
    let d = run(&obs(D365, Offline, T0 + 10), &v, &cfg, T0 + 200_000);
    assert_eq!(d.rule, Rule::Debounced);
    assert!(d.outbox.is_empty());
}

#[test]
fn an_offline_that_outlasts_its_grace_window_is_applied() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0, 1));
    let mut cfg = RulesConfig::default();
    cfg.policies.debounce_offline = vec![DebounceOffline {
        system: D365.into(),
        grace_ms: 150_000,
    }];
    let d = run(&obs(D365, Offline, T0 + 10), &v, &cfg, T0 + 200_000);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(Offline))]);
}

#[test]
fn a_manual_state_holds_against_an_automatic_change_and_is_written_back() {
    let mut v = view();
    let mut manual = presence(TEAMS, DoNotDisturb, T0, 3);
    manual.origin = Origin::Manual;
    v.canonical = Some(manual);
    let mut cfg = RulesConfig::default();
    cfg.policies.manual_wins = Some(ManualWins { hold_ms: 3_600_000 });
    let d = run(&obs(D365, Available, T0 + 60_000), &v, &cfg, T0 + 60_000);
    assert_eq!(d.rule, Rule::ManualWins);
    assert_eq!(upserts(&d), vec![(D365.into(), Some(DoNotDisturb))]);
    assert!(d.canonical.is_none());
}

#[test]
fn a_manual_state_never_holds_against_signing_out() {
    let mut v = view();
    let mut manual = presence(TEAMS, DoNotDisturb, T0, 3);
    manual.origin = Origin::Manual;
    v.canonical = Some(manual);
    let mut cfg = RulesConfig::default();
    cfg.policies.manual_wins = Some(ManualWins { hold_ms: 3_600_000 });
    let d = run(&obs(D365, Offline, T0 + 60_000), &v, &cfg, T0 + 60_000);
    assert_eq!(d.rule, Rule::LastWriterWins);
}

#[test]
fn remap_makes_a_teams_meeting_busy_for_routing() {
    let mut cfg = RulesConfig::default();
    cfg.policies.remap = vec![Remap {
        system: TEAMS.into(),
        native: "InAMeeting".into(),
        to: Busy,
    }];
    let mut o = obs(TEAMS, Available, T0);
    o.native = NativeState::new("Available/InAMeeting");
    assert_eq!(remap(&cfg, &o, Available), Busy);
    o.system = D365.into();
    assert_eq!(remap(&cfg, &o, Available), Available);
}

#[test]
fn a_target_already_showing_the_new_state_is_not_written() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 + 5));
    let d = decide_default(&obs(TEAMS, Available, T0 + 10), &v);
    assert_eq!(d.rule, Rule::LastWriterWins);
    assert!(upserts(&d).is_empty(), "{:?}", d.outbox);
}

#[test]
fn a_target_without_an_external_id_is_not_written() {
    let mut v = view();
    v.external_ids.remove(&SystemId::from(TEAMS));
    let d = decide_default(&obs(D365, Busy, T0), &v);
    assert!(upserts(&d).is_empty());
}

#[test]
fn an_edge_filter_keeps_other_availabilities_from_crossing() {
    let clock = Arc::new(ManualClock::new(T0));
    let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert(
        D365.into(),
        MemorySystem::new(D365, clock.clone()).connector(),
    );
    connectors.insert(TEAMS.into(), MemorySystem::new(TEAMS, clock).connector());
    let mut cfg = TopologyConfig::full_mesh(&connectors);
    cfg.edges = vec![EdgeSpec {
        from: D365.into(),
        to: TEAMS.into(),
        only: Some(vec![Busy, DoNotDisturb]),
    }];
    let topo = Topology::build(&cfg, &connectors).unwrap();
    let rules = RulesConfig::default();
    let ctx = Context::new(&topo, &rules, T0);
    let d = decide(&obs(D365, Available, T0), Available, &view(), ctx);
    assert!(upserts(&d).is_empty());
    let d = decide(&obs(D365, Busy, T0), Busy, &view(), ctx);
    assert_eq!(upserts(&d), vec![(TEAMS.into(), Some(Busy))]);
}

#[test]
fn a_late_change_overwritten_by_our_write_wins_and_is_repaired_when_its_echo_came_first() {
    // Teams set Busy at T0; presync wrote Busy to D365, landing at T0+15 and echoing at once.
    // The person had set Away in D365 at T0+12, delivered late. Away is the newest genuine
    // change: it wins, and D365 (which shows presync's Busy) is repaired.
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    let mut echoed = observed(Busy, T0 + 15);
    echoed.genuine_time = None;
    v.systems.entry(D365.into()).or_default().observed = Some(echoed);
    let d = decide_default(&obs(D365, Away, T0 + 12), &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert_eq!(
        upserts(&d),
        vec![(TEAMS.into(), Some(Away)), (D365.into(), Some(Away))]
    );
}

#[test]
fn a_late_change_overwritten_by_our_write_wins_and_is_repaired_when_it_comes_before_the_echo() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    v.expectations
        .push(expectation(1, D365, Busy, Some(T0 + 15)));
    let d = decide_default(&obs(D365, Away, T0 + 12), &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert!(
        d.close_expectations.is_empty(),
        "the echo of the overwriting write is still to come"
    );
    assert_eq!(
        upserts(&d),
        vec![(TEAMS.into(), Some(Away)), (D365.into(), Some(Away))]
    );
}

#[test]
fn an_echo_does_not_advance_the_stale_watermark() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 1));
    v.expectations
        .push(expectation(1, D365, Busy, Some(T0 + 15)));
    let echo = obs(D365, Busy, T0 + 15);
    let d = decide_default(&echo, &v);
    assert_eq!(d.rule, Rule::Echo);
    let o = d.observed.unwrap();
    assert_eq!((o.source_time, o.genuine_time), (T0 + 15, None));
}

// Found by `presync demo`: a Teams read that started before presync's write there landed showed
// presync's previous state, was dated after the write, and beat the newer D365 change.
#[test]
fn an_untimed_read_from_before_presyncs_last_write_landed_is_stale() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0 + 50, 3));
    let teams = v.systems.entry(TEAMS.into()).or_default();
    teams.observed = Some(observed(Busy, T0));
    teams.written = Some(written(Some(Available), 3, T0 + 100));
    // The read started at T0+80, before the write of Available landed at T0+100.
    let d = decide_untimed(&obs(TEAMS, Busy, T0 + 80), &v);
    assert_eq!(d.rule, Rule::Stale, "{}", d.detail);
    assert!(upserts(&d).is_empty());
}

// A person in a Teams call whose first poll was taken for the echo of presync's Busy: once
// presync lowers its session to Available, the call shows. It was there before presync's write,
// hidden beneath presync's Busy: revealed, not a change after D365's Available. (What keeps the
// person out of routing during the call is the hold, which reads what was revealed: see
// `a_call_revealed_by_presyncs_lowering_holds_d365`.)
#[test]
fn an_untimed_read_after_presyncs_write_landed_that_shows_a_hidden_state_is_revealed() {
    let mut v = view();
    v.canonical = Some(presence(D365, Available, T0 + 50, 3));
    let teams = v.systems.entry(TEAMS.into()).or_default();
    teams.observed = Some(ObservedState {
        by_presync: true,
        ..observed(Busy, T0)
    });
    teams.written = Some(written(Some(Available), 3, T0 + 100));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 + 50));
    let d = decide_untimed(&reconcile_read(TEAMS, Busy, T0 + 200, T0 + 300), &v);
    assert_eq!(d.rule, Rule::Revealed, "{}", d.detail);
    assert!(d.canonical.is_none());
    assert!(upserts(&d).is_empty(), "{:?}", upserts(&d));
}

#[test]
fn an_untimed_read_equal_to_presyncs_landed_write_is_still_unchanged() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0 + 50, 3));
    let teams = v.systems.entry(TEAMS.into()).or_default();
    teams.observed = Some(observed(Busy, T0 + 150));
    teams.written = Some(written(Some(Busy), 3, T0 + 100));
    let d = decide_untimed(&reconcile_read(TEAMS, Busy, T0 + 200, T0 + 300), &v);
    assert_eq!(d.rule, Rule::Unchanged, "{}", d.detail);
}

/// D365 versions its agent-status row for every change, its capacity at a conversation's accept
/// included, while the presence's own time moves only when the presence is set.
#[test]
fn a_read_of_a_row_versioned_again_for_its_capacity_alone_is_unchanged() {
    let mut v = view();
    v.canonical = Some(presence(D365, Busy, T0, 3));
    v.systems.entry(D365.into()).or_default().observed = Some(ObservedState {
        sequence: Some(10),
        genuine_sequence: Some(10),
        ..observed(Busy, T0)
    });
    let mut read = reconcile_read(D365, Busy, T0, T0 + 500);
    read.sequence = Some(12);
    let d = decide_default(&read, &v);
    assert_eq!(d.rule, Rule::Unchanged, "{}", d.detail);
    // Set again, with a new time of its own: a change.
    let mut again = reconcile_read(D365, Busy, T0 + 300, T0 + 500);
    again.sequence = Some(13);
    assert_ne!(decide_default(&again, &v).rule, Rule::Unchanged);
}

/// Found by the soak: presync wrote D365 the same presence twice in a row (a hold started, then
/// put back over a change D365 had made before the first write landed). D365 echoes each write;
/// the first echo closed both expectations and the second was taken for the person's change.
#[test]
fn each_write_to_a_system_that_dates_its_states_has_an_echo_of_its_own() {
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 3));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Busy, T0 + 10));
    v.expectations = vec![
        Expectation {
            opened_at: T0 + 20,
            ..expectation(1, D365, DoNotDisturb, Some(T0 + 22))
        },
        Expectation {
            opened_at: T0 + 30,
            ..expectation(2, D365, DoNotDisturb, Some(T0 + 32))
        },
    ];
    let mut first = obs(D365, DoNotDisturb, T0 + 22);
    first.observed_at = T0 + 40;
    let d = decide_default(&first, &v);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    fold(&mut v, &first, &d);
    let mut second = obs(D365, DoNotDisturb, T0 + 32);
    second.observed_at = T0 + 45;
    let d = decide_default(&second, &v);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert!(d.canonical.is_none());
}

#[test]
fn an_attempt_that_never_landed_does_not_take_the_echo_of_the_retry_that_did() {
    // The hold's write failed with its outcome unknown (completed at T0 + 100), then its retry
    // landed at T0 + 1_000. The echo (dated T0 + 999) is the retry's; the person's own Do not
    // disturb two seconds later is news, not the failed attempt's echo.
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 3));
    v.systems.entry(D365.into()).or_default().observed = Some(observed(Available, T0 - 10));
    v.expectations = vec![
        Expectation {
            opened_at: T0,
            ..expectation(1, D365, DoNotDisturb, Some(T0 + 100))
        },
        Expectation {
            opened_at: T0 + 990,
            ..expectation(2, D365, DoNotDisturb, Some(T0 + 1_000))
        },
    ];
    let mut echo = obs(D365, DoNotDisturb, T0 + 999);
    echo.observed_at = T0 + 1_010;
    let d = decide_default(&echo, &v);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert!(d.detail.contains("version"), "{}", d.detail);
    fold(&mut v, &echo, &d);
    let mut own = obs(D365, DoNotDisturb, T0 + 3_000);
    own.origin = Origin::Manual;
    own.observed_at = T0 + 3_010;
    let d = decide_default(&own, &v);
    assert_ne!(d.rule, Rule::Echo, "{}", d.detail);
}

#[test]
fn a_change_after_the_echo_of_a_write_still_on_the_wire_is_not_written_back_after_it() {
    // presync's Busy to D365 landed at T0 + 10 (its echo came) while its answer is still on
    // the wire. D365 then recalculates Do not disturb: nothing needs writing after the Busy,
    // and writing Do not disturb through the API would make D365 keep it.
    let mut v = view();
    v.canonical = Some(presence(TEAMS, Busy, T0, 5));
    v.systems.entry(D365.into()).or_default().observed = Some(ObservedState {
        by_presync: true,
        ..observed(Busy, T0 + 10)
    });
    v.outbox.insert(
        D365.into(),
        PendingWrite {
            availability: Some(Busy),
            in_flight: true,
        },
    );
    let d = decide_default(&obs(D365, DoNotDisturb, T0 + 900), &v);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    assert!(
        !d.outbox
            .iter()
            .any(|op| matches!(op, OutboxOp::Cancel { target, .. } if target.as_str() == D365)),
        "{:?}",
        d.outbox
    );
    // Its echo not seen yet, the write may land after the change: it is followed by the change.
    v.systems.get_mut(&SystemId::from(D365)).unwrap().observed = Some(observed(Available, T0));
    let d = decide_default(&obs(D365, DoNotDisturb, T0 + 900), &v);
    assert!(
        d.outbox
            .iter()
            .any(|op| matches!(op, OutboxOp::Cancel { target, .. } if target.as_str() == D365)),
        "{:?}",
        d.outbox
    );
}
