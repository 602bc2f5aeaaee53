//! Teams presence <-> canonical availability.
//!
//! A Teams state is an `availability/activity` pair (graph.md §3). Graph answers in one of two
//! value sets (graph.md, corrections at the top): since September 2025 a meeting, a call,
//! presenting and focusing are availabilities (`InAMeeting/Busy`), before they were activities
//! (`Busy/InAMeeting`), and a tenant may answer with either. presync reads both,
//! case-insensitively, and keeps every pair in one form, the older one ([`Pair::normalized`]):
//! the availability says how available, the activity what the person does, so that a rule
//! written for a state (`InAMeeting`) matches it whichever set the tenant answered in.
//! Reading maps the availability. Writing depends on the mode: a
//! `setPresence` session accepts only five pairs, `setUserPreferredPresence` six others
//! (graph.md §2.3); the configured mapping may only name pairs its mode allows. Offline is not a
//! pair presync writes: it clears what presync set.

use std::collections::BTreeMap;
use std::fmt;

use presync_engine::{Availability, Mapped, NativeState};
use serde::{Deserialize, Serialize};

/// How presync writes Teams presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// `setPresence` with presync's application id as the session: presync's state takes part
    /// in the aggregate with the person's own sessions, and their preferred presence wins.
    #[default]
    Session,
    /// `setUserPreferredPresence`: presync's state overrides everything, in the slot the person
    /// also uses.
    Preferred,
}

/// A Teams `availability/activity` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    pub availability: String,
    pub activity: String,
}

impl Pair {
    /// A pair.
    pub fn new(availability: &str, activity: &str) -> Pair {
        Pair {
            availability: availability.to_owned(),
            activity: activity.to_owned(),
        }
    }

    /// The native code: `Availability/Activity`.
    pub fn code(&self) -> String {
        format!("{}/{}", self.availability, self.activity)
    }

    /// Parse a native code.
    pub fn from_code(code: &str) -> Pair {
        match code.split_once('/') {
            Some((a, b)) => Pair::new(a, b),
            None => Pair::new(code, code),
        }
    }

    /// The pair Graph answered, in the one form presync keeps: a 2025 availability that names
    /// what the person does (`InAMeeting`, `InACall`, `Presenting`, `Focusing`) becomes the
    /// older pair (`Busy/InAMeeting`, `Busy/InACall`, `DoNotDisturb/Presenting`,
    /// `DoNotDisturb/Focusing`). Known values are spelled as documented, whatever their case;
    /// unknown ones are kept as they came.
    pub fn normalized(availability: &str, activity: &str) -> Pair {
        let (availability, activity) = (availability.trim(), activity.trim());
        let doing = match availability.to_ascii_lowercase().as_str() {
            "inameeting" => Some(("Busy", "InAMeeting")),
            "inacall" => Some(("Busy", "InACall")),
            "presenting" => Some(("DoNotDisturb", "Presenting")),
            "focusing" => Some(("DoNotDisturb", "Focusing")),
            _ => None,
        };
        match doing {
            Some((a, b)) => Pair::new(a, b),
            None => Pair::new(&spelled(availability), &spelled(activity)),
        }
    }
}

/// Values of either set as Graph documents them (PascalCase).
const DOCUMENTED: [&str; 19] = [
    "Available",
    "AvailableIdle",
    "AvailableInactive",
    "Away",
    "BeRightBack",
    "Busy",
    "BusyIdle",
    "DoNotDisturb",
    "Focusing",
    "InACall",
    "InAConferenceCall",
    "InAMeeting",
    "Inactive",
    "Offline",
    "OffWork",
    "OutOfOffice",
    "PresenceUnknown",
    "Presenting",
    "UrgentInterruptionsOnly",
];

/// `value` spelled as documented when it is a documented value in any case, else as it came.
fn spelled(value: &str) -> String {
    DOCUMENTED
        .iter()
        .find(|d| d.eq_ignore_ascii_case(value))
        .map_or_else(|| value.to_owned(), |d| (*d).to_owned())
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.availability, self.activity)
    }
}

/// Pairs `setPresence` accepts (graph.md §2.3).
pub const SESSION_PAIRS: [(&str, &str); 5] = [
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Busy", "InAConferenceCall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
];

/// Pairs `setUserPreferredPresence` accepts (graph.md §2.3).
pub const PREFERRED_PAIRS: [(&str, &str); 6] = [
    ("Available", "Available"),
    ("Busy", "Busy"),
    ("DoNotDisturb", "DoNotDisturb"),
    ("BeRightBack", "BeRightBack"),
    ("Away", "Away"),
    ("Offline", "OffWork"),
];

