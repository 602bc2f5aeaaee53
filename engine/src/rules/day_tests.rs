//! A representative's day through the rules, step by step: each observation is decided, its
//! decision folded into the representative's state as the store would, and the writes it queues
//! land as the dispatcher would make them (recording the written state and the echo expected).
//! The findings of routing safety (breaks undone, holds, releases) are checked here against
//! what the person did.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::config::Hold;
use crate::connector::Connector;
use crate::memory::MemorySystem;
use crate::model::{Expectation, ExternalId, NativeState, WrittenState};
use crate::topology::TopologyConfig;
use Availability::*;

const D365: &str = "dataverse";
const TEAMS: &str = "teams";
const T0: Millis = 1_000_000;

/// The D365 presence id presync writes for the hold (a custom "In a Teams meeting").
const IN_A_MEETING: &str = "custom-in-a-teams-meeting";

struct Day {
    topology: Topology,
    config: RulesConfig,
    holds: Vec<ResolvedHold>,
    natives: NativeTable,
    view: RepView,
    /// Writes queued and not yet made, by target.
    queued: BTreeMap<SystemId, Desired>,
    next_expectation: i64,
    /// Every write made: (target, availability or `None` for a withdrawal, native written).
    made: Vec<(String, Option<Availability>, Option<String>)>,
    /// Every decision's rule, with the hold notes.
    rules: Vec<String>,
    /// Systems the decisions asked to read again.
    refresh: Vec<(SystemId, ExternalId)>,
}

impl Day {
    /// Dataverse (overwritten, dated) and Teams (`semantics`, undated), both ways, with the
    /// default hold at a custom presence.
    fn new(semantics: WriteSemantics) -> Day {
        let clock = Arc::new(ManualClock::new(T0));
        let mut connectors: BTreeMap<SystemId, Arc<dyn Connector>> = BTreeMap::new();
        connectors.insert(
            D365.into(),
            MemorySystem::new(D365, clock.clone()).connector(),
        );
        connectors.insert(
            TEAMS.into(),
            MemorySystem::new(TEAMS, clock)
                .with_semantics(semantics)
                .without_timestamps()
                .connector(),
        );
        let topology =
            Topology::build(&TopologyConfig::full_mesh(&connectors), &connectors).unwrap();
        let mut view = RepView::default();
        view.external_ids.insert(D365.into(), "agent".into());
        view.external_ids.insert(TEAMS.into(), "aad".into());
        let pairs = [
            (Available, "Available/Available"),
            (Busy, "Busy/InACall"),
            (DoNotDisturb, "DoNotDisturb/Presenting"),
            (Away, "Away/Away"),
        ];
        let natives = [(
            TEAMS.into(),
            pairs.into_iter().map(|(a, p)| (a, p.to_owned())).collect(),
        )]
        .into_iter()
        .collect();
        let mut hold = Hold::teams_meetings();
        hold.hold.system = D365.into();
        hold.hold.presence = IN_A_MEETING.into();
        Day {
            topology,
            config: RulesConfig::default(),
            holds: vec![ResolvedHold {
                rule: hold,
                availability: DoNotDisturb,
                lowest: Busy,
                native: NativeState::new(IN_A_MEETING),
            }],
            natives,
            view,
            queued: BTreeMap::new(),
            next_expectation: 1,
            made: Vec::new(),
            rules: Vec::new(),
            refresh: Vec::new(),
        }
    }

    fn without_holds(mut self) -> Day {
        self.holds.clear();
        self
    }

    /// `system` shows `native` (canonical `a`) at `t`: decided and folded.
    fn sees(&mut self, system: &str, a: Availability, native: &str, t: Millis) -> Decision {
        self.see(system, a, native, t, None)
    }

    /// D365 shows `native` at `t` with the capacity-given `automatic` state.
    fn d365(
        &mut self,
        a: Availability,
        native: &str,
        t: Millis,
        automatic: Availability,
    ) -> Decision {
        self.see(D365, a, native, t, Some(automatic))
    }

    /// A read of D365 at `read_at`, which shows `native` set at `set_at` and the capacity-given
    /// `automatic` state (as the engine reads a system a decision asked for).
    fn d365_read(
        &mut self,
        a: Availability,
        native: &str,
        set_at: Millis,
        read_at: Millis,
        automatic: Availability,
    ) -> Decision {
        let mut o = self.observation(D365, a, native, set_at, Some(automatic));
        o.kind = ObservationKind::Reconcile;
        o.observed_at = read_at;
        self.decide(o, a)
    }

    /// A read of Teams at `t`, as the engine makes one a decision asked for.
    fn teams_read(&mut self, a: Availability, native: &str, t: Millis) -> Decision {
        let mut o = self.observation(TEAMS, a, native, t, None);
        o.kind = ObservationKind::Reconcile;
        self.decide(o, a)
    }

    fn see(
        &mut self,
        system: &str,
        a: Availability,
        native: &str,
        t: Millis,
        automatic: Option<Availability>,
    ) -> Decision {
        let o = self.observation(system, a, native, t, automatic);
        self.decide(o, a)
    }

