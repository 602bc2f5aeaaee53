//! The replay: one representative's day, from the simulators' records, into what each system
//! should show at each moment.
//!
//! The rules, as presync promises them (README, "What presync promises"), and nothing of how
//! presync implements them:
//!
//! - A **genuine change** is one the person made, or a system's own automation: in D365 every
//!   change not made through `CCaaS_ModifyAgentPresence`; in Teams a change of what Teams shows
//!   caused by the person (Graph's record of every edit says who made it, and what Teams showed
//!   after), while what Teams shows is the person's own state. A change Teams shows only because presync's own session or preferred
//!   presence changed, or faded, is not genuine: it reveals the person's own state, which
//!   counts for holds, and nothing else. Nor is one that looks just like presync's own session
//!   (a Teams call under presync's Busy, both `Busy/InACall`): no one reading Teams can tell
//!   the two apart.
//! - **Last writer wins** among genuine changes: the newest is what the representative is
//!   doing, and presync writes it to the other system (D365 takes nothing while signed out).
//! - **Holds**: while what Teams last showed of the person is a holding state (a meeting, a
//!   call, presenting), D365 should show the hold's presence, unless it shows a state of the
//!   person's own (or of D365's automation) that is not routable. When the holding state ends
//!   with the person back to Available, or when it ends unseen, D365 goes back to its own: that
//!   state of the person's if there is one, else what its automation gives the person's
//!   capacity. When it ends with a state the person chose, the last writer wins.
//! - presync's Teams session (or preferred presence) says the canonical state when that comes
//!   from D365, and is withdrawn when it comes from Teams (session mode); Offline is a
//!   withdrawal. While a hold holds, a session that would hide the holding state (of its rank
//!   or higher; any preferred presence) is withdrawn instead: Teams shows the person's meeting,
//!   and its end.
//! - **D365's automation** (dataverse.md §2.4) applies to what D365 should show as it does to
//!   what it shows: at each accept or close, a presence that is not sticky (a hand-chosen or,
//!   with `api_presence_is_manual`, API-set Away, Busy - DND or Offline is) becomes what the
//!   capacity gives. So a release written a moment late, after a conversation closed, is right
//!   to write what the capacity gives then.
//! - presync learns a Teams change when a read of its completes (or a notification carrying
//!   the state arrives); until it can know that a hold ended, D365 may still show the hold, and
//!   presync's part what it was.

use presync_dataverse::sim::{ChangeCause as DvCause, SimChange, SystemReason};
use presync_engine::config::state_matches;
use presync_engine::{Availability, Millis, NativeState};
use presync_teams::mapping::Mapping;
use presync_teams::sim::{ChangeCause as TeamsCause, PresenceChange};

use super::timeline::{Allowed, Timeline};

/// The rules presync runs with, as far as the truth depends on them.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The hold: Teams states that hold D365, and the availability it is held at.
    pub hold: Option<(Vec<String>, Availability)>,
    /// What presync takes for routable (`engine.rules.routable`): a state of the person's own
    /// that is not is respected by a hold.
    pub routable: Vec<Availability>,
    /// presync's Teams write is its preferred presence (else a session of its own).
    pub preferred_mode: bool,
    /// Conversations that use a representative's capacity up (D365 gives Busy - DND then).
    pub full_at_conversations: i64,
    /// Whether D365 keeps an API-set Away, Busy - DND or Offline through recalculations as it
    /// keeps a hand-chosen one (the simulator's `api_presence_is_manual`, UNCONFIRMED).
    pub api_presence_is_manual: bool,
    /// presync's application: its Teams session, showing the same pair as the person, hides
    /// them (neither presync nor anyone reading Teams can tell the two apart).
    pub app_id: String,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            hold: Some((
                ["InAMeeting", "InACall", "Presenting"]
                    .map(str::to_owned)
                    .to_vec(),
                Availability::DoNotDisturb,
            )),
            routable: vec![Availability::Available, Availability::Busy],
            preferred_mode: false,
            full_at_conversations: 2,
            api_presence_is_manual: true,
            app_id: crate::harness::APP_ID.to_owned(),
        }
    }
}

/// What one representative's systems should show, over time.
#[derive(Debug, Clone)]
pub struct RepTruth {
    /// D365's presence (its base status).
    pub d365: Timeline<Allowed<Availability>>,
    /// presync's own Teams session or preferred presence (`None`: none, withdrawn).
    pub session: Timeline<Allowed<Option<Availability>>>,
    /// Whether a hold holds D365.
    pub held: Timeline<bool>,
    /// The representative's canonical availability.
    pub canonical: Timeline<Allowed<Availability>>,
    /// Genuine changes: (in D365, in Teams).
    pub genuine: (u64, u64),
    /// Times presync could not know the order of a Teams change and a D365 change.
    pub ambiguous: u64,
    /// Every Teams change, with when presync could first know of it: (when, known at).
    pub learnt: Vec<(Millis, Millis)>,
}

