//! Holds ([`Policies::hold`](crate::config::Policies::hold)): while a representative's state
//! in one system is one of a set (a Teams meeting, call or presentation), another system (D365)
//! is held at a presence that is not routable, however often it recalculates.
//!
//! `apply` runs after the other rules on every decision, so that whichever rule decided, the
//! held system is written what the hold says and nothing else:
//!
//! - **Start and hold.** While the condition lasts, every write the other rules decided for the
//!   held system is replaced by the hold's presence. A state of the held system that is not
//!   routable and is not presync's own write (a break, a sign-out, D365's own Busy - DND at full
//!   capacity) is the person's: it is respected and nothing is written. A routable state (D365's
//!   recalculation at a conversation's accept or close, an assignment, an API) is put back at
//!   once.
//! - **Release.** When the condition ends with the person back to Available (the meeting is
//!   over; nothing was chosen), the held system shows what it would without the hold: the
//!   person's own state that is not routable, if they chose one, else what the system's own
//!   automation gives them ([`ObservedState::automatic`]). That becomes the canonical state, and
//!   the other systems follow it. When it ends with a state the person chose (Do not disturb),
//!   the last writer wins as usual.
//!
//! What is held is never written anywhere else: the hold's write to the held system comes back
//! as its echo, which the echo rule suppresses.
//!
//! Whether the condition holds is read from what presync knows of the person's own state there:
//! for a system where presync only contributes ([`OwnState`](crate::model::OwnState)), the last
//! state the aggregate showed of the person, while it may still be theirs; presync's own Teams
//! session (`Busy/InACall`) never starts a hold.

use crate::config::Hold;
use crate::connector::WriteSemantics;
use crate::model::{
    Availability, Desired, Millis, NativeState, Observation, ObservedState, Origin, Presence,
    SystemId,
};

use super::{write_for, Context, Decision, Note, OutboxOp, RepView};

/// A [`Hold`] with its presence resolved against the held system's connector.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedHold {
    pub rule: Hold,
    /// The presence's canonical availability (never routable).
    pub availability: Availability,
    /// The lowest availability among the holding states (`Busy`, for a meeting): a part of
    /// presync's of that rank or higher in the condition's system could hide one.
    pub lowest: Availability,
    /// What presync writes to the held system: a native state of its own.
    pub native: NativeState,
}

impl ResolvedHold {
    /// Whether the held system shows the hold's presence.
    fn shown_by(&self, s: &ObservedState) -> bool {
        s.availability == self.availability && s.native.code.eq_ignore_ascii_case(&self.native.code)
    }

    /// The presence written to the held system.
    fn presence(&self, version: i64, now: Millis) -> Presence {
        Presence {
            availability: self.availability,
            native: self.native.clone(),
            source: self.rule.hold.system.clone(),
            source_time: now,
            origin: Origin::Automatic,
            observed_at: now,
            version,
        }
    }
}

/// The state of the condition's system that holds (its native state and availability), if it
/// does.
fn condition<'s>(
    h: &ResolvedHold,
    when: Option<&'s ObservedState>,
) -> Option<(&'s NativeState, Availability)> {
    let s = when?;
    let (native, a) = match &s.own {
        Some(own) => {
            let shown = own.shown.as_ref()?;
            own.possible
                .contains(shown.availability)
                .then_some((&shown.native, shown.availability))?
        }
        None if s.by_presync => return None,
        None => (&s.native, s.availability),
    };
    h.rule.holds_on(&native.code).then_some((native, a))
}

/// presync is about to write what could hide a holding state of the person's (a session of
/// presync's at its rank or higher, or any preferred presence): once hidden, neither its start
/// nor its end can be seen until presync lowers its part again, and a call under presync's
/// Busy session (both `Busy/InACall`) cannot be told from it at all. Unless presync has just
/// looked (this decision is on an observation of that system), it looks first: the write waits
/// for a read ([`Decision::refresh`]), whose decision makes it. `holding` is the rank to guard:
/// the holding state the person is in, or the lowest one that could start. (A meeting begun
/// a moment before presync's Busy, whose notification is still on its way, would otherwise go
/// unseen; an end of a meeting whose notification was lost would stay hidden, and D365 held.)
fn look_before_hiding(
    obs: &Observation,
    d: &mut Decision,
    when: &SystemId,
    holding: Availability,
    view: &RepView,
    ctx: Context<'_>,
) {
    if &obs.system == when {
        return;
    }
    let Some(caps) = ctx.topology.capabilities(when) else {
        return;
    };
    let hides = |a: Availability| hides(caps.write_semantics, a, holding);
    let before = d.outbox.len();
    d.outbox.retain(|op| match op {
        OutboxOp::Upsert {
            target,
            desired: Desired::Set(p),
        } => target != when || !hides(p.availability),
        _ => true,
    });
    if d.outbox.len() != before {
        if let Some(user) = view.external_ids.get(when) {
            d.refresh.push((when.clone(), user.clone()));
        }
    }
}

