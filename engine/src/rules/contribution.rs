//! What a person's own inputs to an aggregate show, as far as presync can tell.
//!
//! Where presync's write only contributes to what a system shows
//! ([`WriteSemantics::Contribution`]: a Teams presence session), the system shows the input of
//! highest [rank](Availability::aggregate_rank) among the person's own inputs and presync's, or
//! the person's chosen status over all of them. Where it overrides them while set
//! ([`WriteSemantics::Override`]: a Teams preferred presence), the system shows presync's write
//! or, once withdrawn, the person's own state. presync sees only what the system shows. So:
//!
//! - an aggregate showing something other than presync's contribution (or with no contribution
//!   of presync's at all) shows the person's own state exactly;
//! - an aggregate showing presync's contribution hides the person's own state beneath it: of
//!   that rank or lower (any state at all, beneath an override).
//!
//! [`observe`] keeps, per representative, the set of states the person's own inputs may show
//! ([`OwnState::possible`]). When presync changed its contribution since it last saw the system,
//! a different aggregate may be nothing but the effect of presync's own write or withdrawal:
//! lowering its session over a person whose client has shown Available all along reveals that
//! Available, which is not news from the person. Such an observation is *explained* when the
//! person's own state may have been the same before and after; only an unexplained one is a
//! genuine change. (A change of the person's that happened while hidden, and is only revealed
//! by presync's write, happened before that write; it is not newer than the change that made
//! presync write.)

use std::collections::BTreeMap;

use crate::connector::WriteSemantics;
use crate::model::{
    Availability, AvailabilitySet, Millis, NativeState, Observation, OwnShown, OwnState, SystemId,
};

use super::{Context, RepView};

/// The native state presync writes for each availability, by system (for a contribution system,
/// to tell its own contribution from a person's input of the same availability, such as Teams'
/// `Busy/InACall` session from a person's `Busy/InAMeeting`).
pub type NativeTable = BTreeMap<SystemId, BTreeMap<Availability, String>>;

/// What an observation of a contribution system says of the person's own inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Own {
    /// The person's own inputs after the observation.
    pub state: OwnState,
    /// The aggregate changed only as presync's own write or withdrawal there would make it
    /// change: not news from the person.
    pub explained: bool,
    /// presync's contribution did not change since the last observation, and the aggregate
    /// shows the same state (a meeting after a call is a change, both Busy): nothing the
    /// person did shows.
    pub unchanged: bool,
    /// presync's contribution at the time, for people (`Away`, `none`, `Away or none`).
    pub contribution: String,
    /// The aggregate shows the person's own state exactly, not what presync's contribution
    /// says (beneath which the person's own is hidden).
    pub exact: bool,
    /// The aggregate shows what a contribution of presync's in effect says, as presync writes
    /// it: whatever the person did beneath it (a sign-out of Teams under presync's Away), what
    /// shows is presync's, not theirs. (A status they chose that looks just like it cannot be
    /// told apart from it.)
    pub shows_presyncs: bool,
    /// The person may have set this state unseen, beneath a contribution of presync's, at any
    /// moment since presync last saw the system: its time is not the time of their change.
    pub undated: bool,
}

/// presync's contributions to `sys` in effect when the observation was made (`None`: none, or
/// withdrawn): the one last confirmed, and any on the wire or of unknown outcome. Also those in
/// effect at some moment since presync last saw the system at `seen_last`, beneath which the
/// person may have changed unseen, and whether presync's contribution changed since then.
struct Contributions {
    now: Vec<Option<Availability>>,
    since: Vec<Option<Availability>>,
    changed: bool,
}