impl WriteMode {
    /// Whether this mode's write accepts the pair.
    pub fn allows(self, pair: &Pair) -> bool {
        let table: &[(&str, &str)] = match self {
            WriteMode::Session => &SESSION_PAIRS,
            WriteMode::Preferred => &PREFERRED_PAIRS,
        };
        table
            .iter()
            .any(|(a, b)| pair.availability == *a && pair.activity == *b)
    }

    /// The default pair for each canonical availability other than Offline (which clears).
    pub fn default_pairs(self) -> BTreeMap<Availability, Pair> {
        let rows: [(Availability, &str, &str); 4] = match self {
            WriteMode::Session => [
                (Availability::Available, "Available", "Available"),
                (Availability::Busy, "Busy", "InACall"),
                (Availability::DoNotDisturb, "DoNotDisturb", "Presenting"),
                (Availability::Away, "Away", "Away"),
            ],
            WriteMode::Preferred => [
                (Availability::Available, "Available", "Available"),
                (Availability::Busy, "Busy", "Busy"),
                (Availability::DoNotDisturb, "DoNotDisturb", "DoNotDisturb"),
                (Availability::Away, "Away", "Away"),
            ],
        };
        rows.iter().map(|(c, a, b)| (*c, Pair::new(a, b))).collect()
    }
}

/// The mapping in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    mode: WriteMode,
    outbound: BTreeMap<Availability, Pair>,
}

/// A configured pair the mode does not allow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MappingError {
    #[error("presence_map.{availability}: {pair} is not a pair {mode:?} writes accept")]
    NotAllowed {
        availability: Availability,
        pair: Pair,
        mode: WriteMode,
    },
    #[error("presence_map.Offline: Offline is not written as a pair; presync clears its own state instead")]
    Offline,
}

impl Mapping {
    /// The default mapping of a mode, with `overrides` applied. Every problem is reported.
    pub fn new(
        mode: WriteMode,
        overrides: &BTreeMap<Availability, Pair>,
    ) -> Result<Mapping, Vec<MappingError>> {
        let mut outbound = mode.default_pairs();
        let mut errors = Vec::new();
        for (a, pair) in overrides {
            if *a == Availability::Offline {
                errors.push(MappingError::Offline);
            } else if !mode.allows(pair) {
                errors.push(MappingError::NotAllowed {
                    availability: *a,
                    pair: pair.clone(),
                    mode,
                });
            } else {
                outbound.insert(*a, pair.clone());
            }
        }
        if errors.is_empty() {
            Ok(Mapping { mode, outbound })
        } else {
            Err(errors)
        }
    }

    /// The write mode.
    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// The pair presync writes for an availability; `None` for Offline (clear instead).
    pub fn pair_for(&self, a: Availability) -> Option<&Pair> {
        self.outbound.get(&a)
    }

    /// The native state presync writes (Offline: the cleared state).
    pub fn to_native(&self, a: Availability) -> NativeState {
        match self.pair_for(a) {
            Some(p) => NativeState::new(p.code()),
            None => NativeState::new("Offline/Offline"),
        }
    }

    /// Map a Teams pair to canonical by its availability, in either value set: a meeting or a
    /// call is Busy, presenting or focusing DoNotDisturb.
    pub fn to_canonical(native: &NativeState) -> Mapped {
        let raw = Pair::from_code(&native.code);
        let pair = Pair::normalized(&raw.availability, &raw.activity);
        let a = pair.availability.to_ascii_lowercase();
        let known = |availability| Mapped {
            availability,
            known: true,
        };
        match a.as_str() {
            "available" | "availableidle" | "availableinactive" => known(Availability::Available),
            "busy" | "busyidle" => known(Availability::Busy),
            "donotdisturb" => known(Availability::DoNotDisturb),
            "away" | "berightback" => known(Availability::Away),
            "offline" => known(Availability::Offline),
            // PresenceUnknown and anything new: not routable, logged once by the engine.
            _ => Mapped {
                availability: Availability::Away,
                known: false,
            },
        }
    }
}

