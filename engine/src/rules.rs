//! The conflict rules: what one observation does to one representative.
//!
//! [`decide`] is a pure function of the observation, the representative's stored state, the
//! topology and the configuration. The store runs it inside the transaction that loads that state
//! and persists the [`Decision`], so one observation is resolved atomically: canonical state,
//! per-system state, expectations, outbox rows and the history row together.
//!
//! The rules run in the order of DESIGN.md; the first that decides wins:
//!
//! 1. **Echo.** An observation matching an open expectation of a write presync made to that system
//!    (at the canonical level) records what the system shows and closes the expectation (and any
//!    older ones of the same system), changing nothing else. An observation that does not match
//!    closes the expectations whose writes had completed before it was received: the system moved
//!    away from what presync wrote, so a later return to that state is the person's own. Writes
//!    still in flight keep their expectation, since their echo may still come. A stale observation
//!    (older than the last one from that system) never matches: it cannot be the echo of a newer
//!    write.
//! 2. **Stale or duplicate.** Older than the last observation from the same system (sequence when
//!    both have one, else source time): dropped. Same sequence or time and state: duplicate. A
//!    reconcile read equal to the last observation is `unchanged`; if the system nevertheless
//!    differs from the canonical state and is a target of its source, a repair write is queued
//!    (`drift`).
//! 3. **Policies.** `debounce_offline` holds an automatic Offline for a grace window and drops it
//!    when the system reports something newer within it; `manual_wins` keeps a state the person
//!    set by hand against automatic changes from other systems, and writes it back to them.
//!    (`remap` is applied while mapping, before rule 1.)
//! 4. **Last writer wins** on source timestamps (clamped by the clock-skew bound), ties broken by
//!    the configured system priority. An observation that agrees with the canonical availability
//!    only advances its timestamp (a false conflict). A newer one becomes canonical and is written
//!    to every target an edge from its system reaches, never back to it; a pending write to its
//!    own system is cancelled, and for a system with contribution semantics presync's own
//!    contribution there is withdrawn, so that it cannot hold the aggregate (the sticky echo).
//!    A reconcile read of a system without timestamps (Teams) is dated by the read; a change it
//!    shows happened at an unknown time after presync last saw that system. When the canonical
//!    state comes from a dated change made after that sight, the order is unknown and, by
//!    default (`undated_changes = "dated_wins"`), the dated change holds and the system is
//!    repaired; `"read_time"` lets the read's time decide.
//!
//! Two more concerns run beside the chain:
//!
//! - **Genuine changes only** (the `contribution` module). Where presync only contributes to what a system
//!   shows (a Teams presence session), a change that presync's own write or withdrawal there
//!   explains is not news from the person: it is recorded as `revealed` and changes nothing
//!   else (rule 2b, after the stale check). A person on a break in D365 whose Teams client stays
//!   Available is not made Available again when presync lowers its Teams session.
//! - **Holds** ([`holds`]), after every rule: while a condition lasts (a Teams meeting), the held
//!   system (D365) is written the hold's presence and nothing else.

mod contribution;
pub mod holds;

pub use contribution::NativeTable;
pub use holds::ResolvedHold;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{RulesConfig, UndatedChanges};
use crate::connector::WriteSemantics;
use crate::model::{
    Availability, Desired, Expectation, ExternalId, Millis, Observation, ObservationKind,
    ObservedState, Origin, Presence, SystemId, SystemState,
};
use crate::topology::Topology;

/// Everything the rules read about one representative.
#[derive(Debug, Clone, Default)]
pub struct RepView {
    pub canonical: Option<Presence>,
    pub systems: BTreeMap<SystemId, SystemState>,
    /// Every stored expectation of this representative, open or expired.
    pub expectations: Vec<Expectation>,
    /// Outbox rows of this representative, by target.
    pub outbox: BTreeMap<SystemId, PendingWrite>,
    /// The representative's user id in each system.
    pub external_ids: BTreeMap<SystemId, ExternalId>,
}

/// An outbox row as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// `None` for a withdrawal.
    pub availability: Option<Availability>,
    /// Whether a dispatcher holds it (the write may be on the wire).
    pub in_flight: bool,
}

/// The rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Echo,
    Stale,
    Duplicate,
    Unchanged,
    Drift,
    Deferred,
    Debounced,
    ManualWins,
    Agree,
    LastWriterWins,
    Superseded,
    Revealed,
    Hold,
    UnknownRepresentative,
}

impl Rule {
    /// The stable name used in history and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Echo => "echo",
            Rule::Stale => "stale",
            Rule::Duplicate => "duplicate",
            Rule::Unchanged => "unchanged",
            Rule::Drift => "drift",
            Rule::Deferred => "deferred",
            Rule::Debounced => "debounced",
            Rule::ManualWins => "manual_wins",
            Rule::Agree => "agree",
            Rule::LastWriterWins => "last_writer_wins",
            Rule::Superseded => "superseded",
            Rule::Revealed => "revealed",
            Rule::Hold => "hold",
            Rule::UnknownRepresentative => "unknown_representative",
        }
    }
}

/// What happened to the observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The canonical availability changed.
    Applied,
    /// The system's observed state was recorded; the canonical availability did not change.
    Recorded,
    /// Nothing was recorded.
    Dropped,
    /// Put back in the inbox until `defer_until`.
    Deferred,
}

impl Outcome {
    /// The stable name used in history and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Recorded => "recorded",
            Outcome::Dropped => "dropped",
            Outcome::Deferred => "deferred",
        }
    }
}