fn contributions(
    view: &RepView,
    sys: &SystemId,
    seen_last: Option<Millis>,
    now: Millis,
) -> Contributions {
    let state = view.systems.get(sys);
    let written = state.and_then(|s| s.written.as_ref());
    // Offline is written as a withdrawal.
    let contribution = |a: Option<Availability>| a.filter(|a| *a != Availability::Offline);
    let after_last_sight = |t: Millis| seen_last.is_none_or(|seen| t > seen);
    let mut c = Contributions {
        now: vec![contribution(written.and_then(|w| w.availability))],
        since: Vec::new(),
        changed: written.is_some_and(|w| after_last_sight(w.written_at)),
    };
    // A write on the wire, queued behind a claim, or whose outcome is unknown.
    if let Some(p) = view.outbox.get(sys).filter(|p| p.in_flight) {
        c.now.push(contribution(p.availability));
        c.changed = true;
    }
    let confirmed_at = written.map_or(Millis::MIN, |w| w.written_at);
    for e in view
        .expectations
        .iter()
        .filter(|e| &e.system == sys && e.expires_at > now)
    {
        let unconfirmed = !e.superseded && e.completed_at.is_none_or(|t| t > confirmed_at);
        if unconfirmed {
            c.now.push(contribution(Some(e.availability)));
            c.changed = true;
        } else if e.completed_at.is_some_and(after_last_sight) {
            // Landed since, and replaced since.
            c.since.push(contribution(Some(e.availability)));
        }
    }
    c.now.sort();
    c.now.dedup();
    c
}

/// Whether `native` is what presync writes for `w` to `sys` (when the table says; else, at the
/// canonical level, it may be).
fn is_contribution(
    ctx: Context<'_>,
    sys: &SystemId,
    w: Availability,
    native: &NativeState,
) -> bool {
    ctx.natives
        .get(sys)
        .and_then(|t| t.get(&w))
        .is_none_or(|code| code.eq_ignore_ascii_case(&native.code))
}