/// Whether a part of presync's at `a` in a system of these semantics hides a state of the
/// person's at `holding` (its start, or its end: at the same rank, Teams may show either).
fn hides(semantics: WriteSemantics, a: Availability, holding: Availability) -> bool {
    match semantics {
        WriteSemantics::Override => a != Availability::Offline,
        WriteSemantics::Contribution => {
            a != Availability::Offline && a.aggregate_rank() >= holding.aggregate_rank()
        }
        WriteSemantics::Overwrite => false,
    }
}

/// The condition holds at `holding`: presync's part in the condition's system stays below it,
/// so that Teams shows the person's meeting (or call, or presentation) and presync sees it
/// end. A part the other rules would write that would hide it is not written; one in effect
/// that would is withdrawn. (What is held is in the held system; the canonical state comes
/// back to the condition's system at the release.)
fn keep_the_condition_in_sight(
    d: &mut Decision,
    when: &SystemId,
    holding: Availability,
    view: &RepView,
    ctx: Context<'_>,
) {
    let Some(caps) = ctx.topology.capabilities(when) else {
        return;
    };
    if !caps.write || !view.external_ids.contains_key(when) {
        return;
    }
    let hides = |a: Availability| hides(caps.write_semantics, a, holding);
    let hiding = |op: &OutboxOp| {
        matches!(op, OutboxOp::Upsert { target, desired: Desired::Set(p) }
            if target == when && hides(p.availability))
    };
    let dropped = d.outbox.iter().any(hiding);
    d.outbox.retain(|op| !hiding(op));
    let queued = d
        .outbox
        .iter()
        .any(|op| matches!(op, OutboxOp::Upsert { target, .. } if target == when));
    if queued {
        return;
    }
    let written = view
        .systems
        .get(when)
        .and_then(|s| s.written.as_ref())
        .and_then(|w| w.availability);
    let pending = view.outbox.get(when).map(|p| p.availability);
    let in_effect_hides = match pending {
        Some(p) => p.is_some_and(hides),
        None => written.is_some_and(hides),
    };
    if in_effect_hides || dropped && (pending.is_some_and(|p| p.is_some()) || written.is_some()) {
        d.outbox.push(OutboxOp::Upsert {
            target: when.clone(),
            desired: Desired::Withdraw,
        });
    }
}

/// The system's state after the decision: the decision's record when it is the observation's
/// system, else what the view holds.
fn state_after<'a>(
    sys: &SystemId,
    obs: &Observation,
    d: &'a Decision,
    view: &'a RepView,
) -> Option<&'a ObservedState> {
    let before = view.systems.get(sys).and_then(|s| s.observed.as_ref());
    if &obs.system == sys {
        d.observed.as_ref().or(before)
    } else {
        before
    }
}

/// Drop every write to `target` the other rules decided.
fn drop_writes(d: &mut Decision, target: &SystemId) {
    d.outbox.retain(|op| match op {
        OutboxOp::Upsert { target: t, .. } | OutboxOp::Cancel { target: t, .. } => t != target,
    });
}