    fn observation(
        &self,
        system: &str,
        a: Availability,
        native: &str,
        t: Millis,
        automatic: Option<Availability>,
    ) -> Observation {
        let _ = a;
        Observation {
            system: system.into(),
            external_id: self.view.external_ids[&SystemId::from(system)].clone(),
            native: NativeState::new(native),
            source_time: t,
            sequence: None,
            origin: Origin::Unknown,
            kind: ObservationKind::Event,
            delivery_key: format!("{system}-{t}"),
            observed_at: t,
            changed_by: None,
            automatic,
        }
    }

    fn decide(&mut self, o: Observation, a: Availability) -> Decision {
        let ctx = Context {
            holds: &self.holds,
            natives: &self.natives,
            ..Context::new(&self.topology, &self.config, o.observed_at)
        };
        let d = decide(&o, a, &self.view, ctx);
        self.refresh.extend(d.refresh.iter().cloned());
        self.rules.push(d.rule.as_str().to_owned());
        for n in &d.notes {
            self.rules.push(format!("hold {}", n.event));
        }
        if let Some(obs) = &d.observed {
            self.view
                .systems
                .entry(o.system.clone())
                .or_default()
                .observed = Some(obs.clone());
        }
        if let Some(c) = &d.canonical {
            self.view.canonical = Some(c.clone());
        }
        self.view
            .expectations
            .retain(|e| !d.close_expectations.contains(&e.id));
        for e in &mut self.view.expectations {
            e.superseded |= d.supersede_expectations.contains(&e.id);
        }
        for op in &d.outbox {
            match op {
                OutboxOp::Upsert { target, desired } => {
                    self.queued.insert(target.clone(), desired.clone());
                }
                OutboxOp::Cancel { target, .. } => {
                    self.queued.remove(target);
                }
            }
        }
        self.sync_outbox();
        d
    }

    fn sync_outbox(&mut self) {
        self.view.outbox = self
            .queued
            .iter()
            .map(|(t, d)| {
                (
                    t.clone(),
                    PendingWrite {
                        availability: d.availability(),
                        in_flight: false,
                    },
                )
            })
            .collect();
    }

    /// Every queued write lands at `t`, as the dispatcher makes them.
    fn land(&mut self, t: Millis) {
        for (target, desired) in std::mem::take(&mut self.queued) {
            let version = match &desired {
                Desired::Set(p) => p.version,
                Desired::Withdraw => 0,
            };
            if let Some(a) = desired.availability() {
                self.view.expectations.push(Expectation {
                    id: self.next_expectation,
                    system: target.clone(),
                    availability: a,
                    version,
                    opened_at: t - 1,
                    completed_at: Some(t),
                    expires_at: t + 600_000,
                    superseded: false,
                });
                self.next_expectation += 1;
            }
            let native = match &desired {
                Desired::Set(p) => Some(p.native.code.clone()),
                Desired::Withdraw => None,
            };
            self.made
                .push((target.to_string(), desired.availability(), native));
            self.view.systems.entry(target).or_default().written = Some(WrittenState {
                availability: desired.availability(),
                version,
                written_at: t,
            });
        }
        self.sync_outbox();
    }

    /// The writes made to `target` since `from` (an index into `made`).
    fn writes_to(&self, target: &str, from: usize) -> Vec<Option<Availability>> {
        self.made[from..]
            .iter()
            .filter(|(t, _, _)| t == target)
            .map(|(_, a, _)| *a)
            .collect()
    }

    fn canonical(&self) -> Availability {
        self.view.canonical.as_ref().unwrap().availability
    }

    /// The morning: signed in everywhere and Available; presync has adopted both.
    fn morning(&mut self) {
        self.d365(Available, "Available", T0, Available);
        self.land(T0 + 10);
        self.sees(TEAMS, Available, "Available/Available", T0 + 20);
        self.land(T0 + 30);
    }

    /// The reads of Teams decisions asked for, made at `t`: Teams shows `native` (`a`).
    fn teams_reads(&mut self, a: Availability, native: &str, t: Millis) {
        let asked = self.refresh.iter().any(|(s, _)| s.as_str() == TEAMS);
        self.refresh.retain(|(s, _)| s.as_str() != TEAMS);
        if asked {
            self.teams_read(a, native, t);
        }
    }

    /// D365 gives the representative a conversation: Busy, by its own automation. presync
    /// looks at Teams first (a Busy session could hide a meeting), then writes its session (or
    /// preferred presence), which Teams echoes.
    fn conversation(&mut self, t: Millis) {
        self.d365(Busy, "Busy", t, Busy);
        self.teams_reads(Available, "Available/Available", t + 5);
        self.land(t + 10);
        let pair = match self
            .topology
            .capabilities(&TEAMS.into())
            .unwrap()
            .write_semantics
        {
            WriteSemantics::Override => "Busy/Busy",
            _ => "Busy/InACall",
        };
        self.sees(TEAMS, Busy, pair, t + 20);
    }
}

#[test]
fn a_break_taken_in_d365_is_not_undone_by_the_teams_client_showing_through() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The person goes on a break in D365: presync lowers its Teams session to Away, and the
    // Teams aggregate shows the person's own client, Available all along.
    day.d365(Away, "Away", T0 + 2_000, Busy);
    let from = day.made.len();
    day.land(T0 + 2_010);
    assert_eq!(day.writes_to(TEAMS, from), vec![Some(Away)]);
    let d = day.sees(TEAMS, Available, "Available/Available", T0 + 2_100);
    assert_eq!(d.rule, Rule::Revealed, "{}", d.detail);
    assert!(d.outbox.is_empty(), "{:?}", d.outbox);
    assert_eq!(day.canonical(), Away);
    // A reconcile read later says the same, and changes nothing.
    let later = day.made.len();
    day.sees(TEAMS, Available, "Available/Available", T0 + 60_000);
    day.land(T0 + 60_010);
    assert!(day.writes_to(D365, later).is_empty(), "{:?}", day.made);
    // The person's own Teams change after that is news again.
    let d = day.sees(
        TEAMS,
        DoNotDisturb,
        "DoNotDisturb/DoNotDisturb",
        T0 + 70_000,
    );
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
}