fn describe(candidates: &[Option<Availability>]) -> String {
    candidates
        .iter()
        .map(|c| c.map_or("none", Availability::as_str))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// What `obs` (canonical availability `a`) says of the person's own inputs to `obs.system`, if
/// presync's write there layers over the person's own state; `None` where it overwrites.
pub(super) fn observe(
    obs: &Observation,
    a: Availability,
    view: &RepView,
    ctx: Context<'_>,
) -> Option<Own> {
    let sys = &obs.system;
    let caps = ctx.topology.capabilities(sys)?;
    let semantics = caps.write_semantics;
    if !semantics.layers_over_the_person() {
        return None;
    }
    let beneath = |w: Availability| match semantics {
        WriteSemantics::Override => AvailabilitySet::ANY,
        _ => AvailabilitySet::up_to(w),
    };
    let hidden_by = |ws: &[Option<Availability>]| {
        ws.iter()
            .flatten()
            .fold(AvailabilitySet::EMPTY, |set, w| set.or(beneath(*w)))
    };
    let prev = view.systems.get(sys).and_then(|s| s.observed.as_ref());
    // A record from before presync kept this: the last aggregate showed the person's own
    // state, unless presync took it for its own write's echo.
    let before = prev.map(|p| {
        p.own.clone().unwrap_or_else(|| OwnState {
            possible: match p.by_presync {
                true => beneath(p.availability),
                false => AvailabilitySet::only(p.availability),
            },
            hideable: AvailabilitySet::EMPTY,
            shown: None,
            exact: false,
        })
    });
    let c = contributions(view, sys, prev.map(|p| p.source_time), ctx.now);
    // What the person's own inputs may show now, given each contribution of presync's that may
    // be in effect; and whether the aggregate shows them exactly.
    let mut possible = AvailabilitySet::EMPTY;
    let mut exact = true;
    for w in &c.now {
        match w {
            Some(w) if *w == a => {
                possible = possible.or(beneath(*w));
                exact &= !is_contribution(ctx, sys, *w, &obs.native);
            }
            _ => possible = possible.or(AvailabilitySet::only(a)),
        }
    }
    // Whether the aggregate can show `a` through a contribution of presync's: beneath
    // presync's Do not disturb session a person's Away cannot show, unless they chose it as
    // their status, which beats every session (and is news).
    let shows_through = |w: &Option<Availability>| match (w, semantics) {
        (None, _) => true,
        (Some(w), WriteSemantics::Override) => *w == a,
        (Some(w), _) => a.aggregate_rank() >= w.aggregate_rank(),
    };
    // What the person may have set, unseen, beneath a contribution of presync's since the
    // last sight. A change of theirs is unseen beneath one only if their own state lay beneath
    // it already: from a state that showed (their Busy over presync's Available, or a status
    // they chose over it), any change shows.
    let unseen = before.as_ref().map_or(AvailabilitySet::EMPTY, |b| {
        let unseen_beneath = |hides: AvailabilitySet| {
            if b.possible.single().is_some() || b.possible.and(hides).is_empty() {
                AvailabilitySet::EMPTY
            } else {
                hides
            }
        };
        c.since
            .iter()
            .flatten()
            .fold(unseen_beneath(b.hideable), |set, w| {
                set.or(unseen_beneath(beneath(*w)))
            })
    });
    // A status the person chose over every contribution of presync's in effect (it cannot show
    // through any of them) showed the moment they chose it.
    let chosen_over = c.now.iter().all(|w| !shows_through(w));
    // The person's own state, shown exactly at the last sight, still shows exactly as it did,
    // though presync's contribution changed: Teams showed no change at all, so the person
    // made none (even where it could only show over presync's new contribution as a status
    // they chose: they chose it before). Where presync is not told of every change (polling),
    // a status chosen since, the same as what their client showed before, is missed: a change
    // in between that presync saw (its contribution showing) makes it news.
    // (Only a state whose time presync knew: one it took for set unseen at some moment since
    // the sight before may have been set after the change presync's contribution says.)
    let still_shown = semantics != WriteSemantics::Override
        && before.as_ref().is_some_and(|b| {
            b.exact
                && b.shown.as_ref().is_some_and(|s| {
                    s.availability == a && s.native.code.eq_ignore_ascii_case(&obs.native.code)
                })
        });
    // A state the person may have had at the last sight, or taken since beneath one of
    // presync's contributions, unseen: shown now because presync changed its own; or what
    // showed of them before, shown still.
    let explained = c.changed
        && (still_shown
            || c.now.iter().any(shows_through)
                && before
                    .as_ref()
                    .is_some_and(|b| b.possible.or(unseen).contains(a)));
    // Its time is the person's only if it showed the moment they set it. A state they may
    // have set beneath a contribution of presync's since the last sight may have been set any
    // time since (even from a state that showed, whose change's notification can be lost).
    let hidden_since = before
        .as_ref()
        .map_or(AvailabilitySet::EMPTY, |b| b.hideable)
        .or(hidden_by(&c.since));
    let undated = c.changed && !chosen_over && !still_shown && hidden_since.contains(a);
    let shown = if exact {
        Some(OwnShown {
            availability: a,
            native: obs.native.clone(),
        })
    } else {
        before
            .and_then(|b| b.shown)
            .filter(|s| possible.contains(s.availability))
    };
    Some(Own {
        state: OwnState {
            possible,
            hideable: hidden_by(&c.now),
            shown,
            exact: exact && !undated,
        },
        explained,
        // (Where the system dates its states, the same state set again is a change.)
        unchanged: !caps.source_timestamps
            && !c.changed
            && prev.is_some_and(|p| {
                p.availability == a && p.native.code.eq_ignore_ascii_case(&obs.native.code)
            }),
        contribution: describe(&c.now),
        exact,
        shows_presyncs: !exact,
        undated,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{contribution_ctx, obs, teams_view};
    use super::*;
    use crate::model::ObservedState;
    use Availability::*;

    const T0: Millis = 1_000_000;

    #[test]
    fn an_aggregate_showing_presyncs_own_contribution_hides_the_person_beneath_it() {
        let mut v = teams_view(Some(Busy), T0);
        v.systems
            .get_mut(&SystemId::from("teams"))
            .unwrap()
            .observed = None;
        let mut o = obs("teams", Busy, T0 + 10);
        o.native = NativeState::new("Busy/InACall");
        let own = observe(&o, Busy, &v, contribution_ctx(T0 + 10)).unwrap();
        assert_eq!(own.state.possible, AvailabilitySet::up_to(Busy));
        assert_eq!(own.state.shown, None);
    }

    #[test]
    fn lowering_presyncs_session_over_a_person_who_was_available_all_along_is_explained() {
        // presync's Busy session showed; presync then lowered it to Away (written at T0 + 50),
        // and the person's own Available shows.
        let mut v = teams_view(Some(Away), T0 + 50);
        v.systems
            .get_mut(&SystemId::from("teams"))
            .unwrap()
            .observed = Some(ObservedState {
            own: Some(OwnState {
                possible: AvailabilitySet::up_to(Busy),
                hideable: AvailabilitySet::up_to(Busy),
                shown: None,
                exact: false,
            }),
            ..super::super::tests::observed(Busy, T0)
        });
        let o = obs("teams", Available, T0 + 100);
        let own = observe(&o, Available, &v, contribution_ctx(T0 + 100)).unwrap();
        assert!(own.explained, "{own:?}");
        assert_eq!(own.state.possible, AvailabilitySet::only(Available));
        assert_eq!(own.state.shown.unwrap().availability, Available);
    }

    #[test]
    fn a_change_of_the_aggregate_with_presyncs_contribution_unchanged_is_news() {
        let mut v = teams_view(Some(Away), T0 - 500);
        v.systems
            .get_mut(&SystemId::from("teams"))
            .unwrap()
            .observed = Some(ObservedState {
            own: Some(OwnState {
                possible: AvailabilitySet::only(Available),
                hideable: AvailabilitySet::up_to(Away),
                shown: None,
                exact: false,
            }),
            ..super::super::tests::observed(Available, T0)
        });
        let o = obs("teams", DoNotDisturb, T0 + 100);
        let own = observe(&o, DoNotDisturb, &v, contribution_ctx(T0 + 100)).unwrap();
        assert!(!own.explained);
        assert_eq!(own.state.possible, AvailabilitySet::only(DoNotDisturb));
    }

    #[test]
    fn a_revealed_state_the_person_cannot_have_had_before_is_news() {
        // The person was known to be DoNotDisturb; presync withdrew its session and the
        // aggregate shows Available: the person changed.
        let mut v = teams_view(None, T0 + 50);
        v.systems
            .get_mut(&SystemId::from("teams"))
            .unwrap()
            .observed = Some(ObservedState {
            own: Some(OwnState {
                possible: AvailabilitySet::only(DoNotDisturb),
                hideable: AvailabilitySet::EMPTY,
                shown: None,
                exact: false,
            }),
            ..super::super::tests::observed(DoNotDisturb, T0)
        });
        let o = obs("teams", Available, T0 + 100);
        let own = observe(&o, Available, &v, contribution_ctx(T0 + 100)).unwrap();
        assert!(!own.explained);
    }

    #[test]
    fn a_meeting_showing_over_presyncs_busy_session_is_the_persons_own() {
        let v = teams_view(Some(Busy), T0);
        let mut o = obs("teams", Busy, T0 + 100);
        o.native = NativeState::new("Busy/InAMeeting");
        let own = observe(&o, Busy, &v, contribution_ctx(T0 + 100)).unwrap();
        let shown = own.state.shown.unwrap();
        assert_eq!(shown.native.code, "Busy/InAMeeting");
        // presync's own Busy/InACall is not.
        let mut o = obs("teams", Busy, T0 + 200);
        o.native = NativeState::new("Busy/InACall");
        let own = observe(&o, Busy, &v, contribution_ctx(T0 + 200)).unwrap();
        assert_eq!(own.state.shown, None);
    }
}
