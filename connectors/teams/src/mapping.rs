//! Teams presence <-> canonical availability.
//!
//! A Teams state is an `availability/activity` pair (graph.md §3). Reading maps the
//! availability (open strings, compared case-insensitively). Writing depends on the mode: a
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

    /// Map a Teams pair to canonical by its availability.
    pub fn to_canonical(native: &NativeState) -> Mapped {
        let pair = Pair::from_code(&native.code);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
