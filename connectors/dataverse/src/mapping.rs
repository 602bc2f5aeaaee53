//! The presence catalog: Dataverse presence ids <-> canonical availability.
//!
//! Routing in Dynamics 365 looks only at a presence's *base status*, so every presence id (the
//! five built-ins, and custom presences read from the `msdyn_presence` table) maps through its
//! base status. The five built-in ids are the same in every org and work with no catalog at all.
//! The outbound direction (canonical -> the presence id presync writes) is configurable and
//! defaults to the built-ins.

use std::collections::{BTreeMap, HashMap};

use presync_engine::{Availability, Mapped, NativeState};
use serde::{Deserialize, Serialize};

/// Built-in presence ids, identical in every org (dataverse.md §2.1).
pub mod builtin {
    pub const AVAILABLE: &str = "f523f628-c07a-e811-8162-000d3aa11f50";
    pub const BUSY: &str = "efdeb843-c07a-e811-8162-000d3aa11f50";
    pub const BUSY_DND: &str = "08971864-c07a-e811-8162-000d3aa11f50";
    pub const OFFLINE: &str = "70139190-c07a-e811-8162-000d3aa11f50";
    pub const AWAY: &str = "3dacae76-c07a-e811-8162-000d3aa11f50";
}

/// `msdyn_presence.msdyn_basepresencestatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BaseStatus {
    Available,
    Busy,
    BusyDnd,
    Away,
    Offline,
}

impl BaseStatus {
    /// From the option-set value (192360000..=192360004).
    pub fn from_option(value: i64) -> Option<BaseStatus> {
        match value {
            192_360_000 => Some(BaseStatus::Available),
            192_360_001 => Some(BaseStatus::Busy),
            192_360_002 => Some(BaseStatus::BusyDnd),
            192_360_003 => Some(BaseStatus::Away),
            192_360_004 => Some(BaseStatus::Offline),
            _ => None,
        }
    }

    /// The option-set value.
    pub fn option(self) -> i64 {
        match self {
            BaseStatus::Available => 192_360_000,
            BaseStatus::Busy => 192_360_001,
            BaseStatus::BusyDnd => 192_360_002,
            BaseStatus::Away => 192_360_003,
            BaseStatus::Offline => 192_360_004,
        }
    }

    /// The canonical availability of this base status.
    pub fn availability(self) -> Availability {
        match self {
            BaseStatus::Available => Availability::Available,
            BaseStatus::Busy => Availability::Busy,
            BaseStatus::BusyDnd => Availability::DoNotDisturb,
            BaseStatus::Away => Availability::Away,
            BaseStatus::Offline => Availability::Offline,
        }
    }
}

/// One row of `msdyn_presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// `msdyn_presenceid`, lower case.
    pub id: String,
    /// `msdyn_name`.
    pub name: String,
    /// `msdyn_presencestatustext`: what the agent sees.
    pub text: String,
    pub base: BaseStatus,
}

/// The presence catalog. Cheap to clone; the connector swaps in a new one on each refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    by_id: HashMap<String, PresenceEntry>,
    outbound: BTreeMap<Availability, String>,
    unknown: Availability,
}

/// A configured outbound presence id that the catalog does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("presence_map.{availability}: presence id {id} is not in the presence catalog")]
pub struct UnknownPresence {
    pub availability: Availability,
    pub id: String,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin()
    }
}