/// A change to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxOp {
    /// Make this the latest desired state of the target (replacing any pending one).
    Upsert { target: SystemId, desired: Desired },
    /// Drop the target's pending write. If a dispatcher already holds it, the write may land
    /// after the newer state the target reported, so replace it with `if_in_flight` instead.
    Cancel {
        target: SystemId,
        if_in_flight: Desired,
    },
}

/// The effect of one observation, persisted atomically by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub rule: Rule,
    pub outcome: Outcome,
    /// The observation's canonical availability.
    pub availability: Availability,
    /// The new observed state of the observation's system, when it is recorded.
    pub observed: Option<ObservedState>,
    /// The new canonical presence, when it changed (availability or timestamp).
    pub canonical: Option<Presence>,
    pub close_expectations: Vec<i64>,
    /// Expectations kept only to recognise late echoes (see [`Expectation::superseded`]).
    pub supersede_expectations: Vec<i64>,
    pub outbox: Vec<OutboxOp>,
    pub defer_until: Option<Millis>,
    /// Why, for people: `presync explain` prints it.
    pub detail: String,
    /// What else the decision did, each recorded in history as a row of its own (a hold
    /// started, put back or released).
    pub notes: Vec<Note>,
    /// Systems to read this representative from once the decision is committed: the rules
    /// need to know what one shows now (what its automation gives, after a hold).
    pub refresh: Vec<(SystemId, ExternalId)>,
}

/// Something a decision did besides its rule's effect, with a history row of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The rule whose effect it is.
    pub rule: Rule,
    /// What happened: `started`, `reasserted`, `held`, `released`.
    pub event: &'static str,
    /// The system written because of it, if one was.
    pub wrote: Option<SystemId>,
    /// Why, for people.
    pub detail: String,
}

impl Note {
    fn hold(event: &'static str, wrote: Option<SystemId>, detail: String) -> Note {
        Note {
            rule: Rule::Hold,
            event,
            wrote,
            detail,
        }
    }
}

impl Decision {
    fn new(rule: Rule, outcome: Outcome, availability: Availability, detail: String) -> Self {
        Self {
            rule,
            outcome,
            availability,
            observed: None,
            canonical: None,
            close_expectations: Vec::new(),
            supersede_expectations: Vec::new(),
            outbox: Vec::new(),
            defer_until: None,
            detail,
            notes: Vec::new(),
            refresh: Vec::new(),
        }
    }

    /// The targets this decision queues writes for.
    pub fn write_targets(&self) -> Vec<&SystemId> {
        self.outbox
            .iter()
            .filter_map(|op| match op {
                OutboxOp::Upsert { target, .. } => Some(target),
                OutboxOp::Cancel { .. } => None,
            })
            .collect()
    }
}

/// Inputs that do not belong to the representative.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub topology: &'a Topology,
    pub config: &'a RulesConfig,
    pub now: Millis,
    /// The holds of [`RulesConfig::policies`], resolved against the held systems.
    pub holds: &'a [ResolvedHold],
    /// What presync writes to each system for each availability.
    pub natives: &'a NativeTable,
}

/// No holds, no native table: what a context without connectors has.
static NO_NATIVES: NativeTable = NativeTable::new();

impl<'a> Context<'a> {
    /// A context with no holds and no native table.
    pub fn new(topology: &'a Topology, config: &'a RulesConfig, now: Millis) -> Context<'a> {
        Context {
            topology,
            config,
            now,
            holds: &[],
            natives: &NO_NATIVES,
        }
    }
}

/// Map-time policy: the availability after `remap`.
pub fn remap(config: &RulesConfig, obs: &Observation, mapped: Availability) -> Availability {
    config
        .policies
        .remap
        .iter()
        .find(|r| r.system == obs.system && r.matches(&obs.native.code))
        .map_or(mapped, |r| r.to)
}

/// Apply the conflict rules to one observation, then the holds. `availability` is the
/// observation's canonical availability (after mapping and `remap`).
pub fn decide(
    obs: &Observation,
    availability: Availability,
    view: &RepView,
    ctx: Context<'_>,
) -> Decision {
    let mut d = decide_by_rules(obs, availability, view, ctx);
    holds::apply(obs, availability, &mut d, view, ctx);
    d
}