#[test]
fn signing_out_of_d365_is_not_undone_by_the_teams_client_showing_through() {
    for semantics in [WriteSemantics::Contribution, WriteSemantics::Override] {
        let mut day = Day::new(semantics);
        day.morning();
        day.conversation(T0 + 1_000);
        // End of the shift: signed out of D365; presync withdraws what it wrote in Teams.
        day.d365(Offline, "Offline", T0 + 2_000, Available);
        day.land(T0 + 2_010);
        let from = day.made.len();
        let d = day.sees(TEAMS, Available, "Available/Available", T0 + 2_100);
        assert_eq!(d.rule, Rule::Revealed, "{semantics:?}: {}", d.detail);
        day.land(T0 + 2_110);
        assert!(day.writes_to(D365, from).is_empty(), "{semantics:?}");
        assert_eq!(day.canonical(), Offline, "{semantics:?}");
    }
}

#[test]
fn a_break_in_d365_stays_in_preferred_mode() {
    let mut day = Day::new(WriteSemantics::Override);
    day.morning();
    day.conversation(T0 + 1_000);
    day.d365(Away, "Away", T0 + 2_000, Busy);
    // A preferred presence hides whatever the person shows: presync looks first.
    day.teams_reads(Busy, "Busy/Busy", T0 + 2_005);
    day.land(T0 + 2_010);
    // The preferred presence shows presync's Away over the client: its echo.
    let d = day.sees(TEAMS, Away, "Away/Away", T0 + 2_100);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert_eq!(day.canonical(), Away);
}

#[test]
fn a_teams_meeting_holds_d365_through_its_recalculations_and_releases_to_capacity() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // The person joins a Teams meeting: D365 is held at the hold's presence, not sent Busy.
    let from = day.made.len();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    assert_eq!(day.writes_to(D365, from), vec![Some(DoNotDisturb)]);
    let held = day.made.iter().rev().find(|(t, _, _)| t == D365).unwrap();
    assert_eq!(
        held.2.as_deref(),
        Some(IN_A_MEETING),
        "the hold's own presence is written"
    );
    // Its echo changes nothing, and goes nowhere.
    let d = day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert!(d.outbox.is_empty());
    // D365 recalculates at a conversation's close: Available, newer. Put back at once.
    let from = day.made.len();
    let d = day.d365(Available, "Available", T0 + 2_000, Available);
    day.land(T0 + 2_010);
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(DoNotDisturb)],
        "{}",
        d.detail
    );
    assert!(
        day.rules.contains(&"hold reasserted".to_owned()),
        "{:?}",
        day.rules
    );
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 2_020, Available);
    // The meeting ends. What D365's automation gives now only D365 can say (the person may
    // have taken a conversation meanwhile, which a held presence does not show): presync
    // holds still and reads it.
    let from = day.made.len();
    let d = day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
    day.land(T0 + 3_010);
    assert!(day.made[from..].is_empty(), "{:?}", day.made);
    assert_eq!(
        day.refresh,
        vec![(SystemId::from(D365), ExternalId::from("agent"))],
        "{}",
        d.detail
    );
    // The read: one conversation open, so Busy.
    let d = day.d365_read(DoNotDisturb, IN_A_MEETING, T0 + 2_020, T0 + 3_050, Busy);
    day.land(T0 + 3_100);
    assert_eq!(day.writes_to(D365, from), vec![Some(Busy)], "{}", d.detail);
    assert_eq!(day.canonical(), Busy);
    assert_eq!(
        day.view.canonical.as_ref().unwrap().source,
        SystemId::from(D365)
    );
    // Colleagues see Busy in Teams: the person is with a customer.
    assert_eq!(day.writes_to(TEAMS, from), vec![Some(Busy)]);
    assert!(day.rules.contains(&"hold released".to_owned()));
}

#[test]
fn a_break_taken_during_a_meeting_is_respected_and_stays_after_it() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // The person takes a break in D365 by hand: not routable, theirs, respected.
    let from = day.made.len();
    day.d365(Away, "Away", T0 + 2_000, Available);
    day.land(T0 + 2_010);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    // The meeting ends: D365 keeps the break.
    let from = day.made.len();
    day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
    day.land(T0 + 3_010);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    assert_eq!(day.canonical(), Away);
}

/// Found by the soak: the meeting's end was notified at 3 s and read at 6 s; the release kept
/// the person's break in D365, dated by the read. The person's own Available in D365 at 4 s,
/// read by the reconcile pass, then looked older than the break and was put back to Away. The
/// release is when the meeting ended.
#[test]
fn a_release_is_dated_when_the_condition_ended_not_when_presync_read_it() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.d365(Away, "Away", T0 + 500, Available);
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    let mut o = day.observation(TEAMS, Available, "Available/Available", T0 + 6_000, None);
    o.changed_by = Some(T0 + 3_000);
    day.decide(o, Available);
    day.land(T0 + 6_010);
    assert_eq!(day.canonical(), Away);
    let from = day.made.len();
    day.d365_read(Available, "Available", T0 + 4_000, T0 + 7_000, Available);
    assert_eq!(day.canonical(), Available, "{:?}", day.rules);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
}