impl Catalog {
    /// The five built-in presences, written back as themselves; unknown ids map to Away.
    pub fn builtin() -> Catalog {
        let entries = [
            (builtin::AVAILABLE, "Available", BaseStatus::Available),
            (builtin::BUSY, "Busy", BaseStatus::Busy),
            (builtin::BUSY_DND, "Busy - DND", BaseStatus::BusyDnd),
            (builtin::AWAY, "Away", BaseStatus::Away),
            (builtin::OFFLINE, "Offline", BaseStatus::Offline),
        ];
        let by_id = entries
            .iter()
            .map(|(id, name, base)| {
                (
                    (*id).to_owned(),
                    PresenceEntry {
                        id: (*id).to_owned(),
                        name: (*name).to_owned(),
                        text: (*name).to_owned(),
                        base: *base,
                    },
                )
            })
            .collect();
        let outbound = entries
            .iter()
            .map(|(id, _, base)| (base.availability(), (*id).to_owned()))
            .collect();
        Catalog {
            by_id,
            outbound,
            unknown: Availability::Away,
        }
    }

    /// The catalog with the presences read from `msdyn_presence` added (the built-ins stay).
    pub fn with_entries(mut self, entries: impl IntoIterator<Item = PresenceEntry>) -> Catalog {
        for mut e in entries {
            e.id = e.id.to_ascii_lowercase();
            self.by_id.insert(e.id.clone(), e);
        }
        self
    }

