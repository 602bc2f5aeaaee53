//! Teams presence as an aggregate (graph.md §4): the person's own client session (`person.rs`:
//! a base state plus meetings, calls, presenting and focusing), one session per application
//! (setPresence), and the preferred presence, combined at a given time. Pairs are held in the
//! legacy values and translated when they leave the simulator (`schema.rs`).
//!
//! Rules, and the choices made where graph.md is silent:
//! - The preferred presence beats every session, but only while at least one session exists;
//!   with no session the user is `Offline/Offline` (and a preferred presence still set shows
//!   again when a session appears, until it expires).
//! - Among sessions: DoNotDisturb > Busy > Available > Available/AvailableInactive >
//!   BeRightBack > Away. The 2025 availabilities rank like their legacy pairs (InAMeeting and
//!   InACall as Busy, Presenting and Focusing as DoNotDisturb), BusyIdle as Busy and
//!   AvailableIdle as a faded Available. An active Available beats a faded one (a person at
//!   their desk makes the user Available although presync's session has faded); BeRightBack
//!   sits just above Away as the stronger of the two "not here" signals. Any other
//!   availability ranks lowest. Among sessions of equal rank, the most recently set one shows
//!   (its activity wins).
//! - An application session posted as Available fades to `Available/AvailableInactive` 5 minutes
//!   after it was last posted and to `Away/Away` after 10; other states do not fade. The
//!   person's own client session does not fade (the person is taken to be active).
//! - A session ends at its expiry (`expirationDuration` after it was last posted); re-posting
//!   setPresence restarts both the fade and the expiry. A preferred presence ends at its own
//!   expiry.

use std::collections::BTreeMap;

use presync_engine::Millis;

use super::dates::MINUTE;
use super::person::Client;
use super::schema::{show, ValueSchema};

/// The pairs `setPresence` accepts (graph.md §2.3).
pub(crate) const SESSION_PAIRS: [(&str, &str); 5] = [
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
];

/// The pairs `setUserPreferredPresence` accepts (graph.md §2.3).
pub(crate) const PREFERRED_PAIRS: [(&str, &str); 6] = [
    ("Available", "Available"),
    ("Busy", "Busy"),
    ("DoNotDisturb", "DoNotDisturb"),
    ("BeRightBack", "BeRightBack"),
    ("Away", "Away"),
    ("Offline", "OffWork"),
];

/// After this long without a re-post, an Available application session is AvailableInactive.
pub(crate) const FADE_INACTIVE: Millis = 5 * MINUTE;
/// After this long without a re-post, an Available application session is Away.
pub(crate) const FADE_AWAY: Millis = 10 * MINUTE;
/// `expirationDuration` bounds and default for setPresence.
pub(crate) const SESSION_MIN: Millis = 5 * MINUTE;
pub(crate) const SESSION_MAX: Millis = 240 * MINUTE;
/// Default preferred-presence expiry: 1 day for DoNotDisturb and Busy, 7 days for the others.
pub(crate) const PREFERRED_SHORT: Millis = 1_440 * MINUTE;
pub(crate) const PREFERRED_LONG: Millis = 7 * 1_440 * MINUTE;

/// An availability/activity pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    pub availability: String,
    pub activity: String,
}

impl Pair {
    pub(crate) fn new(availability: &str, activity: &str) -> Pair {
        Pair {
            availability: availability.to_owned(),
            activity: activity.to_owned(),
        }
    }

    pub(crate) fn offline() -> Pair {
        Pair::new("Offline", "Offline")
    }

    pub(crate) fn tuple(&self) -> (String, String) {
        (self.availability.clone(), self.activity.clone())
    }

    /// Precedence among sessions (higher wins).
    fn rank(&self) -> u8 {
        match (self.availability.as_str(), self.activity.as_str()) {
            ("DoNotDisturb" | "Presenting" | "Focusing", _) => 6,
            ("Busy" | "BusyIdle" | "InAMeeting" | "InACall", _) => 5,
            ("Available", "AvailableInactive") | ("AvailableIdle", _) => 3,
            ("Available", _) => 4,
            ("BeRightBack", _) => 2,
            ("Away", _) => 1,
            _ => 0,
        }
    }
}

