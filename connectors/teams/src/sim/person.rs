//! The person's own Teams client: a base state plus ongoing activities, and the methods tests
//! call to play the person ([`GraphSim::person_signs_in`], [`GraphSim::person_joins_meeting`],
//! ...).
//!
//! Signed in, the client's base state is `Available/Available`. Four activities run
//! independently of each other: a meeting, a call, presenting and focusing. The client shows
//! the first one under way in this order (a choice; graph.md is silent):
//!
//! | activity | held (legacy) pair | answered in 2025 |
//! |---|---|---|
//! | presenting | `DoNotDisturb/Presenting` | `Presenting/DoNotDisturb` |
//! | call | `Busy/InACall` | `InACall/Busy` |
//! | meeting | `Busy/InAMeeting` | `InAMeeting/Busy` |
//! | focusing | `DoNotDisturb/Focusing` (no legacy pair; Legacy users see `DoNotDisturb/DoNotDisturb`) | `Focusing/DoNotDisturb` |
//! | none | the base, `Available/Available` | the same |
//!
//! Focusing comes last because it is planned time that a meeting or a call interrupts, even
//! though it ranks as DoNotDisturb among sessions. Starting an activity signs the person in if
//! needed; ending one that is not under way (or while signed out) changes nothing; signing out
//! ends the client and every activity. Every change made here is recorded with
//! [`super::ChangeCause::Person`]: it is what the person did.

use presync_engine::Millis;

use super::presence::{Pair, Preferred, UserPresence};
use super::record::ChangeCause;
use super::schema::to_held;
use super::{lock, preferred_default, GraphSim};

/// An activity of the person's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    Meeting,
    Call,
    Presenting,
    Focusing,
}

/// The person's own Teams client session: the base state and the activities under way.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: Pair,
    meeting: bool,
    call: bool,
    presenting: bool,
    focusing: bool,
    /// When the state the client shows last changed: ties among sessions of equal rank go to
    /// the most recent.
    since: Millis,
}

impl Client {
    /// A client just signed in: `Available/Available`, nothing under way.
    pub(crate) fn signed_in(now: Millis) -> Client {
        Client::with_base(Pair::new("Available", "Available"), now)
    }

    /// A client showing `base` with nothing under way (unit tests use other bases).
    pub(crate) fn with_base(base: Pair, now: Millis) -> Client {
        Client {
            base,
            meeting: false,
            call: false,
            presenting: false,
            focusing: false,
            since: now,
        }
    }

    /// The state the client shows (a held, legacy pair).
    pub(crate) fn state(&self) -> Pair {
        if self.presenting {
            Pair::new("DoNotDisturb", "Presenting")
        } else if self.call {
            Pair::new("Busy", "InACall")
        } else if self.meeting {
            Pair::new("Busy", "InAMeeting")
        } else if self.focusing {
            Pair::new("DoNotDisturb", "Focusing")
        } else {
            self.base.clone()
        }
    }

    /// When the shown state last changed.
    pub(crate) fn since(&self) -> Millis {
        self.since
    }

    /// Start (`on`) or end an activity at `now`.
    pub(crate) fn set(&mut self, activity: Activity, on: bool, now: Millis) {
        let before = self.state();
        let flag = match activity {
            Activity::Meeting => &mut self.meeting,
            Activity::Call => &mut self.call,
            Activity::Presenting => &mut self.presenting,
            Activity::Focusing => &mut self.focusing,
        };
        *flag = on;
        if self.state() != before {
            self.since = now;
        }
    }

    /// Whether `activity` is under way.
    fn has(&self, activity: Activity) -> bool {
        match activity {
            Activity::Meeting => self.meeting,
            Activity::Call => self.call,
            Activity::Presenting => self.presenting,
            Activity::Focusing => self.focusing,
        }
    }
}

impl GraphSim {
    /// The person signs in to Teams: their own client session, `Available/Available`. No change
    /// when already signed in. False for an unknown user.
    pub fn person_signs_in(&self, user: &str) -> bool {
        self.person(user, |u, now| {
            if u.client.is_none() {
                u.client = Some(Client::signed_in(now));
            }
        })
    }

    /// The person signs out of Teams: their client session ends, and with it every meeting,
    /// call, presentation and focus time under way.
    pub fn person_signs_out(&self, user: &str) -> bool {
        self.person(user, |u, _| u.client = None)
    }

    /// The person joins a meeting in Teams (signing in if needed): `Busy/InAMeeting`, answered
    /// `InAMeeting/Busy` in the 2025 values, unless a call or a presentation shows instead.
    pub fn person_joins_meeting(&self, user: &str) -> bool {
        self.activity(user, Activity::Meeting, true)
    }

    /// The person leaves the meeting. The client shows what else is under way, else
    /// `Available/Available`. Nothing changes when no meeting is under way.
    pub fn person_leaves_meeting(&self, user: &str) -> bool {
        self.activity(user, Activity::Meeting, false)
    }