impl RepTruth {
    /// When presync could first know of the Teams change made at `t`, if one was.
    pub fn known_at(&self, t: Millis) -> Option<Millis> {
        self.learnt
            .iter()
            .find(|(at, _)| *at == t)
            .map(|(_, known)| *known)
    }
}

/// One representative's record.
#[derive(Debug, Default)]
pub struct RepRecord<'a> {
    pub d365: Vec<&'a SimChange>,
    pub teams: Vec<&'a PresenceChange>,
    /// Every change of the open conversations: (when, how many are open after it).
    pub conversations: Vec<(Millis, i64)>,
    /// presync's successful reads of the person's Teams presence, in order: (when the read
    /// took its snapshot, when its answer reached presync).
    pub reads: Vec<(Millis, Millis)>,
    /// When Graph delivered a change notification for the person that presync accepted.
    pub notified: Vec<Millis>,
}

impl RepRecord<'_> {
    /// When presync last saw the person's Teams presence before `t`.
    fn seen_before(&self, t: Millis) -> Millis {
        let i = self.reads.partition_point(|(r, _)| *r < t);
        i.checked_sub(1).map_or(Millis::MIN, |i| self.reads[i].0)
    }

    /// The conversations open at `t`.
    fn open_at(&self, t: Millis) -> i64 {
        let i = self.conversations.partition_point(|(at, _)| *at <= t);
        i.checked_sub(1).map_or(0, |i| self.conversations[i].1)
    }

    /// Whether D365 recorded a change of its own with the conversations' change at `t` (a
    /// recalculation, a sign-out closing them; stamped within a few milliseconds of it).
    fn d365_changed_itself_at(&self, t: Millis) -> bool {
        self.d365
            .iter()
            .any(|c| matches!(c.cause, DvCause::System(_)) && (t..=t + 5).contains(&c.at_ms))
    }

    /// When presync could first know of a Teams change at `t`: the first notification carrying
    /// it delivered, or the completion of presync's first read after it.
    fn known_at(&self, t: Millis) -> Millis {
        let read = self.reads[self.reads.partition_point(|(r, _)| *r < t)..]
            .iter()
            .map(|(_, answered)| *answered)
            .min();
        let notified = self
            .notified
            .get(self.notified.partition_point(|n| *n < t))
            .copied();
        [read, notified]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Millis::MAX)
    }
}

enum Event<'a> {
    D365(&'a SimChange),
    Teams(&'a PresenceChange),
    /// The conversations open changed: (when, how many now).
    Conversations(Millis, i64),
}

impl Event<'_> {
    fn at(&self) -> Millis {
        match self {
            Event::D365(c) => c.at_ms,
            Event::Teams(c) => c.at,
            Event::Conversations(at, _) => *at,
        }
    }
}

/// Whether a presence with this base status, chosen by hand, lasts through recalculations.
fn sticky_base(a: Availability) -> bool {
    matches!(
        a,
        Availability::Away | Availability::DoNotDisturb | Availability::Offline
    )
}

/// Where the canonical state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    D365,
    Teams,
}

/// The last genuine change, the one the canonical state comes from.
#[derive(Debug, Clone, Copy)]
struct Winner {
    source: Source,
    at: Millis,
    availability: Availability,
    /// For a Teams change: when presync could first know of it.
    known_at: Millis,
}

struct Day<'r> {
    rules: &'r Rules,
    truth: RepTruth,
    /// What D365 shows, and whether a genuine change put it there.
    d365_shows: Availability,
    d365_genuine: bool,
    signed_in: bool,
    /// Whether what D365 should show lasts through recalculations.
    expected_sticky: bool,
    /// Whether the presence D365 showed at a disconnect lasted through recalculations: its
    /// restore brings that back too.
    sticky_before_disconnect: bool,
    /// The person's own Teams state, as Teams last showed it.
    own_shown: (String, String),
    /// The person's own Teams state as their last edit left it (whether or not it showed),
    /// and when they made that edit.
    own_edit: ((String, String), Millis),
    /// Since when Teams has not shown the person's own state (presync's part hid it, or looked
    /// just like it); `None` while it shows.
    own_hidden_since: Option<Millis>,
    /// What Teams showed last.
    teams_shows: (String, String),
    winner: Option<Winner>,
    /// A release presync cannot know of yet: from when it can, D365 and presync's part should
    /// show only what the release gives.
    unseen_release: Option<UnseenRelease>,
}

/// What each line allowed while a release was unseen, and what it narrows to once seen.
struct UnseenRelease {
    known_at: Millis,
    d365: (Allowed<Availability>, Allowed<Availability>),
    session: (Allowed<Option<Availability>>, Allowed<Option<Availability>>),
    /// A routable choice made in D365 meanwhile: presync, taking it for one made during the
    /// hold, may release to what D365's automation gives instead.
    chose_routable: bool,
}

fn teams_availability(pair: &(String, String)) -> Availability {
    Mapping::to_canonical(&NativeState::new(format!("{}/{}", pair.0, pair.1))).availability
}

/// Offline is written as a withdrawal.
fn session_for(a: Availability) -> Option<Availability> {
    (a != Availability::Offline).then_some(a)
}