/// An application's session, as posted.
#[derive(Debug, Clone)]
pub(crate) struct AppSession {
    pub posted: Pair,
    pub posted_at: Millis,
    pub expires_at: Millis,
}

impl AppSession {
    /// The session's state at `now`, after fading.
    pub(crate) fn effective(&self, now: Millis) -> Pair {
        if self.posted.availability != "Available" {
            return self.posted.clone();
        }
        let idle = now - self.posted_at;
        if idle >= FADE_AWAY {
            Pair::new("Away", "Away")
        } else if idle >= FADE_INACTIVE {
            Pair::new("Available", "AvailableInactive")
        } else {
            self.posted.clone()
        }
    }
}

/// The preferred (user-configured) presence.
#[derive(Debug, Clone)]
pub(crate) struct Preferred {
    pub state: Pair,
    pub expires_at: Millis,
}

/// Which source shows when the person's own client and an application's session have the same
/// rank (both Busy, say). graph.md §4 gives the precedence of availabilities only; its
/// inference that "the user's own DND or Busy can outrank" an application's session suggests
/// the person's. UNCONFIRMED.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EqualRank {
    /// The person's own client shows (a meeting shows over an application's Busy session).
    #[default]
    PersonFirst,
    /// The source set most recently shows.
    MostRecent,
}

/// One user's presence sources and the last aggregate reported.
#[derive(Debug, Clone)]
pub(crate) struct UserPresence {
    /// The user id as added (its case is kept in payloads).
    pub id: String,
    /// Position in the order users were added, from 0 (for [`ValueSchema::Mixed`]).
    pub ordinal: usize,
    /// The value schema set for this user, if any (else the configured one).
    pub schema: Option<ValueSchema>,
    /// The person's own client, while signed in.
    pub client: Option<Client>,
    /// Application id -> its session.
    pub apps: BTreeMap<String, AppSession>,
    pub preferred: Option<Preferred>,
    /// The aggregate as last settled, held in the legacy values: a change of it is what
    /// notifications report.
    pub held: Pair,
    /// The sequence stamp of the aggregate's current version (`record.rs`).
    pub sequence: u64,
    /// Until when the aggregate cannot change unless a source is edited (the next fade or
    /// expiry); [`State::settle`](super::state::State::settle) skips the user before then. An
    /// edit goes through [`UserPresence::touch`].
    pub quiet_until: Millis,
    /// The person's own client outranks an application's session of the same rank
    /// ([`EqualRank::PersonFirst`]).
    pub person_first: bool,
}

impl UserPresence {
    pub(crate) fn new(id: &str, ordinal: usize, sequence: u64) -> UserPresence {
        UserPresence {
            id: id.to_owned(),
            ordinal,
            schema: None,
            client: None,
            apps: BTreeMap::new(),
            preferred: None,
            held: Pair::offline(),
            sequence,
            quiet_until: Millis::MIN,
            person_first: true,
        }
    }

    /// The user's value schema, `default` being the configured one: [`ValueSchema::V2025`] or
    /// [`ValueSchema::Legacy`].
    pub(crate) fn schema(&self, default: ValueSchema) -> ValueSchema {
        self.schema.unwrap_or(default).for_user(self.ordinal)
    }

    /// The aggregate as answered to clients, in the user's value schema.
    pub(crate) fn answered(&self, default: ValueSchema) -> Pair {
        show(&self.held, self.schema(default))
    }

    /// What the person's own sources alone show (held values): the preferred presence while
    /// signed in, else the client; `Offline/Offline` when signed out. Call
    /// [`UserPresence::expire`] first.
    pub(crate) fn own(&self) -> Pair {
        match (&self.client, &self.preferred) {
            (None, _) => Pair::offline(),
            (Some(_), Some(p)) => p.state.clone(),
            (Some(c), None) => c.state(),
        }
    }