/// Graph's `sequenceNumber` as an order presync can compare: "the lexicographically sortable
/// String stamp that represents the version of a presence object" (graph.md). presync reads a
/// stamp of up to 16 hexadecimal digits (decimal digits included) as the number it spells,
/// which sorts as the stamps do when they have one length, as a version stamp's do; any other
/// form is left out, and the observation is ordered as if it had none (by when presync saw
/// it). What real stamps look like is UNCONFIRMED (graph.md §3.1).
pub fn sequence_order(stamp: &str) -> Option<i64> {
    let stamp = stamp.trim();
    if stamp.is_empty() || stamp.len() > 16 || !stamp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let n = u64::from_str_radix(stamp, 16).ok()?;
    // Shifted into i64's range without changing the order.
    Some((n ^ (1 << 63)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_of_one_length_keep_their_order() {
        let stamps = [
            "0000000000000000",
            "0000000000000009",
            "000000000000000A",
            "00000000000000FF",
            "8000000000000000",
            "FFFFFFFFFFFFFFFF",
        ];
        let orders: Vec<_> = stamps.iter().map(|s| sequence_order(s).unwrap()).collect();
        let mut sorted = orders.clone();
        sorted.sort_unstable();
        assert_eq!(orders, sorted);
        assert_eq!(sequence_order("00ff"), sequence_order("00FF"));
        // Forms presync cannot order by: left out.
        for s in ["", "C1A2B3D4E5F607080", "2026-12-07T10:00:00Z", "abc-1"] {
            assert_eq!(sequence_order(s), None, "{s}");
        }
    }

    #[test]
    fn default_pairs_are_ones_each_mode_accepts() {
        for mode in [WriteMode::Session, WriteMode::Preferred] {
            for pair in mode.default_pairs().values() {
                assert!(mode.allows(pair), "{mode:?} {pair}");
            }
        }
    }

    #[test]
    fn every_written_pair_reads_back_as_the_same_availability() {
        for mode in [WriteMode::Session, WriteMode::Preferred] {
            let m = Mapping::new(mode, &BTreeMap::new()).unwrap();
            for a in Availability::ALL {
                let native = m.to_native(a);
                assert_eq!(
                    Mapping::to_canonical(&native).availability,
                    a,
                    "{mode:?} {a}"
                );
            }
        }
    }

    #[test]
    fn a_session_cannot_be_set_to_a_meeting_or_busy_busy() {
        let mut o = BTreeMap::new();
        o.insert(Availability::Busy, Pair::new("Busy", "InAMeeting"));
        o.insert(Availability::Away, Pair::new("Away", "Away"));
        o.insert(
            Availability::DoNotDisturb,
            Pair::new("DoNotDisturb", "DoNotDisturb"),
        );
        let errors = Mapping::new(WriteMode::Session, &o).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().starts_with("presence_map."));
        assert!(Mapping::new(WriteMode::Preferred, &{
            let mut p = BTreeMap::new();
            p.insert(
                Availability::DoNotDisturb,
                Pair::new("DoNotDisturb", "DoNotDisturb"),
            );
            p
        })
        .is_ok());
    }

    #[test]
    fn teams_states_map_by_availability_and_unknown_is_not_routable() {
        let c = |code: &str| Mapping::to_canonical(&NativeState::new(code));
        assert_eq!(c("Busy/InAMeeting").availability, Availability::Busy);
        assert_eq!(
            c("DoNotDisturb/Presenting").availability,
            Availability::DoNotDisturb
        );
        assert_eq!(
            c("BeRightBack/BeRightBack").availability,
            Availability::Away
        );
        assert_eq!(
            c("Available/AvailableInactive").availability,
            Availability::Available
        );
        assert_eq!(c("offline/OffWork").availability, Availability::Offline);
        let unknown = c("PresenceUnknown/PresenceUnknown");
        assert!(!unknown.known && !unknown.availability.is_routable());
    }

    #[test]
    fn the_2025_values_map_as_their_older_pairs_in_any_case() {
        let c = |code: &str| Mapping::to_canonical(&NativeState::new(code));
        for code in [
            "InAMeeting/Busy",
            "inACall/busy",
            "INAMEETING/Busy",
            "Busy/InAMeeting",
        ] {
            let m = c(code);
            assert!(m.known && m.availability == Availability::Busy, "{code}");
        }
        for code in ["Presenting/DoNotDisturb", "focusing/doNotDisturb"] {
            assert_eq!(c(code).availability, Availability::DoNotDisturb, "{code}");
        }
        assert_eq!(
            c("AvailableIdle/Available").availability,
            Availability::Available
        );
        assert_eq!(c("BusyIdle/Busy").availability, Availability::Busy);
    }

    #[test]
    fn pairs_are_kept_in_the_older_form_spelled_as_documented() {
        assert_eq!(
            Pair::normalized("InAMeeting", "Busy").code(),
            "Busy/InAMeeting"
        );
        assert_eq!(Pair::normalized("inACall", "busy").code(), "Busy/InACall");
        assert_eq!(
            Pair::normalized("presenting", "doNotDisturb").code(),
            "DoNotDisturb/Presenting"
        );
        assert_eq!(
            Pair::normalized("busy", "inAMeeting").code(),
            "Busy/InAMeeting"
        );
        assert_eq!(
            Pair::normalized("Busy", "SomethingNew").code(),
            "Busy/SomethingNew"
        );
        assert_eq!(
            Pair::normalized(" available ", "Available").code(),
            "Available/Available"
        );
    }
}