/// The chain of rules, first that decides wins.
fn decide_by_rules(
    obs: &Observation,
    availability: Availability,
    view: &RepView,
    ctx: Context<'_>,
) -> Decision {
    let cfg = ctx.config;
    let a = availability;
    let sys = &obs.system;
    let source_time = obs
        .source_time
        .min(obs.observed_at.saturating_add(cfg.max_clock_skew_ms));
    let state = view.systems.get(sys).cloned().unwrap_or_default();
    let own = contribution::observe(obs, a, view, ctx);
    let observed_now = ObservedState {
        availability: a,
        native: obs.native.clone(),
        source_time,
        sequence: obs.sequence,
        observed_at: obs.observed_at,
        genuine_time: Some(source_time),
        genuine_sequence: obs.sequence,
        by_presync: false,
        automatic: obs.automatic,
        own: own.as_ref().map(|o| o.state.clone()),
    };
    let order = state.observed.as_ref().map_or(Ordering::Greater, |prev| {
        against_watermark(source_time, obs.sequence, prev)
    });

    let mut close: Vec<i64> = view
        .expectations
        .iter()
        .filter(|e| e.expires_at <= ctx.now)
        .map(|e| e.id)
        .collect();
    // Where the system's timestamps can be trusted, an echo of a write carries a source time
    // inside that write's time on the wire, give or take the clock-skew bound.
    let timed = ctx
        .topology
        .capabilities(sys)
        .is_some_and(|c| c.source_timestamps);
    // When the state was set, for ordering it against other systems' changes.
    let changed = change_time(obs, source_time, timed);
    let skew = cfg.max_clock_skew_ms;
    let within = |e: &Expectation, skew: i64| {
        source_time >= e.opened_at.saturating_sub(skew)
            && e.completed_at
                .is_none_or(|c| source_time <= c.saturating_add(skew))
    };
    let could_echo = |e: &Expectation| e.availability == a && (!timed || within(e, skew));
    let live: Vec<&Expectation> = view
        .expectations
        .iter()
        .filter(|e| &e.system == sys && e.expires_at > ctx.now)
        .collect();
    let open: Vec<&Expectation> = live.iter().filter(|e| !e.superseded).copied().collect();
    let mut supersede: Vec<i64> = Vec::new();
    // Superseded expectations only help to recognise late echoes, which needs timestamps.
    let retire = |ids: Vec<i64>, close: &mut Vec<i64>, supersede: &mut Vec<i64>| {
        if timed {
            supersede.extend(ids);
        } else {
            close.extend(ids);
        }
    };

    // Rule 2 (first part): a system without timestamps is dated by when presync read it. A
    // read that started before presync's last write there landed (or the same millisecond)
    // may show the state from before that write; it says nothing about what the system shows
    // now (the next read will).
    if !timed && source_time > 0 {
        if let Some(w) = state
            .written
            .as_ref()
            .filter(|w| w.written_at >= source_time)
        {
            let mut d = Decision::new(
                Rule::Stale,
                Outcome::Dropped,
                a,
                format!(
                    "read from {sys} before presync's write of version {} there landed",
                    w.version
                ),
            );
            d.close_expectations = close;
            // Where presync's write layers over the person's own state, the read may have
            // shown theirs (a meeting) that no later change will announce: read it again.
            if own.is_some() {
                d.refresh.push((sys.clone(), obs.external_id.clone()));
            }
            return d;
        }
    }

    // Rule 1: echo suppression by recorded expectation.
    if order != Ordering::Less {
        // A system that dates its states echoes each write of presync's, in order (D365 stamps
        // and versions every write, the same presence again included): the oldest write this
        // echo can be is the one it is, and a newer one's echo is still to come. A system that
        // dates nothing shows an aggregate, whose one change may echo several writes: the newest.
        // (One whose time on the wire holds the echo's time without the skew allowance
        // first: an attempt of unknown outcome that never landed has no echo, and its window
        // only reaches the write that did land by that allowance.)
        let candidates = open.iter().filter(|e| could_echo(e));
        let hit = if timed {
            candidates.min_by_key(|e| (!within(e, 0), e.id))
        } else {
            candidates.max_by_key(|e| e.id)
        };
        // A state of the same value that the system set just before the write was sent (D365
        // recalculating to Do not disturb as the hold's write of it leaves) was taken for the
        // write's echo through the clock-skew allowance alone; the echo proper, dated after the
        // write was sent, comes after it and is this one. What shows now is presync's write.
        let hit = hit.or_else(|| {
            let prev = state.observed.as_ref().filter(|p| {
                timed && p.by_presync && p.availability == a && order == Ordering::Greater
            })?;
            live.iter()
                .filter(|e| e.superseded && could_echo(e))
                .filter(|e| prev.source_time < e.opened_at && source_time >= e.opened_at)
                .max_by_key(|e| e.id)
        });
        if let Some(hit) = hit {
            // The hit is retired too: the same echo may still arrive by another path (a
            // webhook after a reconcile read saw it).
            retire(
                open.iter()
                    .filter(|e| e.id <= hit.id)
                    .map(|e| e.id)
                    .collect(),
                &mut close,
                &mut supersede,
            );
            let mut d = Decision::new(
                Rule::Echo,
                Outcome::Recorded,
                a,
                format!(
                    "echo of presync's write of {a} (version {}) to {sys}",
                    hit.version
                ),
            );
            // What the system shows changes; the watermark of the person's own changes does not.
            let echo = ObservedState {
                genuine_time: None,
                genuine_sequence: None,
                by_presync: true,
                ..observed_now
            };
            d.observed = Some(record(state.observed.as_ref(), echo));
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            return d;
        }
    }
    // A late echo arrives after something newer from the same system was seen. (A reconcile
    // read goes on to the drift check instead.)
    let arrives_late = state
        .observed
        .as_ref()
        .is_some_and(|prev| raw_order(&observed_now, prev) == Ordering::Less);
    let late = live
        .iter()
        .filter(|e| e.superseded && could_echo(e))
        .max_by_key(|e| e.id);
    if let (Some(late), true, ObservationKind::Event) = (late, arrives_late, obs.kind) {
        let mut d = Decision::new(
            Rule::Echo,
            Outcome::Dropped,
            a,
            format!(
                "late echo of presync's write of {a} (version {}) to {sys}, since superseded",
                late.version
            ),
        );
        d.close_expectations = close;
        return d;
    }
    if order != Ordering::Less && obs.kind == ObservationKind::Event {
        // The system moved away from what presync wrote, after the write landed: a later return
        // to that state is the person's own. A write that landed after this state was set
        // overwrote it, and its echo is still to come, so it stays open. (A state dated the
        // very millisecond the write's answer came may have been set just before it landed.)
        retire(
            open.iter()
                .filter(|e| e.completed_at.is_some_and(|c| c < source_time))
                .map(|e| e.id)
                .collect(),
            &mut close,
            &mut supersede,
        );
    }

    // Rule 3 (first part): an automatic Offline is held for its grace window. It runs before
    // the stale check so that a superseded Offline is reported as debounced.
    if let Some(grace) = debounce_grace(cfg, obs, a) {
        let until = obs.observed_at.saturating_add(grace);
        if ctx.now < until {
            let mut d = Decision::new(
                Rule::Deferred,
                Outcome::Deferred,
                a,
                format!("automatic Offline from {sys} held for {grace} ms"),
            );
            d.defer_until = Some(until);
            return d;
        }
        if order == Ordering::Less {
            let mut d = Decision::new(
                Rule::Debounced,
                Outcome::Dropped,
                a,
                format!("Offline from {sys} superseded within its grace window"),
            );
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            return d;
        }
    }

    // Rule 2: stale or duplicate.
    if let Some(prev) = &state.observed {
        let same_state = prev.availability == a && prev.native.code == obs.native.code;
        if order == Ordering::Less {
            let mut d = Decision::new(
                Rule::Stale,
                Outcome::Dropped,
                a,
                format!("older than the last observation from {sys}"),
            );
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            return d;
        }
        // A change of the person's that arrives after presync already saw a newer, different
        // state there and took it for what its own part revealed (unchanged since the sight
        // before): the person changed in between, so that newer state was theirs, set after
        // this one. It is decided as their change, at its time; this older one is passed over.
        let unmasked = !prev.by_presync
            && prev.genuine_time.is_some_and(|g| g < prev.source_time)
            && source_time < prev.source_time
            && prev.availability != a
            && own.is_some()
            // (A late echo of a write of presync's there proves nothing of the person.)
            && !view
                .expectations
                .iter()
                .any(|e| &e.system == sys && e.availability == a);
        if unmasked {
            let later = Observation {
                native: prev.native.clone(),
                source_time: prev.source_time,
                sequence: prev.sequence,
                ..obs.clone()
            };
            let theirs = ObservedState {
                genuine_time: Some(prev.source_time),
                genuine_sequence: prev.sequence,
                own: own.as_ref().map(|o| o.state.clone()),
                ..prev.clone()
            };
            let at = change_time(&later, prev.source_time, timed);
            let current = view.canonical.as_ref();
            let newer = current.is_none_or(|c| match at.cmp(&c.source_time) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => &c.source == sys || rank(cfg, sys) < rank(cfg, &c.source),
            });
            let mut d = if newer && current.is_none_or(|c| c.availability != prev.availability) {
                apply(
                    &later,
                    prev.availability,
                    theirs,
                    (close, supersede),
                    view,
                    ctx,
                    current,
                )
            } else {
                let mut d = Decision::new(
                    Rule::Superseded,
                    Outcome::Recorded,
                    prev.availability,
                    format!(
                        "{} from {sys} at {}, the person's change, is not newer than the \
                         canonical state",
                        prev.availability, prev.source_time
                    ),
                );
                d.observed = Some(record(state.observed.as_ref(), theirs));
                d.close_expectations = close;
                d.supersede_expectations = supersede;
                d
            };
            d.detail = format!(
                "{} (unmasked: {sys} showed {a} before it, so {} was the person's change, not \
                 what presync's part revealed)",
                d.detail, prev.availability
            );
            return d;
        }
        let raw_equal = raw_order(&observed_now, prev) == Ordering::Equal;
        if raw_equal && same_state && obs.kind == ObservationKind::Event {
            let mut d = Decision::new(
                Rule::Duplicate,
                Outcome::Dropped,
                a,
                format!("same as the last observation from {sys}"),
            );
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            return d;
        }
        // A reconcile read equal to the last observation, and not newer where the system's
        // timestamps tell (the same state set again, with a lost delivery in between, is a change).
        // Where presync only contributes to what the system shows, a read taken after presync's
        // last write there landed that still shows something else is not presync's state but
        // the person's own (it outranks presync's contribution): that is news, even when an
        // earlier observation already showed it and was taken for an echo.
        let contribution = ctx
            .topology
            .capabilities(sys)
            .is_some_and(|c| c.write_semantics == WriteSemantics::Contribution);
        let overridden = contribution
            && !timed
            && state.written.as_ref().is_some_and(|w| {
                w.written_at <= source_time && w.availability.is_some_and(|wa| wa != a)
            })
            && view.canonical.as_ref().is_some_and(|c| c.availability != a);
        // The state's own time says whether it was set again: a row's version also moves for
        // changes that are not the state's (D365's capacity at a conversation's accept).
        let unchanged =
            prev.availability == a && !overridden && (!timed || source_time <= prev.source_time);
        if obs.kind == ObservationKind::Reconcile && unchanged {
            let mut d = Decision::new(
                Rule::Unchanged,
                Outcome::Recorded,
                a,
                format!("{sys} unchanged since its last observation"),
            );
            // No news: the watermark of the person's own changes stays where it was.
            let read = ObservedState {
                genuine_time: None,
                genuine_sequence: None,
                by_presync: prev.by_presync,
                ..observed_now
            };
            d.observed = Some(record(state.observed.as_ref(), read));
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            drift_repair(&mut d, view, sys, ctx, false);
            return d;
        }
    }

    // Rule 2b: where presync's write layers over the person's own state, the same state with
    // presync's contribution unchanged is no change, and a change that presync's own write or
    // withdrawal there explains is not news from the person.
    if let Some(own) = own.as_ref().filter(|o| o.unchanged) {
        let mut d = Decision::new(
            Rule::Unchanged,
            Outcome::Recorded,
            a,
            format!("{sys} still shows {a}, and presync's contribution there is unchanged"),
        );
        let same = ObservedState {
            genuine_time: None,
            genuine_sequence: None,
            by_presync: state.observed.as_ref().is_some_and(|p| p.by_presync),
            ..observed_now
        };
        d.observed = Some(record(state.observed.as_ref(), same));
        d.close_expectations = close;
        d.supersede_expectations = supersede;
        drift_repair(&mut d, view, sys, ctx, true);
        let _ = own;
        return d;
    }
    // Where the canonical state already comes from this system, presync's part there is being
    // withdrawn to follow it, and what shows beneath is the person's own, now: news of them.
    let source_here = view.canonical.as_ref().is_some_and(|c| &c.source == sys);
    if let Some(own) = own
        .as_ref()
        .filter(|o| (o.explained || o.shows_presyncs) && !source_here)
    {
        let detail = if own.shows_presyncs {
            format!(
                "{sys} shows presync's own contribution there ({}), beneath which the \
                 person's own state is hidden: not a change of theirs",
                own.contribution
            )
        } else {
            format!(
                "{sys} shows the person's own {a}, revealed by presync's contribution there \
                 ({}) changing: not a change of theirs",
                own.contribution
            )
        };
        let mut d = Decision::new(Rule::Revealed, Outcome::Recorded, a, detail);
        let revealed = ObservedState {
            genuine_time: None,
            genuine_sequence: None,
            ..observed_now
        };
        d.observed = Some(record(state.observed.as_ref(), revealed));
        d.close_expectations = close;
        d.supersede_expectations = supersede;
        drift_repair(&mut d, view, sys, ctx, true);
        return d;
    }

    // A state of the person's that they may have set unseen beneath presync's part, at any
    // moment since presync last saw the system (the state its withdrawal at the source shows,
    // or one that shows now that presync's part changed): it is dated at the earliest, so that
    // a dated change elsewhere since then holds against it.
    let dated;
    let (obs, observed_now, changed) = match state.observed.as_ref() {
        Some(prev) if own.as_ref().is_some_and(|o| o.explained || o.undated) => {
            // (A read knows the system showed the last state when it was read.)
            let seen = prev.source_time.max(prev.observed_at);
            let at = seen.saturating_add(1).min(source_time);
            dated = Observation {
                source_time: at,
                ..obs.clone()
            };
            let observed = ObservedState {
                source_time: at,
                genuine_time: Some(at),
                ..observed_now
            };
            (&dated, observed, change_time(&dated, at, timed))
        }
        _ => (obs, observed_now, changed),
    };

    let Some(current) = &view.canonical else {
        return apply(obs, a, observed_now, (close, supersede), view, ctx, None);
    };

    // Rule 3 (second part): a manual state holds against automatic changes.
    if let Some(mw) = &cfg.policies.manual_wins {
        if current.origin == Origin::Manual
            && obs.origin != Origin::Manual
            && &current.source != sys
            && a != current.availability
            && a != Availability::Offline
            && source_time.saturating_sub(current.source_time) < mw.hold_ms
        {
            let mut d = Decision::new(
                Rule::ManualWins,
                Outcome::Recorded,
                a,
                format!(
                    "{} set by hand in {} holds against automatic {a} from {sys}",
                    current.availability, current.source
                ),
            );
            d.observed = Some(record(state.observed.as_ref(), observed_now));
            d.close_expectations = close;
            let routed = ctx
                .topology
                .route(&current.source, sys)
                .is_some_and(|r| r.allows(current.availability));
            if routed {
                if let Some(op) = write_for(view, current, sys, ctx, true) {
                    d.outbox.push(op);
                }
            }
            return d;
        }
    }

    // Rule 4: last writer wins.
    if a == current.availability {
        let mut d = Decision::new(
            Rule::Agree,
            Outcome::Recorded,
            a,
            format!("{sys} agrees with the canonical {a}"),
        );
        let overwritten =
            overwritten_by_our_write(view, sys, a, &observed_now, &close, &supersede, ctx);
        // The newer evidence becomes the source (same version: nothing is written), so that a
        // later, older report from the previous source is seen as drift there. Even when
        // presync's write has overwritten it since, it is the person's change at its time.
        // (Not when the aggregate shows presync's own contribution: the person's state, hidden
        // beneath it, is not what agrees.)
        let moved = changed > current.source_time && own.as_ref().is_none_or(|o| o.exact);
        if moved {
            d.canonical = Some(Presence {
                source: sys.clone(),
                source_time: changed,
                native: obs.native.clone(),
                origin: obs.origin,
                observed_at: obs.observed_at,
                ..current.clone()
            });
        }
        d.observed = Some(record(state.observed.as_ref(), observed_now));
        d.close_expectations = close;
        d.supersede_expectations = supersede;
        if overwritten {
            // The system agreed, but a write of presync's landed after that and it shows the
            // write's older state now: keep (or queue) the write of the canonical state.
            if let Some(op) = write_for(view, current, sys, ctx, true) {
                d.detail.push_str(&format!(
                    "; repairing {sys}, where presync's older write overwrote it"
                ));
                d.outbox.push(op);
            }
        } else if view
            .outbox
            .get(sys)
            .is_some_and(|p| !p.in_flight && p.availability == Some(a))
        {
            d.outbox.push(OutboxOp::Cancel {
                target: sys.clone(),
                if_in_flight: Desired::Set(current.clone()),
            });
        }
        if let Some(new) = d.canonical.clone().filter(|_| moved && !overwritten) {
            follow_the_source(&mut d, view, &new, ctx);
        }
        return d;
    }
    let newer = match changed.cmp(&current.source_time) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => &current.source == sys || rank(cfg, sys) < rank(cfg, &current.source),
    };
    if newer {
        if let Some(since) = unplaced_since(obs, a, &state, current, timed, ctx) {
            let mut d = Decision::new(
                Rule::Superseded,
                Outcome::Recorded,
                a,
                format!(
                    "{a} from {sys}, read by a reconcile pass, changed at an unknown time after \
                     {since}; the canonical {} from {} at {} is dated and holds",
                    current.availability, current.source, current.source_time
                ),
            );
            d.observed = Some(record(state.observed.as_ref(), observed_now));
            d.close_expectations = close;
            d.supersede_expectations = supersede;
            let why = d.detail.clone();
            drift_repair(&mut d, view, sys, ctx, false);
            if d.rule == Rule::Drift {
                d.detail = format!("{why}: repairing {sys}");
            }
            return d;
        }
        return apply(
            obs,
            a,
            observed_now,
            (close, supersede),
            view,
            ctx,
            Some(current),
        );
    }
    let mut d = Decision::new(
        Rule::Superseded,
        Outcome::Recorded,
        a,
        format!(
            "{a} from {sys} is older than the canonical {} from {}",
            current.availability, current.source
        ),
    );
    d.observed = Some(record(state.observed.as_ref(), observed_now));
    d.close_expectations = close;
    d.supersede_expectations = supersede;
    // An older state from a target that has not been sent the canonical state: it shows
    // something stale and nothing is on its way there. (A reconcile read repairs in any case.)
    drift_repair(&mut d, view, sys, ctx, obs.kind == ObservationKind::Event);
    d
}