#[test]
fn presyncs_own_busy_session_never_starts_a_hold() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    let from = day.made.len();
    // presync's session says Busy/InACall: a conversation, not the person's call.
    day.conversation(T0 + 1_000);
    day.land(T0 + 1_100);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    assert!(
        !day.rules.iter().any(|r| r.starts_with("hold")),
        "{:?}",
        day.rules
    );
}

#[test]
fn a_call_revealed_by_presyncs_lowering_holds_d365() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The person takes a Teams call: same pair as presync's session, hidden.
    // The conversation closes: D365 Available; presync lowers its session, and the call shows.
    day.d365(Available, "Available", T0 + 2_000, Available);
    day.land(T0 + 2_010);
    let from = day.made.len();
    let d = day.sees(TEAMS, Busy, "Busy/InACall", T0 + 2_100);
    assert_eq!(d.rule, Rule::Revealed, "{}", d.detail);
    day.land(T0 + 2_110);
    assert_eq!(day.writes_to(D365, from), vec![Some(DoNotDisturb)]);
}

#[test]
fn without_holds_a_meeting_makes_d365_busy_as_before() {
    let mut day = Day::new(WriteSemantics::Contribution).without_holds();
    day.morning();
    let from = day.made.len();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    assert_eq!(day.writes_to(D365, from), vec![Some(Busy)]);
}

#[test]
fn a_do_not_disturb_picked_in_teams_is_not_taken_for_a_hold_left_over() {
    let mut day = Day::new(WriteSemantics::Contribution);
    // The hold at the built-in Busy - DND, the presence Teams' Do not disturb is written as.
    day.holds[0].native = NativeState::new("DoNotDisturb");
    day.morning();
    let from = day.made.len();
    day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/DoNotDisturb", T0 + 1_000);
    day.land(T0 + 1_010);
    let d = day.d365(DoNotDisturb, "DoNotDisturb", T0 + 1_020, Available);
    day.land(T0 + 1_030);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(DoNotDisturb)],
        "{:?}",
        day.made
    );
    assert_eq!(day.canonical(), DoNotDisturb);
}

#[test]
fn a_presentation_during_a_call_is_released_when_both_end() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InACall", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // Presenting is Do not disturb, the hold's own availability, and a hold as well.
    day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/Presenting", T0 + 2_000);
    day.land(T0 + 2_010);
    assert_eq!(day.canonical(), DoNotDisturb);
    let from = day.made.len();
    day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
    day.land(T0 + 3_010);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    let d = day.d365_read(
        DoNotDisturb,
        IN_A_MEETING,
        T0 + 1_020,
        T0 + 3_050,
        Available,
    );
    day.land(T0 + 3_100);
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(Available)],
        "{}",
        d.detail
    );
    assert_eq!(day.canonical(), Available);
}

#[test]
fn presync_looks_at_teams_before_hiding_a_meeting_under_its_session() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // The meeting ends; the notification is lost. Then the person picks Do not disturb in D365:
    // presync's Teams session would say Do not disturb and hide whatever Teams shows of them.
    let from = day.made.len();
    day.refresh.clear();
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 3_000, Available);
    day.land(T0 + 3_010);
    assert!(day.writes_to(TEAMS, from).is_empty(), "{:?}", day.made);
    assert_eq!(
        day.refresh,
        vec![(SystemId::from(TEAMS), ExternalId::from("aad"))],
        "presync reads Teams first"
    );
    // The read: the meeting is over. The hold ends, D365 keeps the person's Do not disturb, and
    // Teams is written it now.
    day.teams_read(Available, "Available/Available", T0 + 3_050);
    day.land(T0 + 3_100);
    assert!(!day.rules.contains(&"hold held".to_owned()));
    assert!(
        day.rules.contains(&"hold released".to_owned()),
        "{:?}",
        day.rules
    );
    assert_eq!(day.writes_to(TEAMS, from), vec![Some(DoNotDisturb)]);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
}

#[test]
fn a_change_d365_made_before_the_holds_write_landed_is_not_put_back_twice() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    // D365 recalculates at T0 + 1_005; the hold's write lands at T0 + 1_010, over it.
    day.land(T0 + 1_010);
    let from = day.made.len();
    let d = day.d365(Busy, "Busy", T0 + 1_005, Busy);
    day.land(T0 + 1_020);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    // The hold's echo changes nothing.
    let d = day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_010, Busy);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
}