    /// A source is about to be edited: settle the user at the next settle.
    pub(crate) fn touch(&mut self) -> &mut UserPresence {
        self.quiet_until = Millis::MIN;
        self
    }

    /// The earliest time after `now` at which a fade or an expiry can change the aggregate
    /// (`Millis::MAX` when none can), for sources as they are after [`UserPresence::expire`].
    fn next_change(&self, now: Millis) -> Millis {
        let apps = self.apps.values().flat_map(|s| {
            let fades = (s.posted.availability == "Available")
                .then_some([s.posted_at + FADE_INACTIVE, s.posted_at + FADE_AWAY]);
            fades
                .into_iter()
                .flatten()
                .chain(std::iter::once(s.expires_at))
        });
        let preferred = self.preferred.iter().map(|p| p.expires_at);
        apps.chain(preferred)
            .filter(|t| *t > now)
            .min()
            .unwrap_or(Millis::MAX)
    }

    /// Drop what has expired by `now`.
    pub(crate) fn expire(&mut self, now: Millis) {
        self.apps.retain(|_, s| now < s.expires_at);
        if self.preferred.as_ref().is_some_and(|p| now >= p.expires_at) {
            self.preferred = None;
        }
    }

    /// The aggregate at `now` (call [`UserPresence::expire`] first). Among sources of equal
    /// rank, the person's own client shows when `person_first` (see [`EqualRank`]), else the
    /// most recently set.
    pub(crate) fn aggregate(&self, now: Millis) -> Pair {
        // (person's own, when set): the person's ranks above an application's of the same rank.
        let client = self
            .client
            .iter()
            .map(|c| (c.state(), (self.person_first, c.since())));
        let apps = self
            .apps
            .values()
            .map(|s| (s.effective(now), (false, s.posted_at)));
        let best = client
            .chain(apps)
            .max_by(|(a, at), (b, bt)| a.rank().cmp(&b.rank()).then(at.cmp(bt)));
        match (best, &self.preferred) {
            (None, _) => Pair::offline(),
            (Some(_), Some(p)) => p.state.clone(),
            (Some((pair, _)), None) => pair,
        }
    }

    /// Expire, aggregate, and return the new aggregate when it differs from the last one.
    pub(crate) fn settle(&mut self, now: Millis) -> Option<Pair> {
        self.expire(now);
        self.quiet_until = self.next_change(now);
        let now_held = self.aggregate(now);
        if now_held == self.held {
            None
        } else {
            self.held = now_held.clone();
            Some(now_held)
        }
    }
}

/// Whether (availability, activity) is one of `pairs`.
pub(crate) fn allowed(pairs: &[(&str, &str)], availability: &str, activity: &str) -> bool {
    pairs
        .iter()
        .any(|(a, b)| *a == availability && *b == activity)
}