/// When a reconcile read of a system without timestamps of its own shows a change presync
/// missed, and the canonical state comes from a dated change made after presync last saw that
/// system, the two cannot be ordered: the missed change happened at some time after that last
/// sight, before or after the dated one. The read's own time would put it after every change
/// made meanwhile. With [`UndatedChanges::DatedWins`] (the default) the dated change holds:
/// `Some` of the last sight's time. `None` where the order is known or the policy is
/// [`UndatedChanges::ReadTime`].
fn unplaced_since(
    obs: &Observation,
    a: Availability,
    state: &SystemState,
    current: &Presence,
    timed: bool,
    ctx: Context<'_>,
) -> Option<Millis> {
    if timed
        || obs.kind != ObservationKind::Reconcile
        || ctx.config.undated_changes != UndatedChanges::DatedWins
        || current.source == obs.system
    {
        return None;
    }
    let dated = ctx
        .topology
        .capabilities(&current.source)
        .is_some_and(|c| c.source_timestamps);
    // The last sight: the last observation there, or a write of presync's that landed there
    // later and that the read contradicts (the system showed something else after it: a change
    // since). Where presync only contributes, the person's own state may outrank its write
    // without a change: only the last observation counts.
    // (A read knows the system showed the last state when it was read: a poll's state has no
    // time of its own.)
    let observed = state
        .observed
        .as_ref()
        .map(|o| o.source_time.max(o.observed_at))?;
    let contributes = ctx
        .topology
        .capabilities(&obs.system)
        .is_some_and(|c| c.write_semantics == WriteSemantics::Contribution);
    let contradicted = state
        .written
        .as_ref()
        .filter(|w| !contributes && w.availability.is_some_and(|wa| wa != a))
        .map_or(observed, |w| w.written_at);
    let since = observed.max(contradicted);
    (dated && current.source_time > since).then_some(since)
}