    /// Write these presence ids for these availabilities instead of the built-ins. Every id
    /// must be in the catalog; every problem is reported.
    pub fn with_outbound(
        mut self,
        map: &BTreeMap<Availability, String>,
    ) -> Result<Catalog, Vec<UnknownPresence>> {
        let mut errors = Vec::new();
        for (a, id) in map {
            let id = id.to_ascii_lowercase();
            if self.by_id.contains_key(&id) {
                self.outbound.insert(*a, id);
            } else {
                errors.push(UnknownPresence {
                    availability: *a,
                    id,
                });
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }

    /// The availability an unknown presence id maps to (never Available).
    pub fn with_unknown(mut self, a: Availability) -> Catalog {
        self.unknown = if a.is_routable() {
            Availability::Away
        } else {
            a
        };
        self
    }

    /// A presence by id.
    pub fn entry(&self, id: &str) -> Option<&PresenceEntry> {
        self.by_id.get(&id.to_ascii_lowercase())
    }

    /// The canonical availability of a presence id, if the catalog knows it.
    pub fn canonical(&self, id: &str) -> Option<Availability> {
        self.entry(id).map(|e| e.base.availability())
    }

    /// Map a native Dataverse state (code = presence id) to canonical.
    pub fn to_canonical(&self, native: &NativeState) -> Mapped {
        match self.canonical(&native.code) {
            Some(availability) => Mapped {
                availability,
                known: true,
            },
            None => Mapped {
                availability: self.unknown,
                known: false,
            },
        }
    }

    /// The native state presync writes for an availability.
    pub fn to_native(&self, a: Availability) -> Option<NativeState> {
        let id = self.outbound.get(&a)?;
        let entry = self.by_id.get(id)?;
        Some(NativeState::new(id.clone()).with_label(entry.text.clone()))
    }

    /// Every presence, for people (sorted by name).
    pub fn entries(&self) -> Vec<&PresenceEntry> {
        let mut v: Vec<_> = self.by_id.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// What D365's own automation gives a representative from their capacity (dataverse.md §2.4):
/// fully used (`available` units left: none) -> Busy - DND, partly used -> Busy, free ->
/// Available. `conversations` (`msdyn_assignedconversationcount`) tells free from partly used
/// where the event carries it; else `available` is compared with the profile's `full` total.
/// `None` when the capacity is unknown.
pub fn automatic(
    available: Option<i64>,
    conversations: Option<i64>,
    full: i64,
) -> Option<Availability> {
    let available = available?;
    Some(if available <= 0 {
        Availability::DoNotDisturb
    } else if conversations.map_or(available < full, |n| n > 0) {
        Availability::Busy
    } else {
        Availability::Available
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_gives_what_d365_recalculates_to() {
        use Availability::*;
        assert_eq!(automatic(Some(100), None, 100), Some(Available));
        assert_eq!(automatic(Some(50), None, 100), Some(Busy));
        assert_eq!(automatic(Some(0), None, 100), Some(DoNotDisturb));
        assert_eq!(
            automatic(Some(50), Some(0), 100),
            Some(Available),
            "a smaller profile, free"
        );
        assert_eq!(automatic(Some(150), Some(1), 200), Some(Busy));
        assert_eq!(automatic(None, Some(1), 100), None);
    }

    #[test]
    fn the_five_builtin_ids_work_without_a_catalog() {
        let c = Catalog::builtin();
        assert_eq!(
            c.canonical(builtin::AVAILABLE),
            Some(Availability::Available)
        );
        assert_eq!(c.canonical(builtin::BUSY), Some(Availability::Busy));
        assert_eq!(
            c.canonical(builtin::BUSY_DND),
            Some(Availability::DoNotDisturb)
        );
        assert_eq!(c.canonical(builtin::AWAY), Some(Availability::Away));
        assert_eq!(c.canonical(builtin::OFFLINE), Some(Availability::Offline));
        assert_eq!(
            c.canonical(&builtin::BUSY.to_ascii_uppercase()),
            Some(Availability::Busy),
            "GUIDs compare case-insensitively"
        );
    }

    #[test]
    fn mapping_round_trips_for_every_availability() {
        let c = Catalog::builtin();
        for a in Availability::ALL {
            let native = c.to_native(a).unwrap();
            assert_eq!(
                c.to_canonical(&native),
                Mapped {
                    availability: a,
                    known: true
                }
            );
        }
    }

    #[test]
    fn a_custom_presence_maps_through_its_base_status() {
        let c = Catalog::builtin().with_entries([PresenceEntry {
            id: "11111111-2222-3333-4444-555555555555".into(),
            name: "In training".into(),
            text: "In training".into(),
            base: BaseStatus::BusyDnd,
        }]);
        assert_eq!(
            c.canonical("11111111-2222-3333-4444-555555555555"),
            Some(Availability::DoNotDisturb)
        );
    }

    #[test]
    fn an_unknown_presence_is_never_available() {
        let c = Catalog::builtin().with_unknown(Availability::Available);
        let m = c.to_canonical(&NativeState::new("00000000-0000-0000-0000-000000000000"));
        assert!(!m.known);
        assert!(!m.availability.is_routable());
        let c = Catalog::builtin().with_unknown(Availability::Offline);
        let m = c.to_canonical(&NativeState::new("nope"));
        assert_eq!(m.availability, Availability::Offline);
    }

    #[test]
    fn outbound_ids_are_configurable_and_checked_against_the_catalog() {
        let custom = PresenceEntry {
            id: "aaaaaaaa-0000-0000-0000-000000000001".into(),
            name: "Focus".into(),
            text: "Focus time".into(),
            base: BaseStatus::BusyDnd,
        };
        let c = Catalog::builtin().with_entries([custom]);
        let mut map = BTreeMap::new();
        map.insert(
            Availability::DoNotDisturb,
            "AAAAAAAA-0000-0000-0000-000000000001".to_owned(),
        );
        let c = c.with_outbound(&map).unwrap();
        let n = c.to_native(Availability::DoNotDisturb).unwrap();
        assert_eq!(n.code, "aaaaaaaa-0000-0000-0000-000000000001");
        assert_eq!(n.label.as_deref(), Some("Focus time"));
        map.insert(Availability::Busy, "not-there".to_owned());
        map.insert(Availability::Away, "nor-this".to_owned());
        let errors = Catalog::builtin().with_outbound(&map).unwrap_err();
        assert_eq!(errors.len(), 3, "every problem reported");
        assert!(errors[0].to_string().contains("presence_map."));
    }

    #[test]
    fn base_status_option_values_round_trip() {
        for v in 192_360_000..=192_360_004 {
            assert_eq!(BaseStatus::from_option(v).unwrap().option(), v);
        }
        assert_eq!(BaseStatus::from_option(5), None);
    }
}