    /// The person takes a Teams call (signing in if needed): `Busy/InACall`, answered
    /// `InACall/Busy` in the 2025 values, unless a presentation shows instead.
    pub fn person_joins_call(&self, user: &str) -> bool {
        self.activity(user, Activity::Call, true)
    }

    /// The person ends the call. Nothing changes when no call is under way.
    pub fn person_leaves_call(&self, user: &str) -> bool {
        self.activity(user, Activity::Call, false)
    }

    /// The person starts presenting (signing in if needed): `DoNotDisturb/Presenting`, answered
    /// `Presenting/DoNotDisturb` in the 2025 values. It shows over a meeting or a call.
    pub fn person_starts_presenting(&self, user: &str) -> bool {
        self.activity(user, Activity::Presenting, true)
    }

    /// The person stops presenting: the meeting or call under way shows again. Nothing changes
    /// when the person is not presenting.
    pub fn person_stops_presenting(&self, user: &str) -> bool {
        self.activity(user, Activity::Presenting, false)
    }

    /// The person's focus time starts (signing in if needed): `Focusing/DoNotDisturb` in the
    /// 2025 values, `DoNotDisturb/DoNotDisturb` in the legacy ones (a choice: the legacy set
    /// has no Focusing). A meeting, call or presentation shows over it.
    pub fn person_starts_focusing(&self, user: &str) -> bool {
        self.activity(user, Activity::Focusing, true)
    }

    /// The person's focus time ends. Nothing changes when the person is not focusing.
    pub fn person_stops_focusing(&self, user: &str) -> bool {
        self.activity(user, Activity::Focusing, false)
    }

    /// The person picks a status in Teams: the preferred presence, with Graph's default expiry
    /// (1 day for DoNotDisturb and Busy, 7 days otherwise). Any pair is taken as given; a pair
    /// in the 2025 values (`InAMeeting/Busy`, `Presenting/DoNotDisturb`, ...) is held as its
    /// legacy pair.
    pub fn person_sets_preferred(&self, user: &str, availability: &str, activity: &str) -> bool {
        let state = to_held(availability, activity);
        self.person(user, |u, now| {
            u.preferred = Some(Preferred {
                expires_at: now + preferred_default(&state.availability),
                state,
            });
        })
    }

    /// The person resets their status in Teams: the preferred presence is cleared.
    pub fn person_clears_preferred(&self, user: &str) -> bool {
        self.person(user, |u, _| u.preferred = None)
    }

    /// Start or end an activity: starting signs the person in first.
    fn activity(&self, user: &str, activity: Activity, on: bool) -> bool {
        self.person(user, |u, now| match (&mut u.client, on) {
            (Some(c), _) if c.has(activity) == on => {}
            (Some(c), _) => c.set(activity, on, now),
            (None, true) => {
                let mut c = Client::signed_in(now);
                c.set(activity, true, now);
                u.client = Some(c);
            }
            (None, false) => {}
        })
    }

    /// Apply a person's action to `user` at the clock's now, between two settles (the second
    /// records what changed as [`ChangeCause::Person`]). False for an unknown user.
    fn person(&self, user: &str, f: impl FnOnce(&mut UserPresence, Millis)) -> bool {
        let now = self.shared.clock.now();
        let mut st = lock(&self.shared.state);
        self.shared.settle(&mut st);
        let Some(u) = st.user_mut(user) else {
            return false;
        };
        f(u, now);
        self.shared.settle_by(&mut st, user, ChangeCause::Person);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presenting_shows_over_a_call_over_a_meeting_over_focusing() {
        let mut c = Client::signed_in(0);
        assert_eq!(c.state(), Pair::new("Available", "Available"));
        c.set(Activity::Focusing, true, 1);
        assert_eq!(c.state(), Pair::new("DoNotDisturb", "Focusing"));
        c.set(Activity::Meeting, true, 2);
        assert_eq!(c.state(), Pair::new("Busy", "InAMeeting"));
        c.set(Activity::Call, true, 3);
        assert_eq!(c.state(), Pair::new("Busy", "InACall"));
        c.set(Activity::Presenting, true, 4);
        assert_eq!(c.state(), Pair::new("DoNotDisturb", "Presenting"));
        c.set(Activity::Call, false, 5);
        assert_eq!(c.state(), Pair::new("DoNotDisturb", "Presenting"));
        assert_eq!(
            c.since(),
            4,
            "ending a hidden activity changes nothing shown"
        );
        c.set(Activity::Presenting, false, 6);
        assert_eq!(c.state(), Pair::new("Busy", "InAMeeting"));
        assert_eq!(c.since(), 6);
        c.set(Activity::Meeting, false, 7);
        c.set(Activity::Focusing, false, 8);
        assert_eq!(c.state(), Pair::new("Available", "Available"));
    }
}
