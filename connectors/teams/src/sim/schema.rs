//! The two Graph value sets (graph.md, "Corrections of 2026-12-07"): the simulator holds every
//! presence as a legacy pair (`Busy/InAMeeting`, `DoNotDisturb/Presenting`, ...) and answers
//! each user in its [`ValueSchema`].
//!
//! In September 2025 Graph v1.0 moved the meeting, call, presenting and focusing states from
//! the activity to the availability, and dropped `AvailableIdle`, `BusyIdle` and the activities
//! `Inactive`, `InAMeeting`, `InACall`, `InAConferenceCall`, `Presenting`,
//! `UrgentInterruptionsOnly` and `OffWork`. Tenants roll out gradually, so the schema is chosen
//! per user ([`super::GraphSimConfig::schema`], [`super::GraphSim::set_user_schema`]).
//!
//! Translation of a held pair into [`ValueSchema::V2025`]:
//!
//! | held (legacy) | answered (2025) |
//! |---|---|
//! | `Busy/InAMeeting` | `InAMeeting/Busy` |
//! | `Busy/InACall`, `Busy/InAConferenceCall` | `InACall/Busy` |
//! | `DoNotDisturb/Presenting` | `Presenting/DoNotDisturb` |
//! | `DoNotDisturb/Focusing` (the simulator's own marker) | `Focusing/DoNotDisturb` |
//! | `AvailableIdle/x`, `BusyIdle/x` | `Available/..`, `Busy/..` |
//! | `Available/AvailableInactive` (the fade state) | `Available/Available` |
//! | `Offline/OffWork` | `Offline/Offline` |
//! | any other removed activity (`Inactive`, `UrgentInterruptionsOnly`, ...) | the availability repeated (`Busy/Inactive` -> `Busy/Busy`) |
//!
//! UNCONFIRMED (graph.md): the activity that accompanies each new availability in real
//! payloads. The simulator's choice is the legacy availability the state had: `Busy` with
//! `InAMeeting` and `InACall`, `DoNotDisturb` with `Presenting` and `Focusing`.
//!
//! Focusing has no legacy pair (Teams showed it as Do not disturb outside Teams, and Graph's
//! legacy activity list has no `Focusing`): the simulator holds it as `DoNotDisturb/Focusing`
//! and answers [`ValueSchema::Legacy`] users `DoNotDisturb/DoNotDisturb`. Every other held pair
//! is answered to Legacy users as held.

use super::presence::Pair;

/// Which Graph value set a user's presence is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValueSchema {
    /// The v1.0 values since September 2025 (`InAMeeting/Busy`, `Presenting/DoNotDisturb`, ...).
    /// The default.
    #[default]
    V2025,
    /// The values before September 2025 (`Busy/InAMeeting`, `DoNotDisturb/Presenting`, ...).
    Legacy,
    /// A tenant half-way through the roll-out: the users added 2nd, 4th, 6th, ... (odd
    /// positions counting from 0 in the order of [`super::GraphSim::add_user`]) are answered in
    /// [`ValueSchema::Legacy`], the others in [`ValueSchema::V2025`].
    Mixed,
}

impl ValueSchema {
    /// The value set of the user added at position `ordinal` (from 0): [`ValueSchema::V2025`]
    /// or [`ValueSchema::Legacy`], never [`ValueSchema::Mixed`].
    pub fn for_user(self, ordinal: usize) -> ValueSchema {
        match self {
            ValueSchema::Mixed if ordinal % 2 == 1 => ValueSchema::Legacy,
            ValueSchema::Mixed => ValueSchema::V2025,
            other => other,
        }
    }
}

/// Activities Graph v1.0 no longer has since September 2025 (`AvailableInactive`, the fade
/// state, and the simulator's `Focusing` marker included).
const REMOVED_ACTIVITIES: [&str; 9] = [
    "Inactive",
    "InAMeeting",
    "InACall",
    "InAConferenceCall",
    "Presenting",
    "UrgentInterruptionsOnly",
    "OffWork",
    "AvailableInactive",
    "Focusing",
];

/// A held (legacy) pair as answered in `schema` (resolved with [`ValueSchema::for_user`];
/// `Mixed` is answered as `V2025`).
pub(crate) fn show(held: &Pair, schema: ValueSchema) -> Pair {
    match schema {
        ValueSchema::Legacy => legacy(held),
        ValueSchema::V2025 | ValueSchema::Mixed => v2025(held),
    }
}

fn legacy(held: &Pair) -> Pair {
    match (held.availability.as_str(), held.activity.as_str()) {
        ("DoNotDisturb", "Focusing") => Pair::new("DoNotDisturb", "DoNotDisturb"),
        _ => held.clone(),
    }
}