/// When the observation's state was set, for ordering it against other systems' changes: its
/// (clamped) source time, or for a system without timestamps the earlier moment by which it is
/// known to have been set ([`Observation::changed_by`]).
fn change_time(obs: &Observation, source_time: Millis, timed: bool) -> Millis {
    match obs.changed_by {
        Some(by) if !timed => by.min(source_time),
        _ => source_time,
    }
}

/// The observation becomes canonical: queue writes to every target of its system.
fn apply(
    obs: &Observation,
    a: Availability,
    observed_now: ObservedState,
    (close, supersede): (Vec<i64>, Vec<i64>),
    view: &RepView,
    ctx: Context<'_>,
    previous: Option<&Presence>,
) -> Decision {
    let sys = &obs.system;
    let caps = ctx.topology.capabilities(sys);
    let timed = caps.is_some_and(|c| c.source_timestamps);
    let presence = Presence {
        availability: a,
        native: obs.native.clone(),
        source: sys.clone(),
        source_time: change_time(obs, observed_now.source_time, timed),
        origin: obs.origin,
        observed_at: obs.observed_at,
        version: previous.map_or(1, |p| p.version + 1),
    };
    let detail = match previous {
        Some(p) => format!(
            "{a} from {sys} is newer than {} from {}",
            p.availability, p.source
        ),
        None => format!("first state seen: {a} from {sys}"),
    };
    let mut d = Decision::new(Rule::LastWriterWins, Outcome::Applied, a, detail);
    for route in ctx.topology.routes_from(sys) {
        if &route.to == sys || !route.allows(a) {
            continue;
        }
        // A reconcile read repairs only what presync knows differs: a target it has neither
        // observed nor written is reconciled by its own read.
        let never_observed = view
            .systems
            .get(&route.to)
            .is_none_or(|s| s.observed.is_none() && s.written.is_none());
        // (A write already queued there carries an older state and must be replaced.)
        if obs.kind == ObservationKind::Reconcile
            && never_observed
            && !view.outbox.contains_key(&route.to)
        {
            continue;
        }
        if let Some(op) = write_for(view, &presence, &route.to, ctx, false) {
            d.outbox.push(op);
        }
    }
    // The system that reported the new state must not receive an older pending write, and a
    // contribution of presync's there must not hold its aggregate.
    let own = view.systems.get(sys);
    let semantics = caps.map(|c| c.write_semantics);
    let contributes = semantics == Some(WriteSemantics::Contribution)
        && own
            .and_then(|s| s.written.as_ref())
            .is_some_and(|w| w.availability.is_some());
    // A write of presync's landed on this system after the person set this state there: either
    // its echo was already seen (the system shows something newer), or its expectation is still
    // open with a completion after this state's time. The write overwrote the person's newer
    // choice, so put it back.
    let overwritten =
        overwritten_by_our_write(view, sys, a, &observed_now, &close, &supersede, ctx);
    let overwrites = semantics.is_some_and(|s| s != WriteSemantics::Contribution);
    if overwritten && overwrites {
        if let Some(op) = write_for(view, &presence, sys, ctx, true) {
            d.detail.push_str(&format!(
                "; repairing {sys}, where presync's older write overwrote it"
            ));
            d.outbox.push(op);
        }
    } else if contributes && view.external_ids.contains_key(sys) {
        d.outbox.push(OutboxOp::Upsert {
            target: sys.clone(),
            desired: Desired::Withdraw,
        });
    } else if view.outbox.contains_key(sys) && !landed_before(view, sys, timed, ctx) {
        d.outbox.push(OutboxOp::Cancel {
            target: sys.clone(),
            if_in_flight: Desired::Set(presence.clone()),
        });
    }
    d.observed = Some(record(own.and_then(|s| s.observed.as_ref()), observed_now));
    d.canonical = Some(presence);
    d.close_expectations = close;
    d.supersede_expectations = supersede;
    d
}