#[test]
fn while_a_call_holds_d365_presyncs_session_stays_below_it() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // The person is in a call; D365 is held.
    day.sees(TEAMS, Busy, "Busy/InACall", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // The person sets Available in D365 by hand: put back, and Teams is sent Available, which
    // hides nothing of the call.
    day.d365(Available, "Available", T0 + 1_500, Available);
    day.land(T0 + 1_510);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_510, Available);
    // D365 recalculates at an accept: Busy, put back. presync's session at Busy would hide the
    // call's end (Teams may show either of two Busy states): presync looks first, and the
    // call is still on, so its session goes rather than rise.
    day.refresh.clear();
    let from = day.made.len();
    day.d365(Busy, "Busy", T0 + 2_000, Busy);
    day.land(T0 + 2_010);
    assert!(day.writes_to(TEAMS, from).is_empty(), "{:?}", day.made);
    assert_eq!(
        day.refresh,
        vec![(SystemId::from(TEAMS), ExternalId::from("aad"))]
    );
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 2_010, Busy);
    let d = day.teams_read(Busy, "Busy/InACall", T0 + 2_050);
    day.land(T0 + 2_100);
    assert_eq!(day.writes_to(TEAMS, from), vec![None], "{}", d.detail);
    assert_eq!(day.canonical(), Busy);
    // Another read changes nothing.
    let from = day.made.len();
    day.teams_read(Busy, "Busy/InACall", T0 + 3_000);
    day.land(T0 + 3_010);
    assert!(day.made[from..].is_empty(), "{:?}", day.made);
    // The call ends: Teams shows the person's Available, and the hold is released to what the
    // capacity gives (Busy), which presync's session says again.
    day.teams_read(Available, "Available/Available", T0 + 4_000);
    day.d365_read(DoNotDisturb, IN_A_MEETING, T0 + 2_010, T0 + 4_050, Busy);
    day.land(T0 + 4_100);
    assert_eq!(
        day.writes_to(TEAMS, from),
        vec![Some(Busy)],
        "{:?}",
        day.made
    );
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(Busy)],
        "{:?}",
        day.made
    );
}

#[test]
fn a_meeting_agreeing_with_a_busy_from_d365_withdraws_presyncs_session() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The person joins a meeting: Busy, as presync's session already says. The meeting is
    // theirs now; presync's session, left at Busy, would hide its end.
    let from = day.made.len();
    let d = day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 2_000);
    day.land(T0 + 2_010);
    assert_eq!(day.writes_to(TEAMS, from), vec![None], "{}", d.detail);
    assert_eq!(day.writes_to(D365, from), vec![Some(DoNotDisturb)]);
    assert_eq!(
        day.view.canonical.as_ref().unwrap().source,
        SystemId::from(TEAMS)
    );
}

#[test]
fn a_d365_choice_agreeing_with_a_teams_one_gives_presyncs_session_its_state() {
    let mut day = Day::new(WriteSemantics::Contribution).without_holds();
    day.morning();
    // Do not disturb chosen in Teams, then in D365 as well: the newest choice is D365's, and
    // presync's session says it, so that it outlasts a reset of the Teams status.
    day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/DoNotDisturb", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 1_020, Available);
    let from = day.made.len();
    let d = day.d365(DoNotDisturb, "DoNotDisturb", T0 + 2_000, Available);
    day.land(T0 + 2_010);
    assert_eq!(
        day.writes_to(TEAMS, from),
        vec![Some(DoNotDisturb)],
        "{}",
        d.detail
    );
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
}

#[test]
fn a_meeting_ending_on_the_canonical_state_leaves_presyncs_session_for_the_release() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // Available chosen in D365 during the meeting: put back, and Teams is sent it.
    day.d365(Available, "Available", T0 + 1_500, Available);
    day.land(T0 + 1_510);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_510, Available);
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_520);
    // The meeting ends on Available, the canonical state: the release reads D365, whose
    // automation is the source then. presync's session is not withdrawn meanwhile.
    let from = day.made.len();
    day.refresh.clear();
    let d = day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
    day.land(T0 + 3_010);
    assert!(day.made[from..].is_empty(), "{}: {:?}", d.detail, day.made);
    assert_eq!(
        day.refresh,
        vec![(SystemId::from(D365), ExternalId::from("agent"))]
    );
    day.d365_read(
        DoNotDisturb,
        IN_A_MEETING,
        T0 + 1_510,
        T0 + 3_050,
        Available,
    );
    day.land(T0 + 3_100);
    assert_eq!(day.writes_to(D365, from), vec![Some(Available)]);
    assert!(day.writes_to(TEAMS, from).is_empty(), "{:?}", day.made);
}

#[test]
fn teams_showing_presyncs_own_session_over_a_sign_out_is_not_the_persons_agreement() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // A break in D365: presync's session says Away; the Teams client's Available shows.
    day.d365(Away, "Away", T0 + 1_000, Available);
    day.land(T0 + 1_010);
    day.sees(TEAMS, Available, "Available/Available", T0 + 1_100);
    // The person signs out of Teams: presync's Away session is all Teams shows. It agrees with
    // the canonical Away, but it is presync's own: the session stays.
    let from = day.made.len();
    let d = day.sees(TEAMS, Away, "Away/Away", T0 + 2_000);
    day.land(T0 + 2_010);
    assert!(day.made[from..].is_empty(), "{}: {:?}", d.detail, day.made);
    assert_eq!(
        day.view.canonical.as_ref().unwrap().source,
        SystemId::from(D365)
    );
}

#[test]
fn a_break_taken_before_the_holds_write_landed_is_not_overwritten_by_it() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // The meeting is seen; the hold's write is queued (a Retry-After holds it back).
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    assert!(day.queued.contains_key(&SystemId::from(D365)));
    // The person takes a break in D365 meanwhile: theirs, not routable. The hold's write
    // would replace it: it is not made.
    let from = day.made.len();
    let d = day.d365(Away, "Away", T0 + 1_050, Available);
    day.land(T0 + 3_000);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    assert_eq!(day.canonical(), Away);
}