/// Apply every hold to the decision `d` on `obs` (canonical availability `a`).
pub(super) fn apply(
    obs: &Observation,
    a: Availability,
    d: &mut Decision,
    view: &RepView,
    ctx: Context<'_>,
) {
    for h in ctx.holds {
        let target = &h.rule.hold.system;
        let writable = ctx.topology.capabilities(target).is_some_and(|c| c.write);
        if !writable || !view.external_ids.contains_key(target) {
            continue;
        }
        let when = &h.rule.when.system;
        let before = condition(h, view.systems.get(when).and_then(|s| s.observed.as_ref()));
        let after = condition(h, state_after(when, obs, d, view)).map(|(n, a)| (n.clone(), a));
        let guard = after.as_ref().map_or(h.lowest, |(_, holding)| *holding);
        look_before_hiding(obs, d, when, guard, view, ctx);
        match (before.is_some(), after) {
            (was, Some((native, holding))) => {
                hold(obs, d, h, &native, was, view, ctx);
                keep_the_condition_in_sight(d, when, holding, view, ctx);
            }
            (true, None) => release(obs, a, d, h, view, ctx),
            (false, None) => {
                // A read of the held system after a release: it still shows the hold, which
                // presync wrote, and which no longer is what it should show (the canonical
                // state may be the hold's own availability, written by presync as such: a
                // Do not disturb picked in Teams).
                let shows = state_after(target, obs, d, view);
                let canonical = d.canonical.as_ref().or(view.canonical.as_ref());
                let residue = &obs.system == target
                    && !view.outbox.contains_key(target)
                    && canonical.is_none_or(|c| c.availability != h.availability)
                    && shows.is_some_and(|s| s.by_presync && h.shown_by(s));
                // Or it shows what presync wrote there at a release for what its automation
                // gave then (Busy - DND at full capacity, which D365 may keep through its
                // recalculations), and its automation gives something else now.
                let stand_in = &obs.system == target
                    && !view.outbox.contains_key(target)
                    && canonical.is_some_and(|c| {
                        &c.source == target
                            && c.origin == Origin::Automatic
                            && shows.is_some_and(|s| {
                                s.by_presync
                                    && s.availability == c.availability
                                    && s.automatic.is_some_and(|a| a != s.availability)
                            })
                    });
                // Or the hold's presence, last seen there, was replaced by a state of its own
                // that presync did not see (a break taken while presync was down): what it
                // goes back to after the release that waited for this read.
                let before = view.systems.get(target).and_then(|s| s.observed.as_ref());
                let replaced = shows.filter(|s| {
                    &obs.system == target
                        && !view.outbox.contains_key(target)
                        && !s.by_presync
                        && before.is_some_and(|p| p.by_presync && h.shown_by(p))
                        && canonical.is_some_and(|c| &c.source == when)
                });
                if let Some(s) = replaced {
                    let (a, native) = (s.availability, s.native.clone());
                    let origin = if ctx.config.is_routable(a) {
                        Origin::Automatic
                    } else {
                        Origin::Manual
                    };
                    let presence = resumed_presence(a, native, origin, obs, h, view);
                    follow(d, presence, false, view, ctx);
                    d.notes.push(Note::hold(
                        "released",
                        None,
                        format!(
                            "{target} shows {a}, its own, in place of the hold ({}): kept",
                            h.rule.describe()
                        ),
                    ));
                } else if residue {
                    let why = format!("{target} still shows the hold ({})", h.rule.describe());
                    resume(obs, d, h, shows.cloned().as_ref(), view, ctx, why);
                } else if stand_in {
                    let why = format!(
                        "{target} shows what presync wrote at a release for what its automation \
                         gave then"
                    );
                    resume(obs, d, h, shows.cloned().as_ref(), view, ctx, why);
                }
            }
        }
    }
}