/// What D365's automation gives a representative with `n` conversations (dataverse.md §2.4).
fn automatic(n: i64, full: i64) -> Availability {
    match n {
        n if n <= 0 => Availability::Available,
        n if n >= full => Availability::DoNotDisturb,
        _ => Availability::Busy,
    }
}

impl Day<'_> {
    fn holding(&self) -> bool {
        let code = format!("{}/{}", self.own_shown.0, self.own_shown.1);
        self.rules
            .hold
            .as_ref()
            .is_some_and(|(states, _)| states.iter().any(|s| state_matches(s, &code)))
    }

    fn respected(&self) -> bool {
        self.d365_genuine && !self.rules.routable.contains(&self.d365_shows)
    }

    /// presync's Teams part when the canonical state `a` comes from `source`: its session (or
    /// preferred presence) says a D365 state, and is withdrawn for a Teams one (a preferred
    /// presence of presync's stays as it was).
    fn session_of(&self, source: Source, a: Availability) -> Option<Allowed<Option<Availability>>> {
        match source {
            Source::D365 => Some(Allowed::one(self.in_sight(session_for(a)))),
            Source::Teams if !self.rules.preferred_mode => Some(Allowed::one(None)),
            Source::Teams => None,
        }
    }

    /// presync's Teams part `part`, unless a hold holds and it would hide the holding state:
    /// then none.
    fn in_sight(&self, part: Option<Availability>) -> Option<Availability> {
        if !*self.truth.held.last() {
            return part;
        }
        let holding = teams_availability(&self.own_shown);
        part.filter(|p| !self.rules.preferred_mode && p.aggregate_rank() < holding.aggregate_rank())
    }

    fn canonical(&mut self, t: Millis, source: Source, a: Availability, known_at: Millis) {
        self.winner = Some(Winner {
            source,
            at: t,
            availability: a,
            known_at,
        });
        self.truth.canonical.set(t, Allowed::one(a));
        if let Some(s) = self.session_of(source, a) {
            self.truth.session.set(t, s);
        }
    }

    /// What D365 shows when presync writes `a` there: `a`, unless D365 is signed out.
    fn written(&self, a: Availability) -> Availability {
        if self.signed_in {
            a
        } else {
            Availability::Offline
        }
    }

    fn write_d365(&mut self, t: Millis, a: Availability) {
        let shown = self.written(a);
        self.expected_sticky = self.rules.api_presence_is_manual && sticky_base(shown);
        self.truth.d365.set(t, Allowed::one(shown));
    }

    /// The conversations open changed at `t` and D365 recorded no recalculation of its own
    /// (it showed a sticky presence of presync's, or presync's write is still to come): what
    /// D365 should show recalculates all the same, unless it is sticky or held. That is D365's
    /// own change.
    fn conversations_change(&mut self, t: Millis, open: i64) {
        if !self.signed_in || self.expected_sticky || *self.truth.held.last() {
            return;
        }
        let auto = automatic(open, self.rules.full_at_conversations);
        if self.truth.d365.last().values() == [auto] {
            return;
        }
        self.truth.genuine.0 += 1;
        self.canonical(t, Source::D365, auto, t);
        self.truth.d365.set(t, Allowed::one(auto));
    }

    fn hold_at(&self) -> Availability {
        self.rules
            .hold
            .as_ref()
            .map_or(Availability::DoNotDisturb, |(_, a)| *a)
    }

    /// presync cannot know whether `other`, not `now`, is the newer of the two: either
    /// winner's states are allowed from `t` on (D365 follows only when no hold decides it).
    fn either(&mut self, t: Millis, other: Winner) {
        self.truth.ambiguous += 1;
        let widen = |line: &mut Timeline<Allowed<Availability>>, v: Availability| {
            let wider = line.last().clone().or(&Allowed::one(v));
            line.set(t, wider);
        };
        widen(&mut self.truth.canonical, other.availability);
        if let Some(s) = self.session_of(other.source, other.availability) {
            let wider = self.truth.session.last().clone().or(&s);
            self.truth.session.set(t, wider);
        }
        if !*self.truth.held.last() {
            let d365 = match other.source {
                // D365's own genuine state stands.
                Source::D365 => self.d365_shows,
                Source::Teams => self.written(other.availability),
            };
            widen(&mut self.truth.d365, d365);
        }
    }

    fn d365_change(&mut self, c: &SimChange) {
        let t = c.at_ms;
        self.d365_shows = c.base;
        self.d365_genuine = c.cause.is_genuine();
        // (presync's own writes make what D365 should show only as the truth has them.)
        match &c.cause {
            DvCause::Agent => self.expected_sticky = sticky_base(c.base),
            DvCause::System(SystemReason::Disconnected) => {
                self.sticky_before_disconnect = self.expected_sticky;
                self.expected_sticky = false;
            }
            DvCause::System(SystemReason::Restored) => {
                self.expected_sticky = self.sticky_before_disconnect;
            }
            DvCause::System(_) => self.expected_sticky = false,
            DvCause::Api { .. } => {}
        }
        match c.cause {
            DvCause::System(SystemReason::SignedOut | SystemReason::Disconnected) => {
                self.signed_in = false
            }
            _ => self.signed_in = true,
        }
        if !c.cause.is_genuine() {
            return;
        }
        self.truth.genuine.0 += 1;
        let before = self.winner;
        self.canonical(t, Source::D365, c.base, t);
        let held = *self.truth.held.last();
        if held && !self.respected() {
            let at = self.hold_at();
            self.write_d365(t, at);
        } else {
            self.truth.d365.set(t, Allowed::one(c.base));
        }
        // A routable change while presync cannot know yet that the hold is over: it may be
        // put back as held still, until presync can know.
        if !held && !self.respected() && self.unseen_release.is_some() {
            let wide = Allowed::one(c.base).or(&Allowed::one(self.written(self.hold_at())));
            self.truth.d365.set(t, wide.clone());
            // presync's part follows either: this choice, or what the release gives.
            let session = self.truth.session.last().clone();
            if let Some(u) = self.unseen_release.as_mut() {
                u.d365 = (wide, Allowed::one(c.base));
                u.session = (session.clone(), session);
                u.chose_routable = true;
            }
        }
        // A Teams change presync had not learnt of yet may come to it as the newer.
        if let Some(w) = before.filter(|w| w.source == Source::Teams && t < w.known_at) {
            self.either(t, w);
        }
    }

    fn teams_change(&mut self, c: &PresenceChange, conversations: i64, rec: &RepRecord<'_>) {
        let t = c.at;
        // Teams shows the person's own state, unless it shows what presync's session says (or
        // something that looks just like it: a call under presync's Busy, both Busy/InACall).
        // Then the person's own state lies beneath it, of its rank or lower, and whatever the
        // person was last seen doing that ranks higher (or the same: the person's would show
        // first) is over.
        let looks_like_ours = c
            .apps
            .iter()
            .any(|(app, shown)| app.eq_ignore_ascii_case(&self.rules.app_id) && *shown == c.shown);
        let visible = c.internal == c.own && !looks_like_ours;
        if c.cause == TeamsCause::Person && c.own != self.own_edit.0 {
            self.own_edit = (c.own.clone(), t);
        }
        // A state the person set while it could not be told from presync's own part (a status
        // chosen just like presync's session), shown as theirs once presync's part changed: a
        // change of theirs, made when they made it, which presync learns now. It is news if it
        // is newer than the change the canonical state comes from.
        let candidate = c.cause != TeamsCause::Person
            && visible
            && c.own != self.own_shown
            && c.own == self.own_edit.0;
        let revealed = candidate && self.winner.is_some_and(|w| self.own_edit.1 > w.at);
        // Made before that change, but hidden since before it: presync, which saw the person
        // last before both, cannot tell which came first, and may take it for the newer.
        let unordered = candidate
            && !revealed
            && self
                .winner
                .zip(self.own_hidden_since)
                .is_some_and(|(w, hidden)| w.at > hidden);
        self.own_hidden_since = match visible {
            true => None,
            false => self.own_hidden_since.or(Some(t)),
        };
        // presync's part covers a state of the person's of its rank or lower (a call under
        // presync's Busy session, a meeting under its Do not disturb) before presync could
        // know of that state: a read of Teams shows presync its own part, and the person's
        // own is hidden beneath it.
        let rank = |p: &(String, String)| teams_availability(p).aggregate_rank();
        let covered_unseen = looks_like_ours
            && c.cause != TeamsCause::Person
            && rank(&c.internal) >= rank(&self.own_shown)
            && rec.known_at(self.own_edit.1) > t;
        // Or presync's part shows where the person's own state, of its rank or higher, was:
        // that state is over, and what replaced it is hidden beneath presync's part.
        let replaced_unseen = looks_like_ours
            && self.own_shown != c.internal
            && rank(&self.own_shown) >= rank(&c.internal);
        if visible {
            self.own_shown = c.own.clone();
        } else if covered_unseen || replaced_unseen {
            self.own_shown = ("PresenceUnknown".to_owned(), "PresenceUnknown".to_owned());
        }
        let changed = c.internal != self.teams_shows;
        self.teams_shows = c.internal.clone();
        let genuine = c.cause == TeamsCause::Person && visible && changed || revealed;
        let a = teams_availability(&c.internal);
        let was = *self.truth.held.last();
        let now = self.holding();
        self.truth.held.set(t, now);
        let known_at = rec.known_at(t);
        self.truth.learnt.push((t, known_at));
        let before = self.winner;
        if genuine {
            self.truth.genuine.1 += 1;
            // The person's chosen status takes the slot presync's preferred presence was in.
            if self.rules.preferred_mode && c.own_preferred {
                self.truth.session.set(t, Allowed::one(None));
            }
        }
        match (was, now) {
            (_, true) => {
                if genuine {
                    self.canonical(t, Source::Teams, a, known_at);
                }
                let capped = self.truth.session.last().map(|p| self.in_sight(*p));
                self.truth.session.set(t, capped);
                if !self.respected() {
                    let at = self.hold_at();
                    self.write_d365(t, at);
                }
            }
            (true, false) => {
                let held = (
                    self.truth.d365.last().clone(),
                    self.truth.session.last().clone(),
                );
                self.release(t, a, genuine, known_at, conversations);
                if known_at > t {
                    self.unseen(t, known_at, held);
                }
            }
            (false, false) if genuine => {
                self.canonical(t, Source::Teams, a, known_at);
                self.write_d365(t, a);
            }
            (false, false) => {}
        }
        if revealed {
            // Dated when the person made it.
            if let Some(w) = self.winner.as_mut().filter(|w| w.source == Source::Teams) {
                w.at = self.own_edit.1;
            }
        }
        if unordered {
            let other = Winner {
                source: Source::Teams,
                at: self.own_edit.1,
                availability: a,
                known_at,
            };
            self.either(t, other);
        }
        // A D365 change made since presync last read Teams may be taken for the newer: Teams
        // dates nothing, and a change presync finds by a read happened at some moment since.
        let seen = rec.seen_before(t);
        let changed_winner = self.winner.is_some_and(|w| w.at == t);
        if let Some(w) = before
            .filter(|w| changed_winner && w.source == Source::D365 && w.at > seen && w.at <= t)
        {
            self.either(t, w);
        }
    }

    /// The holding state ended at `t` with `a` in Teams.
    fn release(
        &mut self,
        t: Millis,
        a: Availability,
        genuine: bool,
        known_at: Millis,
        conversations: i64,
    ) {
        if self.respected() {
            // The person's own state that is not routable: D365 keeps it.
            let own = self.d365_shows;
            self.canonical(t, Source::D365, own, t);
        } else if genuine && a != Availability::Available {
            self.canonical(t, Source::Teams, a, known_at);
            self.write_d365(t, a);
        } else {
            let resumed = automatic(conversations, self.rules.full_at_conversations);
            self.canonical(t, Source::D365, resumed, t);
            self.write_d365(t, resumed);
            // What D365's automation gives it goes on giving (presync follows it where D365
            // would keep what it wrote).
            self.expected_sticky = false;
        }
    }

    /// A release at `t` that presync can know of only at `known_at`: until then what D365 and
    /// presync's part showed while held is allowed too.
    fn unseen(
        &mut self,
        t: Millis,
        known_at: Millis,
        (d365, session): (Allowed<Availability>, Allowed<Option<Availability>>),
    ) {
        let released = (
            self.truth.d365.last().clone(),
            self.truth.session.last().clone(),
        );
        let wide = (
            released.0.clone().or(&d365),
            released.1.clone().or(&session),
        );
        self.truth.d365.set(t, wide.0.clone());
        self.truth.session.set(t, wide.1.clone());
        self.unseen_release = Some(UnseenRelease {
            known_at,
            d365: (wide.0, released.0),
            session: (wide.1, released.1),
            chose_routable: false,
        });
    }

    /// Narrow what an unseen release allowed, once presync can know of it (by `now`): unless
    /// something changed either line since.
    fn catch_up(&mut self, now: Millis, rec: &RepRecord<'_>) {
        let Some(u) = self.unseen_release.take_if(|u| u.known_at <= now) else {
            return;
        };
        let (mut d365, mut session) = (u.d365.1, u.session.1);
        if u.chose_routable {
            let open = rec.open_at(u.known_at);
            let resumed = self.written(automatic(open, self.rules.full_at_conversations));
            d365 = d365.or(&Allowed::one(resumed));
            session = session.or(&Allowed::one(self.in_sight(session_for(resumed))));
            let canonical = self
                .truth
                .canonical
                .last()
                .clone()
                .or(&Allowed::one(resumed));
            self.truth.canonical.set(u.known_at, canonical);
        }
        if *self.truth.d365.last() == u.d365.0 {
            self.truth.d365.set(u.known_at, d365);
        }
        if *self.truth.session.last() == u.session.0 {
            self.truth.session.set(u.known_at, session);
        }
    }
}