#[test]
fn presyncs_write_putting_back_a_break_is_still_the_persons_break() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    day.d365(Away, "Away", T0 + 2_000, Available);
    assert_eq!(day.canonical(), Away);
    // presync writes the break back (after a write of its own whose outcome it did not know):
    // its echo is presync's write, of the person's choice, which the hold respects still.
    let mut away = day.view.canonical.clone().unwrap();
    away.native = NativeState::new("Away");
    day.queued.insert(D365.into(), Desired::Set(away));
    day.land(T0 + 2_100);
    let from = day.made.len();
    let d = day.d365(Away, "Away", T0 + 2_100, Available);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    day.land(T0 + 2_200);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
}

#[test]
fn a_release_to_do_not_disturb_at_full_capacity_follows_the_capacity_after() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
    // The meeting ends with two conversations open: D365's automation gives Busy - DND, which
    // presync writes (through the API, which D365 may keep through its recalculations).
    day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
    day.d365_read(
        DoNotDisturb,
        IN_A_MEETING,
        T0 + 1_020,
        T0 + 3_050,
        DoNotDisturb,
    );
    day.land(T0 + 3_100);
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 3_100, DoNotDisturb);
    // A conversation closes; D365 keeps the API-set presence. Without the hold it would have
    // recalculated: once presync reads D365 (a reconcile pass), it writes what the capacity
    // gives.
    let from = day.made.len();
    let d = day.d365_read(DoNotDisturb, "DoNotDisturb", T0 + 3_100, T0 + 5_000, Busy);
    day.land(T0 + 5_010);
    assert_eq!(day.writes_to(D365, from), vec![Some(Busy)], "{}", d.detail);
    assert_eq!(day.canonical(), Busy);
}

#[test]
fn a_holds_write_still_waiting_when_the_meeting_ends_is_not_made() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // The meeting is seen; the hold's write waits out a Retry-After.
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    assert!(day.queued.contains_key(&SystemId::from(D365)));
    // The meeting ends before it is made: it is not made, and presync reads D365.
    day.sees(TEAMS, Available, "Available/Available", T0 + 2_000);
    assert!(
        !day.queued.contains_key(&SystemId::from(D365)),
        "{:?}",
        day.queued
    );
    // A break taken then is the person's, and stays.
    let from = day.made.len();
    day.d365(Away, "Away", T0 + 2_500, Available);
    day.land(T0 + 3_000);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
}

#[test]
fn a_state_teams_still_shows_exactly_over_presyncs_new_session_is_not_news() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The person picks Away in Teams: it shows over presync's Busy session, so it is a status
    // they chose, and it reaches D365; presync withdraws its session.
    let d = day.sees(TEAMS, Away, "Away/Away", T0 + 2_000);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    day.land(T0 + 2_010);
    day.teams_read(Away, "Away/Away", T0 + 2_020);
    // Then they choose Busy - DND in D365, newer: presync's session says it in Teams, where
    // the chosen Away still shows over it.
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 3_000, Busy);
    day.teams_reads(Away, "Away/Away", T0 + 3_005);
    day.land(T0 + 3_010);
    let from = day.made.len();
    let d = day.teams_read(Away, "Away/Away", T0 + 5_000);
    day.land(T0 + 5_010);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    assert_eq!(day.canonical(), DoNotDisturb);
}

#[test]
fn a_status_chosen_over_presyncs_session_once_it_showed_is_news() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The client presents (over presync's Busy session, by rank: not a chosen status), then
    // goes Away by itself once presync has withdrawn its session.
    day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/Presenting", T0 + 1_500);
    day.land(T0 + 1_510);
    day.sees(TEAMS, Away, "Away/Away", T0 + 2_000);
    day.land(T0 + 2_010);
    // Available chosen in D365, newer: presync's session says it.
    day.d365(Available, "Available", T0 + 3_000, Busy);
    day.teams_read(Away, "Away/Away", T0 + 3_005);
    day.land(T0 + 3_010);
    // Teams shows presync's Available session over the client's Away (its notification);
    // Away showing again is a status the person chose since.
    day.sees(TEAMS, Available, "Available/Available", T0 + 3_020);
    let from = day.made.len();
    let d = day.teams_read(Away, "Away/Away", T0 + 5_000);
    day.land(T0 + 5_010);
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(Away)],
        "{}: {:?}",
        d.detail,
        day.made
    );
}

#[test]
fn a_teams_read_before_the_holds_echo_does_not_write_the_hold_again() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    // presync reads Teams again (the meeting, unchanged) before D365's echo of the hold's
    // write arrives: D365 is held already.
    let from = day.made.len();
    let d = day.teams_read(Busy, "Busy/InAMeeting", T0 + 1_015);
    day.land(T0 + 1_020);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    let d = day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_008, Busy);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
}

#[test]
fn a_busy_chosen_in_teams_still_showing_over_presyncs_new_session_is_not_news() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    // The person picks Busy in Teams, over presync's Busy session of the same rank (so
    // presync cannot tell it was chosen); presync withdraws its session.
    day.sees(TEAMS, Busy, "Busy/Busy", T0 + 2_000);
    day.land(T0 + 2_010);
    day.teams_read(Busy, "Busy/Busy", T0 + 2_020);
    // Busy - DND chosen in D365: presync's session says it; Teams still shows Busy/Busy.
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 3_000, Busy);
    day.teams_reads(Busy, "Busy/Busy", T0 + 3_005);
    day.land(T0 + 3_010);
    let from = day.made.len();
    let d = day.teams_read(Busy, "Busy/Busy", T0 + 5_000);
    day.land(T0 + 5_010);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    assert_eq!(day.canonical(), DoNotDisturb);
}