/// The condition holds: make the held system show the hold's presence, unless it shows the
/// person's own state that is not routable.
fn hold(
    obs: &Observation,
    d: &mut Decision,
    h: &ResolvedHold,
    cause: &NativeState,
    was_held: bool,
    view: &RepView,
    ctx: Context<'_>,
) {
    let target = &h.rule.hold.system;
    let shows = state_after(target, obs, d, view).cloned();
    drop_writes(d, target);
    let pending = view.outbox.get(target);
    let pending_hold = pending.is_some_and(|p| p.availability == Some(h.availability));
    let version = d
        .canonical
        .as_ref()
        .or(view.canonical.as_ref())
        .map_or(0, |p| p.version);
    let write = Desired::Set(h.presence(version, ctx.now));
    let why = format!(
        "{} shows {} ({})",
        h.rule.when.system,
        cause.code,
        h.rule.describe()
    );
    // The person's own: not presync's write, or presync's write of the person's own choice
    // there (put back after a write of presync's that might have landed over it).
    let canonical = d.canonical.as_ref().or(view.canonical.as_ref());
    let persons = |s: &ObservedState| {
        !s.by_presync
            || canonical.is_some_and(|c| &c.source == target && c.availability == s.availability)
    };
    let respected = shows
        .as_ref()
        .filter(|s| persons(s) && !ctx.config.is_routable(s.availability));
    if let Some(s) = respected {
        // A write on its way there (the hold's own included) would replace the person's
        // choice: if it cannot be stopped, the choice is written back after it.
        if pending.is_some() {
            let own = Presence {
                availability: s.availability,
                native: s.native.clone(),
                source: target.clone(),
                source_time: s.source_time,
                origin: Origin::Manual,
                observed_at: ctx.now,
                version,
            };
            d.outbox.push(OutboxOp::Cancel {
                target: target.clone(),
                if_in_flight: Desired::Set(own),
            });
        }
        if !was_held {
            d.notes.push(Note::hold(
                "started",
                None,
                format!(
                    "{why}; {target} shows {}, the person's own and not routable: respected",
                    s.availability
                ),
            ));
        }
        return;
    }
    // A write of the hold that landed after the state the held system was last seen in (this
    // observation's, or the one before another system's) or is still on the wire has put it
    // back already: its echo is to come.
    let seen_at = if &obs.system == target {
        Some(obs.source_time)
    } else {
        shows.as_ref().map(|s| s.source_time)
    };
    let written_since = view.expectations.iter().any(|e| {
        &e.system == target
            && e.availability == h.availability
            && !e.superseded
            && e.expires_at > ctx.now
            && e.completed_at
                .is_none_or(|c| seen_at.is_none_or(|seen| c > seen))
    });
    if pending_hold
        || written_since
        || shows.as_ref().is_some_and(|s| h.shown_by(s)) && pending.is_none()
    {
        if !was_held {
            d.notes.push(Note::hold(
                "started",
                None,
                format!("{why}; {target} is held at {} already", h.native.code),
            ));
        }
        return;
    }
    d.outbox.push(OutboxOp::Upsert {
        target: target.clone(),
        desired: write,
    });
    let (event, detail) = match (&shows, was_held) {
        (_, false) => (
            "started",
            format!("{why}; {target} set to {}", h.native.code),
        ),
        (Some(s), true) if &obs.system == target && !s.by_presync => (
            "reasserted",
            format!(
                "{target} changed to {}, which is routable, while held: {why}; put back to {}",
                s.availability, h.native.code
            ),
        ),
        (_, true) => (
            "held",
            format!("{why}; {target} set to {} again", h.native.code),
        ),
    };
    d.notes
        .push(Note::hold(event, Some(target.clone()), detail));
}

/// The condition ended.
///
/// The held system shows the person's own state that is not routable: it keeps it, and it
/// becomes the canonical state. The condition ended with a state the person chose: the last
/// writer wins, and the held system is sent it. Else (the meeting is over) the held system goes
/// back to what its automation gives the person, which only it can say: nothing is written
/// there until it is read ([`Decision::refresh`]), and then [`resume`] does it.
fn release(
    obs: &Observation,
    a: Availability,
    d: &mut Decision,
    h: &ResolvedHold,
    view: &RepView,
    ctx: Context<'_>,
) {
    let target = &h.rule.hold.system;
    let when = &h.rule.when.system;
    let shows = state_after(target, obs, d, view).cloned();
    let why = format!(
        "{when} shows {a}: the condition is over ({})",
        h.rule.describe()
    );
    let own = shows
        .as_ref()
        .filter(|s| !s.by_presync && !ctx.config.is_routable(s.availability));
    if let Some(s) = own {
        let what = format!("{target} keeps {}, the person's own", s.availability);
        let mut presence = resumed_presence(
            s.availability,
            s.native.clone(),
            Origin::Manual,
            obs,
            h,
            view,
        );
        // It is the held system's own state, as old as it is there: a change of the person's
        // there since (not yet delivered when the condition ended) is newer than it.
        if s.genuine_time.is_some() {
            let current = view.canonical.as_ref().map_or(0, |c| c.source_time);
            presence.source_time = s.source_time.max(current);
        }
        follow(d, presence, false, view, ctx);
        d.notes
            .push(Note::hold("released", None, format!("{why}; {what}")));
        return;
    }
    if a != Availability::Available {
        d.notes.push(Note::hold(
            "released",
            None,
            format!("{why}; last writer wins"),
        ));
        return;
    }
    // The held system shows a routable state of its own, not the hold (a change made while
    // held whose put-back was not made before the condition ended): it goes to what its
    // automation gives, and presync's part elsewhere says so. The condition's system showing
    // the same now is not the source: its state was the condition, and ended.
    let routable_own = shows
        .as_ref()
        .filter(|s| !s.by_presync && !h.shown_by(s) && ctx.config.is_routable(s.availability));
    if let Some((s, automatic)) = routable_own.and_then(|s| Some((s, s.automatic?))) {
        let native = if automatic == s.availability {
            s.native.clone()
        } else {
            NativeState::new(automatic.as_str())
        };
        let presence = resumed_presence(automatic, native, Origin::Automatic, obs, h, view);
        let write_held = automatic != s.availability;
        follow(d, presence, write_held, view, ctx);
        if !write_held {
            cancel_waiting_hold(d, h, view, ctx);
        }
        // What it showed last may be old: read it (a change since arrives as news).
        read_held(d, h, view);
        d.notes.push(Note::hold(
            "released",
            None,
            format!(
                "{why}; {target} shows {}, its own: {automatic} is what its automation gives",
                s.availability
            ),
        ));
        return;
    }
    let readable = ctx
        .topology
        .capabilities(target)
        .is_some_and(|c| c.bulk_read);
    if !readable {
        // Nothing better to go on than what the held system last said of its automation.
        resume(obs, d, h, shows.as_ref(), view, ctx, why);
        return;
    }
    // The held system stays as it is until it says what its automation gives now; the rest
    // goes as the rules decided, but for a withdrawal of presync's part in the condition's
    // system: the held system's state is the source again once read, and that part says it.
    drop_writes(d, target);
    d.outbox.retain(|op| {
        !matches!(op, OutboxOp::Upsert { target, desired: Desired::Withdraw } if target == when)
    });
    cancel_waiting_hold(d, h, view, ctx);
    read_held(d, h, view);
    d.notes.push(Note::hold(
        "released",
        None,
        format!("{why}; reading {target} for what its own automation gives"),
    ));
}