/// Replay one representative's record: everyone starts signed in to both systems and
/// Available, as the soak and the demo start them.
pub fn replay(rec: &RepRecord<'_>, rules: &Rules, start: Millis) -> RepTruth {
    let available = Availability::Available;
    let mut day = Day {
        rules,
        truth: RepTruth {
            d365: Timeline::new(start, Allowed::one(available)),
            // presync adopts both systems' Available: with a session of its own, or none.
            session: Timeline::new(start, Allowed::one(Some(available)).or(&Allowed::one(None))),
            held: Timeline::new(start, false),
            canonical: Timeline::new(start, Allowed::one(available)),
            genuine: (0, 0),
            ambiguous: 0,
            learnt: Vec::new(),
        },
        d365_shows: available,
        d365_genuine: true,
        signed_in: true,
        expected_sticky: false,
        sticky_before_disconnect: false,
        own_shown: ("Available".to_owned(), "Available".to_owned()),
        own_edit: (("Available".to_owned(), "Available".to_owned()), start),
        own_hidden_since: None,
        teams_shows: ("Available".to_owned(), "Available".to_owned()),
        winner: None,
        unseen_release: None,
    };
    let mut events: Vec<Event> = rec
        .d365
        .iter()
        .map(|c| Event::D365(c))
        .chain(rec.teams.iter().map(|c| Event::Teams(c)))
        .chain(
            rec.conversations
                .iter()
                .map(|&(at, open)| Event::Conversations(at, open)),
        )
        .filter(|e| e.at() >= start)
        .collect();
    // Stable: within one millisecond, each simulator's own order.
    events.sort_by_key(Event::at);
    for e in events {
        day.catch_up(e.at(), rec);
        match e {
            Event::D365(c) => day.d365_change(c),
            Event::Teams(c) => day.teams_change(c, rec.open_at(c.at), rec),
            Event::Conversations(at, open) => {
                if !rec.d365_changed_itself_at(at) {
                    day.conversations_change(at, open);
                }
            }
        }
    }
    day.catch_up(Millis::MAX, rec);
    day.truth
}