#[test]
fn a_break_taken_during_a_meeting_that_presync_missed_is_kept_at_the_release() {
    // In a meeting, or a presentation after it (the canonical state then comes from Teams'
    // Do not disturb).
    for presenting in [false, true] {
        let mut day = Day::new(WriteSemantics::Contribution);
        day.morning();
        day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
        day.land(T0 + 1_010);
        day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_020, Available);
        if presenting {
            day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/Presenting", T0 + 1_500);
            day.land(T0 + 1_510);
        }
        // The person takes a break in D365 at T0 + 2_000, while presync is down: the webhook
        // reaches no one. The meeting ends; presync reads D365 and finds the break.
        day.sees(TEAMS, Available, "Available/Available", T0 + 3_000);
        day.land(T0 + 3_010);
        let from = day.made.len();
        let d = day.d365_read(Away, "Away", T0 + 2_000, T0 + 3_050, Available);
        day.land(T0 + 3_100);
        assert!(
            day.writes_to(D365, from).is_empty(),
            "presenting {presenting}: {}: {:?}",
            d.detail,
            day.made
        );
        assert_eq!(day.canonical(), Away, "presenting {presenting}");
        assert_eq!(
            day.writes_to(TEAMS, from),
            vec![Some(Away)],
            "presenting {presenting}"
        );
    }
}

#[test]
fn a_recalculation_taken_for_the_holds_echo_leaves_the_echo_proper_to_presync() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_008, Busy);
    day.sees(TEAMS, DoNotDisturb, "DoNotDisturb/Presenting", T0 + 1_500);
    day.land(T0 + 1_510);
    // The person picks Available in D365 during the presentation: the hold puts it back, and
    // the write leaves late (a Retry-After).
    day.d365(Available, "Available", T0 + 2_000, Busy);
    day.land(T0 + 2_900);
    // Meanwhile D365 recalculated to Do not disturb (a second conversation: full capacity),
    // just before the write was sent; its webhook comes first and is taken for the echo.
    let mut o = day.observation(
        D365,
        DoNotDisturb,
        "DoNotDisturb",
        T0 + 2_500,
        Some(DoNotDisturb),
    );
    o.observed_at = T0 + 2_950;
    let d = day.decide(o, DoNotDisturb);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    // The write's own echo, dated after it was sent, is presync's too.
    let mut o = day.observation(
        D365,
        DoNotDisturb,
        IN_A_MEETING,
        T0 + 2_900,
        Some(DoNotDisturb),
    );
    o.observed_at = T0 + 2_960;
    let d = day.decide(o, DoNotDisturb);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
    // A conversation closes (D365 keeps the hold's presence); the meeting ends. D365 shows
    // presync's hold, not a state of the person's: it goes back to what its automation gives.
    let from = day.made.len();
    day.sees(TEAMS, Available, "Available/Available", T0 + 4_000);
    day.land(T0 + 4_010);
    assert!(
        day.refresh.iter().any(|(s, _)| s.as_str() == D365),
        "{:?}",
        day.rules
    );
    day.d365_read(DoNotDisturb, IN_A_MEETING, T0 + 2_900, T0 + 4_050, Busy);
    day.land(T0 + 4_100);
    assert_eq!(
        day.writes_to(D365, from),
        vec![Some(Busy)],
        "{:?}",
        day.made
    );
    assert_eq!(day.canonical(), Busy);
}

#[test]
fn a_choice_made_in_d365_before_a_release_that_presync_learns_after_it_stands() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // A break in D365, then a meeting: the hold respects the break.
    day.d365(Away, "Away", T0 + 1_000, Available);
    day.land(T0 + 1_010);
    day.sees(TEAMS, Away, "Away/Away", T0 + 1_020);
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 2_000);
    day.land(T0 + 2_010);
    // The person picks Available in D365 at T0 + 3_000 (its webhook is slow) and the meeting
    // ends at T0 + 3_500: presync learns the release first and keeps the break.
    day.sees(TEAMS, Available, "Available/Available", T0 + 3_500);
    day.land(T0 + 3_510);
    let from = day.made.len();
    let mut o = day.observation(D365, Available, "Available", T0 + 3_000, Some(Available));
    o.observed_at = T0 + 3_600;
    let d = day.decide(o, Available);
    day.land(T0 + 3_610);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{}: {:?}",
        d.detail,
        day.made
    );
    assert_eq!(day.canonical(), Available, "{}", d.detail);
}