/// Ask for a read of the held system (what its automation gives now).
fn read_held(d: &mut Decision, h: &ResolvedHold, view: &RepView) {
    let target = &h.rule.hold.system;
    if let Some(user) = view.external_ids.get(target) {
        d.refresh.push((target.clone(), user.clone()));
    }
}

/// A write of the hold still waiting (a Retry-After) when the condition ends is not made. (One
/// on the wire is found by the read that follows: the held system still shows the hold.)
fn cancel_waiting_hold(d: &mut Decision, h: &ResolvedHold, view: &RepView, ctx: Context<'_>) {
    let target = &h.rule.hold.system;
    if view.outbox.get(target).is_some_and(|p| !p.in_flight) {
        let version = view.canonical.as_ref().map_or(0, |c| c.version);
        d.outbox.push(OutboxOp::Cancel {
            target: target.clone(),
            if_in_flight: Desired::Set(h.presence(version, ctx.now)),
        });
    }
}

/// The held system shows the hold's presence, written by presync, and no hold holds it: it goes
/// back to what its automation gives (read with this observation of it), which becomes the
/// canonical state.
fn resume(
    obs: &Observation,
    d: &mut Decision,
    h: &ResolvedHold,
    shows: Option<&ObservedState>,
    view: &RepView,
    ctx: Context<'_>,
    why: String,
) {
    let target = &h.rule.hold.system;
    // A choice of the person's there that is not routable (a break taken while a write of the
    // hold was on its way) is what it goes back to.
    let canonical = d.canonical.as_ref().or(view.canonical.as_ref());
    if let Some(c) = canonical.filter(|c| {
        &c.source == target
            && !ctx.config.is_routable(c.availability)
            && c.availability != h.availability
            && c.origin != Origin::Automatic
    }) {
        let (a, native) = (c.availability, c.native.clone());
        let presence = resumed_presence(a, native, Origin::Manual, obs, h, view);
        follow(d, presence, true, view, ctx);
        d.notes.push(Note::hold(
            "released",
            Some(target.clone()),
            format!("{why}; {target} back to {a}, the person's own"),
        ));
        return;
    }
    let Some(automatic) = shows.and_then(|s| s.automatic) else {
        d.notes.push(Note::hold(
            "released",
            None,
            format!("{why}; {target} does not say what its automation gives: last writer wins"),
        ));
        return;
    };
    let native = NativeState::new(automatic.as_str());
    let presence = resumed_presence(automatic, native, Origin::Automatic, obs, h, view);
    follow(d, presence, true, view, ctx);
    d.notes.push(Note::hold(
        "released",
        Some(target.clone()),
        format!("{why}; {target} back to {automatic}, what its own automation gives"),
    ));
}