#[cfg(test)]
mod tests {
    use super::*;
    use presync_teams::sim::ValueSchema;
    use Availability::*;

    fn d365(at: Millis, base: Availability, cause: DvCause) -> SimChange {
        SimChange {
            agent_id: "agent".into(),
            at_ms: at,
            presence_id: base.as_str().into(),
            base,
            cause,
        }
    }

    /// Reads answered at once.
    fn reads(at: &[Millis]) -> Vec<(Millis, Millis)> {
        at.iter().map(|t| (*t, *t)).collect()
    }

    fn pair(s: &str) -> (String, String) {
        let (a, b) = s.split_once('/').unwrap();
        (a.to_owned(), b.to_owned())
    }

    fn teams(at: Millis, shown: &str, own: &str, cause: TeamsCause) -> PresenceChange {
        PresenceChange {
            user: "aad".into(),
            at,
            shown: pair(shown),
            internal: pair(shown),
            schema: ValueSchema::Legacy,
            sequence_number: String::new(),
            cause,
            own: pair(own),
            own_preferred: false,
            apps: Vec::new(),
        }
    }

    fn app() -> TeamsCause {
        TeamsCause::App {
            app_id: "presync".into(),
        }
    }

    #[test]
    fn a_break_revealing_the_teams_client_is_not_undone() {
        let dv = [
            d365(10, Busy, DvCause::System(SystemReason::Recalculated)),
            d365(20, Away, DvCause::Agent),
        ];
        let tm = [
            teams(12, "Busy/InACall", "Available/Available", app()),
            // presync lowers its session to Away: the client's Available shows.
            teams(22, "Available/Available", "Available/Available", app()),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(10, 1)],
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.last().values(), [Away]);
        assert_eq!(t.canonical.last().values(), [Away]);
        assert_eq!(t.session.last().values(), [Some(Away)]);
        assert_eq!(t.genuine, (2, 0));
    }

    #[test]
    fn a_status_chosen_just_like_presyncs_session_is_the_persons_once_it_shows_as_theirs() {
        let ours = |shown: &str| vec![(crate::harness::APP_ID.to_owned(), pair(shown))];
        let chosen =
            |at: Millis, apps: Vec<(String, (String, String))>, cause: TeamsCause| PresenceChange {
                own_preferred: true,
                apps,
                ..teams(at, "Away/Away", "Away/Away", cause)
            };
        let dv = [
            d365(10, Away, DvCause::Agent),
            d365(20, Available, DvCause::Agent),
        ];
        let tm = [
            // presync's Away session beneath the person's client (Available shows).
            PresenceChange {
                apps: ours("Away/Away"),
                ..teams(12, "Available/Available", "Available/Available", app())
            },
            // The person chooses Away while presync's session is Away: nothing shows.
            chosen(30, ours("Away/Away"), TeamsCause::Person),
            // presync's session goes to Available (D365's change at 20): the chosen Away still
            // shows, and is now told from presync's part.
            chosen(35, ours("Available/Available"), app()),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            reads: reads(&[0, 13, 31, 36]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        // Not news while it looked like presync's own.
        assert_eq!(t.canonical.at(32).values(), [Available]);
        assert_eq!(t.session.at(32).values(), [Some(Available)]);
        // The person's, made at 30, after D365's change at 20: the last writer.
        assert_eq!(t.canonical.at(36).values(), [Away]);
        assert_eq!(t.d365.at(36).values(), [Away]);
        assert_eq!(t.session.at(36).values(), [None]);
        assert_eq!(t.genuine, (2, 1));
        // Made before D365's change, it is not; but it was hidden (looking just like
        // presync's session) from the moment it was made, so presync cannot order it against
        // that change, and may take it for the newer: either.
        let dv = [
            d365(10, Away, DvCause::Agent),
            d365(33, Available, DvCause::Agent),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            ..rec
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.canonical.at(34).values(), [Available]);
        assert_eq!(t.canonical.at(36).values(), [Available, Away]);
        assert_eq!(t.ambiguous, 1);
        assert_eq!(t.genuine, (2, 0));
    }

    #[test]
    fn a_call_presyncs_busy_session_covers_before_presync_could_know_of_it_holds_nothing() {
        let ours = |shown: &str| vec![(crate::harness::APP_ID.to_owned(), pair(shown))];
        let dv = [d365(20, Busy, DvCause::System(SystemReason::Recalculated))];
        let tm = [
            // The person's call starts; 2 ms later presync's Busy session (a conversation in
            // D365) covers it, looking just like it.
            PresenceChange {
                apps: ours("Available/Available"),
                ..teams(21, "Busy/InACall", "Busy/InACall", TeamsCause::Person)
            },
            PresenceChange {
                apps: ours("Busy/InACall"),
                ..teams(23, "Busy/InACall", "Busy/InACall", app())
            },
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(20, 1)],
            // presync's first read after the call was answered after its session landed.
            reads: reads(&[0, 25]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert!(!*t.held.at(30));
        assert_eq!(t.d365.at(30).values(), [Busy]);
        assert_eq!(t.session.at(30).values(), [Some(Busy)]);
        // Read before presync's session covered it: presync saw the call, which holds.
        let rec = RepRecord {
            reads: reads(&[0, 22]),
            ..rec
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert!(*t.held.at(30));
        assert_eq!(t.d365.at(30).values(), [DoNotDisturb]);
    }

    #[test]
    fn a_meeting_presyncs_do_not_disturb_covers_before_presync_could_know_of_it_holds_nothing() {
        let ours = |shown: &str| vec![(crate::harness::APP_ID.to_owned(), pair(shown))];
        let dv = [
            d365(
                20,
                DoNotDisturb,
                DvCause::System(SystemReason::Recalculated),
            ),
            d365(40, Busy, DvCause::System(SystemReason::Recalculated)),
        ];
        let tm = [
            // The person's meeting starts; presync's Do not disturb session (D365 at full
            // capacity), held back by a Retry-After, lands over it before presync reads Teams.
            PresenceChange {
                apps: ours("Available/Available"),
                ..teams(21, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person)
            },
            PresenceChange {
                apps: ours("DoNotDisturb/Presenting"),
                ..teams(23, "DoNotDisturb/Presenting", "Busy/InAMeeting", app())
            },
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(20, 2), (40, 1)],
            reads: reads(&[0, 25]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert!(!*t.held.at(30), "presync's read showed it its own session");
        assert_eq!(t.session.at(45).values(), [Some(Busy)]);
        // Read before presync's session covered it: the meeting holds, and presync's part
        // stays below it.
        let rec = RepRecord {
            reads: reads(&[0, 22]),
            ..rec
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert!(*t.held.at(30));
        assert_eq!(t.session.at(45).values(), [None]);
    }

    #[test]
    fn a_meeting_holds_and_its_end_resumes_what_capacity_gives() {
        let dv = [d365(5, Busy, DvCause::System(SystemReason::Recalculated))];
        let tm = [
            teams(10, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person),
            teams(
                30,
                "Busy/InACall",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1)],
            reads: reads(&[0, 12, 32]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(15).values(), [DoNotDisturb]);
        assert!(*t.held.at(15));
        // presync's Busy session (D365's conversation) would hide the meeting's end: none.
        assert_eq!(t.session.at(7).values(), [Some(Busy)]);
        assert_eq!(t.session.at(15).values(), [None]);
        // The meeting ended; Teams shows presync's session (Busy/InACall) over the client:
        // unseen, and the last thing seen of the person was the meeting: still held.
        assert!(*t.held.last());
        let tm = [
            teams(10, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person),
            teams(
                30,
                "Available/Available",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1)],
            reads: reads(&[0, 12, 32]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert!(!*t.held.last());
        assert_eq!(t.d365.last().values(), [Busy], "one conversation open");
        assert_eq!(t.session.last().values(), [Some(Busy)]);
    }

    #[test]
    fn a_recalculation_during_a_hold_is_put_back_and_a_break_is_respected() {
        let dv = [
            d365(20, Available, DvCause::System(SystemReason::Recalculated)),
            d365(40, Away, DvCause::Agent),
        ];
        let tm = [teams(
            10,
            "Busy/InAMeeting",
            "Busy/InAMeeting",
            TeamsCause::Person,
        )];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            reads: reads(&[0, 12]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(25).values(), [DoNotDisturb]);
        assert_eq!(t.d365.at(45).values(), [Away]);
    }

    #[test]
    fn a_d365_change_before_presync_could_know_of_a_teams_one_allows_either_order() {
        let dv = [d365(20, Away, DvCause::Agent)];
        let tm = [teams(
            10,
            "DoNotDisturb/DoNotDisturb",
            "DoNotDisturb/DoNotDisturb",
            TeamsCause::Person,
        )];
        // The notification of the Teams change reached presync at 30: after D365's change.
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            notified: vec![30],
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.canonical.last().values(), [Away, DoNotDisturb]);
        assert_eq!(t.d365.last().values(), [Away, DoNotDisturb]);
        assert_eq!(t.ambiguous, 1);
        // Known before the D365 change: the order is known.
        let rec = RepRecord {
            notified: vec![15],
            ..rec
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.canonical.last().values(), [Away]);
        assert_eq!(t.ambiguous, 0);
    }

    #[test]
    fn a_teams_change_reaches_a_signed_in_d365_only() {
        let dv = [d365(5, Offline, DvCause::System(SystemReason::SignedOut))];
        let tm = [teams(
            10,
            "DoNotDisturb/DoNotDisturb",
            "DoNotDisturb/DoNotDisturb",
            TeamsCause::Person,
        )];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            reads: reads(&[0, 7, 12]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.last().values(), [Offline]);
        assert_eq!(t.canonical.last().values(), [DoNotDisturb]);
        assert_eq!(t.session.last().values(), [None]);
    }

    #[test]
    fn a_conversation_closed_before_a_late_release_recalculates_what_d365_should_show() {
        // A meeting, one conversation open; the meeting ends at 30 (release: Busy, what one
        // conversation gives); the conversation closes at 40 while D365 still shows presync's
        // hold, so D365 records nothing. D365 should show Available from 40: the release's
        // API-set Busy would have been recalculated.
        let dv = [
            d365(5, Busy, DvCause::System(SystemReason::Recalculated)),
            d365(
                12,
                DoNotDisturb,
                DvCause::Api {
                    caller: "app".into(),
                },
            ),
        ];
        let tm = [
            teams(10, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person),
            teams(
                30,
                "Available/Available",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1), (40, 0)],
            reads: reads(&[0, 12, 32]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(35).values(), [Busy]);
        assert_eq!(t.d365.last().values(), [Available]);
        assert_eq!(t.session.last().values(), [Some(Available)]);
        // A close while held changes nothing: the hold stands.
        let rec = RepRecord {
            conversations: vec![(5, 1), (20, 0)],
            ..rec
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(25).values(), [DoNotDisturb]);
        assert_eq!(
            t.d365.last().values(),
            [Available],
            "released to no conversation"
        );
    }

    #[test]
    fn a_release_presync_cannot_know_of_yet_allows_the_hold_until_it_can() {
        let dv = [d365(5, Busy, DvCause::System(SystemReason::Recalculated))];
        let tm = [
            teams(10, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person),
            teams(
                30,
                "Available/Available",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        // The read after the meeting's end started at 32 and was answered at 40.
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1)],
            reads: vec![(0, 0), (12, 12), (32, 40)],
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(35).values(), [Busy, DoNotDisturb]);
        assert_eq!(t.d365.at(45).values(), [Busy]);
        assert_eq!(t.session.at(35).values(), [Some(Busy), None]);
        assert_eq!(t.session.last().values(), [Some(Busy)]);
    }

    #[test]
    fn a_presence_restored_after_a_disconnect_keeps_its_stickiness() {
        // Held in a call, D365 at the hold's Busy - DND (API-set: sticky by default); the agent
        // is disconnected, the call ends, D365 restores the Busy - DND it had (its own doing,
        // newer), which a close later does not recalculate: D365 keeps what it restored.
        let dv = [
            d365(
                12,
                DoNotDisturb,
                DvCause::Api {
                    caller: "app".into(),
                },
            ),
            d365(20, Offline, DvCause::System(SystemReason::Disconnected)),
            d365(40, DoNotDisturb, DvCause::System(SystemReason::Restored)),
        ];
        let tm = [
            teams(10, "Busy/InACall", "Busy/InACall", TeamsCause::Person),
            teams(
                30,
                "Available/Available",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1), (50, 0)],
            reads: reads(&[0, 12, 32, 42]),
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(45).values(), [DoNotDisturb]);
        assert_eq!(t.d365.last().values(), [DoNotDisturb]);
        assert_eq!(t.canonical.last().values(), [DoNotDisturb]);
    }

    #[test]
    fn a_routable_choice_in_d365_before_presync_knows_a_hold_ended_allows_either_part() {
        // A meeting with a conversation open; it ends at 30, which presync reads at 40; the
        // person chooses Available in D365 at 35. presync, putting it back as held still and
        // then releasing, may write what the capacity gives (Busy) or follow the choice.
        let dv = [
            d365(5, Busy, DvCause::System(SystemReason::Recalculated)),
            d365(35, Available, DvCause::Agent),
        ];
        let tm = [
            teams(10, "Busy/InAMeeting", "Busy/InAMeeting", TeamsCause::Person),
            teams(
                30,
                "Available/Available",
                "Available/Available",
                TeamsCause::Person,
            ),
        ];
        let rec = RepRecord {
            d365: dv.iter().collect(),
            teams: tm.iter().collect(),
            conversations: vec![(5, 1)],
            reads: vec![(0, 0), (12, 12), (39, 40)],
            ..RepRecord::default()
        };
        let t = replay(&rec, &Rules::default(), 0);
        assert_eq!(t.d365.at(45).values(), [Available, Busy]);
        assert_eq!(t.session.at(45).values(), [Some(Available), Some(Busy)]);
    }
}