fn v2025(held: &Pair) -> Pair {
    let (availability, activity) = (held.availability.as_str(), held.activity.as_str());
    match (availability, activity) {
        ("Busy" | "BusyIdle", "InAMeeting") => return Pair::new("InAMeeting", "Busy"),
        ("Busy" | "BusyIdle", "InACall" | "InAConferenceCall") => {
            return Pair::new("InACall", "Busy")
        }
        ("DoNotDisturb", "Presenting") => return Pair::new("Presenting", "DoNotDisturb"),
        ("DoNotDisturb", "Focusing") => return Pair::new("Focusing", "DoNotDisturb"),
        _ => {}
    }
    let availability = match availability {
        "AvailableIdle" => "Available",
        "BusyIdle" => "Busy",
        other => other,
    };
    if REMOVED_ACTIVITIES.contains(&activity) {
        Pair::new(availability, availability)
    } else {
        Pair::new(availability, activity)
    }
}

/// A pair given in either value set (e.g. to [`super::GraphSim::person_sets_preferred`]) as the
/// simulator holds it: the 2025 availabilities `InAMeeting`, `InACall`, `Presenting` and
/// `Focusing` become their legacy pairs; anything else is kept as given.
pub(crate) fn to_held(availability: &str, activity: &str) -> Pair {
    match availability {
        "InAMeeting" => Pair::new("Busy", "InAMeeting"),
        "InACall" => Pair::new("Busy", "InACall"),
        "Presenting" => Pair::new("DoNotDisturb", "Presenting"),
        "Focusing" => Pair::new("DoNotDisturb", "Focusing"),
        _ => Pair::new(availability, activity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &str, b: &str) -> (String, String) {
        show(&Pair::new(a, b), ValueSchema::V2025).tuple()
    }

    fn p(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn meeting_call_presenting_and_focusing_become_availabilities_in_2025() {
        assert_eq!(v("Busy", "InAMeeting"), p("InAMeeting", "Busy"));
        assert_eq!(v("Busy", "InACall"), p("InACall", "Busy"));
        assert_eq!(v("Busy", "InAConferenceCall"), p("InACall", "Busy"));
        assert_eq!(
            v("DoNotDisturb", "Presenting"),
            p("Presenting", "DoNotDisturb")
        );
        assert_eq!(v("DoNotDisturb", "Focusing"), p("Focusing", "DoNotDisturb"));
    }

    #[test]
    fn removed_values_do_not_appear_in_2025() {
        assert_eq!(
            v("Available", "AvailableInactive"),
            p("Available", "Available")
        );
        assert_eq!(v("Offline", "OffWork"), p("Offline", "Offline"));
        assert_eq!(v("AvailableIdle", "Available"), p("Available", "Available"));
        assert_eq!(v("BusyIdle", "Busy"), p("Busy", "Busy"));
        assert_eq!(v("Away", "Inactive"), p("Away", "Away"));
        assert_eq!(
            v("DoNotDisturb", "UrgentInterruptionsOnly"),
            p("DoNotDisturb", "DoNotDisturb")
        );
        for unchanged in [
            ("Available", "Available"),
            ("Busy", "Busy"),
            ("Away", "Away"),
            ("BeRightBack", "BeRightBack"),
            ("Available", "OutOfOffice"),
            ("Offline", "Offline"),
        ] {
            assert_eq!(v(unchanged.0, unchanged.1), p(unchanged.0, unchanged.1));
        }
    }

    #[test]
    fn legacy_answers_the_held_pair_except_focusing() {
        let legacy = |a: &str, b: &str| show(&Pair::new(a, b), ValueSchema::Legacy).tuple();
        assert_eq!(legacy("Busy", "InAMeeting"), p("Busy", "InAMeeting"));
        assert_eq!(
            legacy("Available", "AvailableInactive"),
            p("Available", "AvailableInactive")
        );
        assert_eq!(
            legacy("DoNotDisturb", "Focusing"),
            p("DoNotDisturb", "DoNotDisturb")
        );
    }

    #[test]
    fn mixed_makes_every_second_user_legacy() {
        let schemas: Vec<_> = (0..4).map(|i| ValueSchema::Mixed.for_user(i)).collect();
        assert_eq!(
            schemas,
            [
                ValueSchema::V2025,
                ValueSchema::Legacy,
                ValueSchema::V2025,
                ValueSchema::Legacy
            ]
        );
        assert_eq!(ValueSchema::Legacy.for_user(0), ValueSchema::Legacy);
    }

    #[test]
    fn pairs_given_in_the_2025_set_are_held_as_legacy_pairs() {
        assert_eq!(
            to_held("InAMeeting", "Busy"),
            Pair::new("Busy", "InAMeeting")
        );
        assert_eq!(
            to_held("Presenting", "DoNotDisturb"),
            Pair::new("DoNotDisturb", "Presenting")
        );
        assert_eq!(to_held("Busy", "Busy"), Pair::new("Busy", "Busy"));
    }
}