/// The canonical presence after a release: the held system's state, now.
fn resumed_presence(
    availability: Availability,
    native: NativeState,
    origin: Origin,
    obs: &Observation,
    h: &ResolvedHold,
    view: &RepView,
) -> Presence {
    let current = view.canonical.as_ref();
    Presence {
        availability,
        native,
        source: h.rule.hold.system.clone(),
        // When the condition ended (a read after a notification: when it was notified), not
        // when presync read it: a change the person made in between is newer.
        source_time: obs
            .changed_by
            .map_or(obs.source_time, |by| by.min(obs.source_time))
            .max(current.map_or(0, |c| c.source_time)),
        origin,
        observed_at: obs.observed_at,
        version: current.map_or(1, |c| c.version + 1),
    }
}

/// `presence` becomes canonical and every system follows it: the other systems as the last
/// writer's state is written, and the held system itself when `write_held` (it shows the
/// hold's presence).
fn follow(
    d: &mut Decision,
    presence: Presence,
    write_held: bool,
    view: &RepView,
    ctx: Context<'_>,
) {
    let held = presence.source.clone();
    d.outbox.clear();
    for sys in view.external_ids.keys() {
        let op = if *sys == held {
            write_held.then(|| OutboxOp::Upsert {
                target: sys.clone(),
                desired: Desired::Set(presence.clone()),
            })
        } else if ctx.topology.route(&held, sys).is_some() {
            write_for(view, &presence, sys, ctx, false)
        } else {
            None
        };
        d.outbox.extend(op);
    }
    d.canonical = Some(presence);
    d.outcome = super::Outcome::Applied;
}

/// Resolve the configured holds against the connectors. A hold naming a system that is not
/// configured is left out without a word when it is the default hold (a deployment without
/// Teams or Dynamics 365); every other problem is returned, one line each with its key: a held
/// system that takes no writes, a presence it does not know, a presence that is routable.
pub fn resolve(
    holds: &[Hold],
    connectors: &std::collections::BTreeMap<SystemId, std::sync::Arc<dyn crate::Connector>>,
    config: &crate::config::RulesConfig,
) -> (Vec<ResolvedHold>, Vec<String>) {
    let mut resolved = Vec::new();
    let mut problems = Vec::new();
    for (i, h) in holds.iter().enumerate() {
        let key = format!("engine.rules.policies.hold[{i}]");
        let (when, held) = (
            connectors.get(&h.when.system),
            connectors.get(&h.hold.system),
        );
        let (Some(when), Some(held)) = (when, held) else {
            if *h != Hold::teams_meetings() {
                for (sys, part) in [(&h.when.system, "when"), (&h.hold.system, "hold")] {
                    if !connectors.contains_key(sys) {
                        problems.push(format!(
                            "{key}.{part}.system: {sys} is not a configured system"
                        ));
                    }
                }
            }
            continue;
        };
        if h.when.states.is_empty() {
            problems.push(format!("{key}.when.states: name at least one state"));
            continue;
        }
        if !held.capabilities().write {
            problems.push(format!(
                "{key}.hold.system: presync cannot write to {}",
                h.hold.system
            ));
            continue;
        }
        let by_name = h.hold.presence.parse::<Availability>().ok();
        let (availability, native) = match by_name {
            Some(a) => match held.to_native(a) {
                Some(n) => (a, n),
                None => {
                    problems.push(format!(
                        "{key}.hold.presence: {} cannot show {a}",
                        h.hold.system
                    ));
                    continue;
                }
            },
            None => {
                let native = NativeState::new(h.hold.presence.trim());
                let mapped = held.to_canonical(&native);
                if !mapped.known {
                    problems.push(format!(
                        "{key}.hold.presence: {:?} is neither an availability (Available, Busy, \
                         DoNotDisturb, Away, Offline) nor a presence {} knows",
                        h.hold.presence, h.hold.system
                    ));
                    continue;
                }
                (mapped.availability, native)
            }
        };
        if config.is_routable(availability) {
            problems.push(format!(
                "{key}.hold.presence: {} is {availability}, which engine.rules.routable routes \
                 work to; a hold must keep {} unroutable",
                h.hold.presence, h.hold.system
            ));
            continue;
        }
        let lowest = h
            .when
            .states
            .iter()
            .map(|s| {
                when.to_canonical(&NativeState::new(s.as_str()))
                    .availability
            })
            .min_by_key(|a| a.aggregate_rank())
            .unwrap_or(Availability::Busy);
        resolved.push(ResolvedHold {
            rule: h.clone(),
            availability,
            lowest,
            native,
        });
    }
    (resolved, problems)
}