#[test]
fn signing_out_of_teams_beneath_presyncs_session_is_not_news() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // A break in D365: presync's session says Away beneath the person's own Available.
    day.d365(Away, "Away", T0 + 1_000, Available);
    day.land(T0 + 1_010);
    day.sees(TEAMS, Available, "Available/Available", T0 + 1_100);
    // Back from the break, a conversation: Busy in D365. presync's Busy session waits (a
    // Retry-After).
    day.d365(Busy, "Busy", T0 + 2_000, Busy);
    // The person signs out of Teams: the aggregate shows presync's Away session, beneath which
    // their own state is hidden. Teams shows Away only because of presync's write.
    let from = day.made.len();
    // (presync's Busy session, asked for by the conversation, is written as drift repair.)
    let d = day.sees(TEAMS, Away, "Away/Away", T0 + 2_500);
    assert!(
        matches!(d.rule, Rule::Revealed | Rule::Drift),
        "{:?}: {}",
        d.rule,
        d.detail
    );
    assert_eq!(day.canonical(), Busy, "{}", d.detail);
    day.land(T0 + 2_600);
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    assert_eq!(
        day.writes_to(TEAMS, from),
        vec![Some(Busy)],
        "{:?}",
        day.made
    );
}

#[test]
fn a_recalculation_dated_the_millisecond_the_holds_write_landed_leaves_its_echo_to_come() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.sees(TEAMS, Busy, "Busy/InAMeeting", T0 + 1_000);
    day.land(T0 + 1_010);
    day.d365(DoNotDisturb, IN_A_MEETING, T0 + 1_008, Busy);
    // The person picks Available in D365 during the meeting: the hold puts it back.
    day.d365(Available, "Available", T0 + 2_000, Available);
    day.land(T0 + 2_590);
    // A conversation is accepted: D365 recalculates to Busy, dated the millisecond presync's
    // write was answered, and the write lands just after it.
    day.d365(Busy, "Busy", T0 + 2_590, Busy);
    let d = day.d365(DoNotDisturb, IN_A_MEETING, T0 + 2_591, Busy);
    assert_eq!(d.rule, Rule::Echo, "{}", d.detail);
}

#[test]
fn a_teams_read_dated_the_millisecond_presyncs_write_landed_may_predate_it() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // Busy - DND chosen in D365: presync's Do not disturb session lands at T0 + 1_010, the
    // very millisecond a read of Teams is dated that may have been answered before it.
    day.d365(DoNotDisturb, "DoNotDisturb", T0 + 1_000, Busy);
    day.teams_read(Available, "Available/Available", T0 + 1_005);
    day.land(T0 + 1_010);
    let from = day.made.len();
    let d = day.teams_read(Available, "Available/Available", T0 + 1_010);
    day.land(T0 + 1_020);
    assert!(
        day.writes_to(D365, from).is_empty(),
        "{:?}: {}: {:?}",
        d.rule,
        d.detail,
        day.made
    );
    assert_eq!(day.canonical(), DoNotDisturb);
}

#[test]
fn a_teams_answer_with_an_older_sequence_number_is_stale_whenever_it_arrives() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    // The person picks Busy in Teams: a notification with sequence 5.
    let mut o = day.observation(TEAMS, Busy, "Busy/Busy", T0 + 1_000, None);
    o.sequence = Some(5);
    let d = day.decide(o, Busy);
    assert_eq!(d.rule, Rule::LastWriterWins, "{}", d.detail);
    day.land(T0 + 1_010);
    // A read answered later, but taken before that change (sequence 4): stale, though Teams
    // dates nothing and presync saw it last.
    let mut o = day.observation(TEAMS, Available, "Available/Available", T0 + 1_100, None);
    o.sequence = Some(4);
    o.kind = ObservationKind::Reconcile;
    let d = day.decide(o, Available);
    assert_eq!(d.rule, Rule::Stale, "{}", d.detail);
    assert_eq!(day.canonical(), Busy);
}

/// From the soak: a call starts during a break taken in D365 (respected), Available is then
/// chosen in D365 during the call (put back), and the call ends before the put-back is made.
/// D365 keeps the person's Available, and presync's Teams session says it: the person's own
/// Teams state is Available now, but their Away later must not show over D365's Available.
#[test]
fn a_d365_choice_made_during_a_call_reaches_teams_when_the_call_ends_first() {
    let mut day = Day::new(WriteSemantics::Contribution);
    day.morning();
    day.conversation(T0 + 1_000);
    day.d365(Away, "Away", T0 + 2_000, Busy);
    day.land(T0 + 2_010);
    day.sees(TEAMS, Available, "Available/Available", T0 + 2_020);
    // The call: held, with the break respected; presync's session withdrawn.
    day.sees(TEAMS, Busy, "Busy/InACall", T0 + 3_000);
    day.land(T0 + 3_010);
    day.sees(TEAMS, Busy, "Busy/InACall", T0 + 3_020);
    // Available chosen in D365: put back, and Teams sent it; both writes wait (a Retry-After),
    // and the call ends first.
    day.d365(Available, "Available", T0 + 4_000, Available);
    assert!(
        day.queued.contains_key(&SystemId::from(TEAMS)),
        "{:?}",
        day.queued
    );
    let from = day.made.len();
    day.refresh.clear();
    day.sees(TEAMS, Available, "Available/Available", T0 + 4_600);
    day.land(T0 + 4_610);
    if day.refresh.iter().any(|(s, _)| s.as_str() == D365) {
        day.d365_read(Available, "Available", T0 + 4_000, T0 + 4_700, Available);
        day.land(T0 + 4_710);
    }
    assert!(day.writes_to(D365, from).is_empty(), "{:?}", day.made);
    let part = day.view.systems[&SystemId::from(TEAMS)]
        .written
        .as_ref()
        .and_then(|w| w.availability);
    assert_eq!(part, Some(Available), "{:?} {:?}", day.made, day.rules);
}