/// The list of `pairs` for an error message: `Available/Available, Busy/InACall, ...`.
pub(crate) fn describe(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(a, b)| format!("{a}/{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_the_persons_own_state_shows_over_an_applications_of_the_same_rank() {
        let mut u = UserPresence::new("u", 0, 0);
        let mut client = super::super::person::Client::signed_in(0);
        client.set(super::super::person::Activity::Meeting, true, 5);
        u.client = Some(client);
        // The application posted its Busy after the person's meeting began.
        u.apps.insert(
            "app".into(),
            AppSession {
                posted: Pair::new("Busy", "InACall"),
                posted_at: 7,
                expires_at: SESSION_MAX,
            },
        );
        assert_eq!(u.aggregate(10), Pair::new("Busy", "InAMeeting"));
        u.person_first = false;
        assert_eq!(
            u.aggregate(10),
            Pair::new("Busy", "InACall"),
            "the app's is newer"
        );
    }

    fn app(avail: &str, act: &str, at: Millis) -> AppSession {
        AppSession {
            posted: Pair::new(avail, act),
            posted_at: at,
            expires_at: at + SESSION_MAX,
        }
    }

    #[test]
    fn available_fades_to_inactive_then_away() {
        let s = app("Available", "Available", 0);
        assert_eq!(
            s.effective(FADE_INACTIVE - 1),
            Pair::new("Available", "Available")
        );
        assert_eq!(
            s.effective(FADE_INACTIVE),
            Pair::new("Available", "AvailableInactive")
        );
        assert_eq!(s.effective(FADE_AWAY), Pair::new("Away", "Away"));
        let busy = app("Busy", "InACall", 0);
        assert_eq!(busy.effective(FADE_AWAY * 3), Pair::new("Busy", "InACall"));
    }

    #[test]
    fn precedence_among_sessions_and_preferred() {
        let mut u = UserPresence::new("u", 0, 0);
        assert_eq!(u.aggregate(0), Pair::offline());
        u.preferred = Some(Preferred {
            state: Pair::new("BeRightBack", "BeRightBack"),
            expires_at: PREFERRED_LONG,
        });
        assert_eq!(u.aggregate(0), Pair::offline(), "preferred needs a session");
        u.apps
            .insert("app".into(), app("Available", "Available", 0));
        assert_eq!(u.aggregate(0), Pair::new("BeRightBack", "BeRightBack"));
        u.preferred = None;
        u.client = Some(Client::with_base(Pair::new("Busy", "InAMeeting"), 0));
        assert_eq!(u.aggregate(0), Pair::new("Busy", "InAMeeting"));
        u.apps
            .insert("app".into(), app("DoNotDisturb", "Presenting", 1));
        assert_eq!(u.aggregate(1), Pair::new("DoNotDisturb", "Presenting"));
    }

    #[test]
    fn an_active_client_beats_a_faded_session_and_equal_ranks_go_to_the_latest() {
        let mut u = UserPresence::new("u", 0, 0);
        u.person_first = false;
        u.apps
            .insert("app".into(), app("Available", "Available", 0));
        assert_eq!(
            u.aggregate(FADE_INACTIVE),
            Pair::new("Available", "AvailableInactive")
        );
        u.client = Some(Client::signed_in(0));
        assert_eq!(u.aggregate(FADE_AWAY), Pair::new("Available", "Available"));
        u.client = Some(Client::with_base(Pair::new("Busy", "InAMeeting"), 5));
        u.apps.insert("app".into(), app("Busy", "InACall", 10));
        assert_eq!(u.aggregate(10), Pair::new("Busy", "InACall"));
    }

    #[test]
    fn the_2025_availabilities_rank_like_their_legacy_pairs() {
        let rank = |a: &str, b: &str| Pair::new(a, b).rank();
        assert_eq!(rank("InAMeeting", "Busy"), rank("Busy", "InAMeeting"));
        assert_eq!(rank("InACall", "Busy"), rank("Busy", "InACall"));
        assert_eq!(rank("BusyIdle", "Busy"), rank("Busy", "Busy"));
        assert_eq!(
            rank("Presenting", "DoNotDisturb"),
            rank("DoNotDisturb", "Presenting")
        );
        assert_eq!(
            rank("Focusing", "DoNotDisturb"),
            rank("DoNotDisturb", "Focusing")
        );
        assert_eq!(
            rank("AvailableIdle", "Available"),
            rank("Available", "AvailableInactive")
        );
        assert!(rank("InAMeeting", "Busy") > rank("Available", "Available"));
        assert!(rank("Presenting", "DoNotDisturb") > rank("InACall", "Busy"));
    }

    #[test]
    fn settle_reports_only_changes_of_the_aggregate() {
        let mut u = UserPresence::new("u", 0, 0);
        assert_eq!(u.settle(0), None);
        u.apps
            .insert("app".into(), app("Available", "Available", 0));
        assert_eq!(u.settle(0), Some(Pair::new("Available", "Available")));
        assert_eq!(u.settle(1), None);
        assert_eq!(u.settle(SESSION_MAX), Some(Pair::offline()), "expired");
        assert!(u.apps.is_empty());
    }
}