/// The canonical state keeps its availability but comes from `new.source` now: where presync
/// only contributes, its part follows the source as [`apply`] makes it (the state of the other
/// system said there; withdrawn from the source's own aggregate, which shows the person).
fn follow_the_source(d: &mut Decision, view: &RepView, new: &Presence, ctx: Context<'_>) {
    let sys = &new.source;
    let contributes = |s: &SystemId| {
        ctx.topology
            .capabilities(s)
            .is_some_and(|c| c.write_semantics == WriteSemantics::Contribution)
    };
    for route in ctx.topology.routes_from(sys) {
        if &route.to == sys || !route.allows(new.availability) || !contributes(&route.to) {
            continue;
        }
        if let Some(op) = write_for(view, new, &route.to, ctx, false) {
            d.outbox.push(op);
        }
    }
    let part = view
        .systems
        .get(sys)
        .and_then(|s| s.written.as_ref())
        .is_some_and(|w| w.availability.is_some());
    if contributes(sys) && part && view.external_ids.contains_key(sys) {
        d.outbox.push(OutboxOp::Upsert {
            target: sys.clone(),
            desired: Desired::Withdraw,
        });
    }
}

/// Whether the write of presync's on the wire to `sys` (a system that dates its states) has
/// landed before the state now seen there: its echo came already, so its answer is all that is
/// still to come, and nothing needs writing after it. (Writing the newer state again would
/// turn a state D365's automation gave into one set through the API, which D365 may keep
/// through its recalculations.)
fn landed_before(view: &RepView, sys: &SystemId, timed: bool, ctx: Context<'_>) -> bool {
    let Some(pending) = view.outbox.get(sys).filter(|p| p.in_flight) else {
        return false;
    };
    let Some(a) = pending.availability else {
        return false;
    };
    // The last thing seen there is that write's echo (and no newer write replaced it since).
    let echoed = view
        .systems
        .get(sys)
        .and_then(|s| s.observed.as_ref())
        .is_some_and(|o| o.by_presync && o.availability == a);
    timed
        && echoed
        && !view.expectations.iter().any(|e| {
            &e.system == sys && e.availability == a && !e.superseded && e.expires_at > ctx.now
        })
}

/// Whether a write of presync's landed on `sys` after the person set this state there: either
/// its echo was already seen (the system shows something newer and different), or its
/// expectation is still open with a completion after this state's time.
fn overwritten_by_our_write(
    view: &RepView,
    sys: &SystemId,
    a: Availability,
    observed_now: &ObservedState,
    close: &[i64],
    supersede: &[i64],
    ctx: Context<'_>,
) -> bool {
    let shows_newer = view
        .systems
        .get(sys)
        .and_then(|s| s.observed.as_ref())
        .is_some_and(|o| o.availability != a && raw_order(o, observed_now) == Ordering::Greater);
    shows_newer
        || view.expectations.iter().any(|e| {
            &e.system == sys
                && e.expires_at > ctx.now
                && !e.superseded
                && !close.contains(&e.id)
                && !supersede.contains(&e.id)
                && e.availability != a
                // Confirmed after this state was set, or started after it with the outcome
                // still unknown: either may have overwritten it.
                && e.completed_at.map_or(e.opened_at > observed_now.source_time, |c| {
                    c > observed_now.source_time
                })
        })
}

/// The write that makes `target` show `presence`, unless it already does or cannot be written.
/// `repair` writes even when the target's last observation matches presync's last write there.
pub(crate) fn write_for(
    view: &RepView,
    presence: &Presence,
    target: &SystemId,
    ctx: Context<'_>,
    repair: bool,
) -> Option<OutboxOp> {
    if !view.external_ids.contains_key(target) {
        return None;
    }
    let caps = ctx.topology.capabilities(target)?;
    if !caps.write {
        return None;
    }
    let a = presence.availability;
    let state = view.systems.get(target);
    let pending = view.outbox.get(target);
    let already = match caps.write_semantics {
        // The target already shows it and nothing else is on its way there.
        WriteSemantics::Overwrite | WriteSemantics::Override => {
            !repair
                && pending.is_none_or(|p| p.availability == Some(a))
                && state.is_some_and(|s| {
                    s.observed.as_ref().is_some_and(|o| {
                        o.availability == a
                            && s.written
                                .as_ref()
                                .is_none_or(|w| w.written_at <= o.observed_at)
                    })
                })
        }
        // presync's own contribution already says it.
        WriteSemantics::Contribution => {
            pending.is_none_or(|p| p.availability == Some(a))
                && state
                    .and_then(|s| s.written.as_ref())
                    .is_some_and(|w| w.availability == Some(a))
        }
    };
    if already {
        return pending.map(|_| OutboxOp::Cancel {
            target: target.clone(),
            if_in_flight: Desired::Set(presence.clone()),
        });
    }
    Some(OutboxOp::Upsert {
        target: target.clone(),
        desired: Desired::Set(presence.clone()),
    })
}

/// A reconcile read found `sys` showing something other than the canonical state although it
/// has not changed since presync last heard from it: presync's write never landed. Queue it again.
fn drift_repair(
    d: &mut Decision,
    view: &RepView,
    sys: &SystemId,
    ctx: Context<'_>,
    only_if_unwritten: bool,
) {
    let Some(c) = &view.canonical else { return };
    // Where presync only contributes, what it sent there is its part, not what the aggregate
    // shows: a Busy part of presync's deferred under a call (Busy too) is still to be written.
    // (With no part of presync's there, the aggregate is all there is to compare.)
    let contributes = ctx
        .topology
        .capabilities(sys)
        .is_some_and(|caps| caps.write_semantics == WriteSemantics::Contribution);
    let part = view
        .systems
        .get(sys)
        .and_then(|s| s.written.as_ref())
        .and_then(|w| w.availability);
    let shows = match part {
        Some(part) if contributes && &c.source != sys => part,
        _ => d.availability,
    };
    if shows == c.availability {
        return;
    }
    // A withdrawal of presync's contribution at that version (the state came from `sys`
    // itself then) did not send it the canonical state.
    let written = view
        .systems
        .get(sys)
        .and_then(|s| s.written.as_ref())
        .is_some_and(|w| w.version >= c.version && w.availability.is_some());
    if only_if_unwritten && written {
        return;
    }
    if &c.source == sys {
        // The source itself shows something else with no newer change of its own: presync's
        // write overwrote it. Put it back, unless presync only contributes there.
        if contributes {
            return;
        }
    } else {
        let Some(route) = ctx.topology.route(&c.source, sys) else {
            return;
        };
        if !route.allows(c.availability) {
            return;
        }
    }
    if view.outbox.contains_key(sys) {
        return;
    }
    // A write on the wire may still land; one that completed and still shows something else
    // did not stick (or carried an older state), so it does not count.
    let write_pending = view.expectations.iter().any(|e| {
        &e.system == sys
            && e.expires_at > ctx.now
            && !e.superseded
            && e.completed_at.is_none()
            && !d.close_expectations.contains(&e.id)
            && !d.supersede_expectations.contains(&e.id)
    });
    if write_pending {
        return;
    }
    if let Some(op) = write_for(view, c, sys, ctx, true) {
        d.rule = Rule::Drift;
        d.detail = format!(
            "{sys} shows {} but the canonical state is {} from {}: repairing",
            d.availability, c.availability, c.source
        );
        d.outbox.push(op);
    }
}

fn debounce_grace(cfg: &RulesConfig, obs: &Observation, a: Availability) -> Option<i64> {
    if a != Availability::Offline
        || obs.kind != ObservationKind::Event
        || obs.origin == Origin::Manual
    {
        return None;
    }
    cfg.policies
        .debounce_offline
        .iter()
        .find(|d| d.system == obs.system)
        .map(|d| d.grace_ms)
}

/// Order an observation against the watermark of the system's last non-echo observation: by
/// sequence when both have one, else by source time.
fn against_watermark(time: Millis, sequence: Option<i64>, prev: &ObservedState) -> Ordering {
    match (sequence, prev.genuine_sequence) {
        (Some(n), Some(p)) => n.cmp(&p),
        _ => prev
            .genuine_time
            .map_or(Ordering::Greater, |p| time.cmp(&p)),
    }
}

/// The observed state after recording `now`: what the system shows only moves forward (a late
/// delivery never hides a newer state, e.g. presync's own write, that was seen already), and the
/// watermark of the person's own changes only grows.
fn record(prev: Option<&ObservedState>, now: ObservedState) -> ObservedState {
    let Some(prev) = prev else { return now };
    let genuine_time = prev.genuine_time.max(now.genuine_time);
    let genuine_sequence = prev.genuine_sequence.max(now.genuine_sequence);
    let (shown, older) = if raw_order(&now, prev) == Ordering::Less {
        (prev.clone(), now)
    } else {
        (now, prev.clone())
    };
    ObservedState {
        genuine_time,
        genuine_sequence,
        automatic: shown.automatic.or(older.automatic),
        ..shown
    }
}

/// Order two observed states by what the system showed last, echoes included.
fn raw_order(a: &ObservedState, b: &ObservedState) -> Ordering {
    match (a.sequence, b.sequence) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.source_time.cmp(&b.source_time),
    }
}

fn rank(cfg: &RulesConfig, sys: &SystemId) -> (usize, SystemId) {
    let i = cfg
        .system_priority
        .iter()
        .position(|s| s == sys)
        .unwrap_or(usize::MAX);
    (i, sys.clone())
}

#[cfg(test)]
#[path = "rules_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "rules/day_tests.rs"]
mod day_tests;
