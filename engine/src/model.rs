//! The canonical model: representatives, presence, observations and the per-system state that the
//! conflict rules read.
//!
//! Everything here is plain data. Times are milliseconds since the Unix epoch (UTC) in an `i64`,
//! which both stores keep as `BIGINT` and which survives JSON round trips exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A representative's stable presync id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepId(pub String);

/// The name of one connector instance in the topology, e.g. `dataverse` or `teams`.
///
/// A deployment may run two instances of one connector kind (two Dataverse orgs); they are two
/// systems with two names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SystemId(pub String);

/// A user id inside one system: a Dataverse `systemuserid`, an Entra object id for Teams.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExternalId(pub String);

macro_rules! string_newtype {
    ($($t:ident),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl $t {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    )*};
}
string_newtype!(RepId, SystemId, ExternalId);

/// The canonical availability every system is mapped onto.
///
/// The order of the variants is not a precedence; use [`Availability::is_routable`] for routing
/// decisions and the conflict rules for precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Availability {
    Available,
    Busy,
    DoNotDisturb,
    Away,
    Offline,
}

impl Availability {
    /// Every availability, in declaration order.
    pub const ALL: [Availability; 5] = [
        Availability::Available,
        Availability::Busy,
        Availability::DoNotDisturb,
        Availability::Away,
        Availability::Offline,
    ];

    /// The stable name used in the store, in config and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "Available",
            Availability::Busy => "Busy",
            Availability::DoNotDisturb => "DoNotDisturb",
            Availability::Away => "Away",
            Availability::Offline => "Offline",
        }
    }

    /// Whether a contact center may route work to someone in this state, by the strictest
    /// reading: only `Available`. A contact center whose workstreams also route to `Busy` says
    /// so in [`RulesConfig::routable`](crate::config::RulesConfig::routable).
    pub fn is_routable(self) -> bool {
        self == Availability::Available
    }

    /// Precedence in an aggregate of contributions (a Teams presence: among sessions
    /// `DoNotDisturb > Busy > Available > Away`, and `Offline` when there is no session at all):
    /// the aggregate shows the input of highest rank.
    pub fn aggregate_rank(self) -> u8 {
        match self {
            Availability::Offline => 0,
            Availability::Away => 1,
            Availability::Available => 2,
            Availability::Busy => 3,
            Availability::DoNotDisturb => 4,
        }
    }

    fn bit(self) -> u8 {
        1 << self.aggregate_rank()
    }
}

/// A set of availabilities (what a person's own inputs to an aggregate may show, as far as
/// presync can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AvailabilitySet(u8);

impl AvailabilitySet {
    /// Every availability: nothing is known.
    pub const ANY: AvailabilitySet = AvailabilitySet(0b1_1111);
    /// No availability.
    pub const EMPTY: AvailabilitySet = AvailabilitySet(0);

    /// No availability (for serde defaults).
    pub fn empty() -> AvailabilitySet {
        AvailabilitySet::EMPTY
    }

    /// The set of one availability.
    pub fn only(a: Availability) -> AvailabilitySet {
        AvailabilitySet(a.bit())
    }

    /// Every availability an aggregate input can show beneath `a` (of `a`'s rank or lower), so
    /// that an aggregate showing `a` hides it.
    pub fn up_to(a: Availability) -> AvailabilitySet {
        AvailabilitySet(((a.bit() as u16) * 2 - 1) as u8)
    }

    /// Whether `a` is in the set.
    pub fn contains(self, a: Availability) -> bool {
        self.0 & a.bit() != 0
    }

    /// The availabilities in both sets.
    pub fn and(self, other: AvailabilitySet) -> AvailabilitySet {
        AvailabilitySet(self.0 & other.0)
    }

    /// The availabilities in either set.
    pub fn or(self, other: AvailabilitySet) -> AvailabilitySet {
        AvailabilitySet(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The one availability of a set of one.
    pub fn single(self) -> Option<Availability> {
        let mut found = Availability::ALL.into_iter().filter(|a| self.contains(*a));
        match (found.next(), found.next()) {
            (Some(a), None) => Some(a),
            _ => None,
        }
    }
}

impl Default for AvailabilitySet {
    fn default() -> Self {
        AvailabilitySet::ANY
    }
}

impl fmt::Display for AvailabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == AvailabilitySet::ANY {
            return f.write_str("any");
        }
        let names: Vec<&str> = Availability::ALL
            .into_iter()
            .filter(|a| self.contains(*a))
            .map(Availability::as_str)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("|"))
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an [`Availability`] from text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown availability {0:?}: expected one of Available, Busy, DoNotDisturb, Away, Offline")]
pub struct UnknownAvailability(pub String);

impl FromStr for Availability {
    type Err = UnknownAvailability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Availability::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAvailability(s.to_owned()))
    }
}

/// The native state a system reported or will be written, in that system's own terms.
///
/// `code` is what the system keys on (a Dataverse presence id, a Teams `availability/activity`
/// pair); `label` is for people (the presence text). Connectors own the format of both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NativeState {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl NativeState {
    /// A native state with a code and no label.
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            label: None,
        }
    }

    /// The same state with a human-readable label.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// Who caused a state: the person by hand, or the system on its own (capacity, fade, sign-out).
///
/// Connectors tell what they can (Teams preferred presence is manual; Dataverse
/// `msdyn_presencemodifiedby` is a hint); `Unknown` when they cannot. The `manual_wins` policy
/// reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Origin {
    Manual,
    Automatic,
    #[default]
    Unknown,
}

impl Origin {
    /// The stable name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Manual => "Manual",
            Origin::Automatic => "Automatic",
            Origin::Unknown => "Unknown",
        }
    }
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Manual" => Ok(Origin::Manual),
            "Automatic" => Ok(Origin::Automatic),
            "Unknown" => Ok(Origin::Unknown),
            other => Err(format!("unknown origin {other:?}")),
        }
    }
}

/// How an observation reached presync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ObservationKind {
    /// Pushed by the system (webhook, change notification) or found by polling for changes.
    #[default]
    Event,
    /// Read by the reconciler in bulk. A snapshot, which may race presync's own writes.
    Reconcile,
}

/// One state reported by one system for one of its users: the unit of work of the inbox.
///
/// Ingress builds it from a push, the reconciler from a bulk read. It is stored in the inbox
/// before the push is acknowledged, and resolved later, exactly once in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The system that reported the state.
    pub system: SystemId,
    /// The user id inside that system.
    pub external_id: ExternalId,
    /// The native state, mapped to canonical by the system's connector when resolved.
    pub native: NativeState,
    /// The system's own timestamp for the state (`msdyn_presencemodifiedon` for Dataverse; the
    /// time presync observed it for systems that give none).
    pub source_time: Millis,
    /// A per-row, per-user monotonic version when the system has one (Dataverse `RowVersion`,
    /// Graph `sequenceNumber`). Older than the last one seen means stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// Who caused the state, as far as the connector can tell.
    #[serde(default)]
    pub origin: Origin,
    /// How the observation reached presync.
    #[serde(default)]
    pub kind: ObservationKind,
    /// A key unique per delivery of one change; a redelivery carries the same key and is dropped
    /// at the inbox.
    pub delivery_key: String,
    /// When presync received it (presync's clock).
    pub observed_at: Millis,
    /// For a system without timestamps of its own: the latest moment by which the state is
    /// known to have been set, when that is earlier than `source_time` (presync's clock). A
    /// state read after a notification was set before the notification arrived, however late
    /// the read; the rules order it against other systems' changes by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<Millis>,
    /// What the system's own automation would show the person at this moment, when the
    /// system says (Dataverse: from the agent's free capacity, as D365 recalculates it). A hold
    /// that ends puts the held system back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<Availability>,
}

/// The canonical presence of one representative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub availability: Availability,
    /// The native state it came from, in the source system's terms.
    pub native: NativeState,
    /// The system whose observation set it.
    pub source: SystemId,
    /// The source's own timestamp, after clock-skew clamping.
    pub source_time: Millis,
    pub origin: Origin,
    /// When presync observed it.
    pub observed_at: Millis,
    /// Increases by one with every canonical change of this representative.
    pub version: i64,
}

/// A representative: a person, with one user id per system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Representative {
    pub id: RepId,
    pub display_name: String,
    /// One external id per system.
    pub external_ids: std::collections::BTreeMap<SystemId, ExternalId>,
}

/// The last state presync observed at one system for one representative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    pub availability: Availability,
    pub native: NativeState,
    pub source_time: Millis,
    pub sequence: Option<i64>,
    pub observed_at: Millis,
    /// Source time of the newest observation that was not an echo of presync's own write. The
    /// stale rule compares against it, so an echo never makes the person's own earlier, not yet
    /// delivered change look stale. `None` while only echoes were seen.
    #[serde(default)]
    pub genuine_time: Option<Millis>,
    /// Sequence of that observation, when the system has one.
    #[serde(default)]
    pub genuine_sequence: Option<i64>,
    /// Whether what the system shows is presync's own write (the last observation recorded was
    /// its echo), not a state the person or the system's own automation set.
    #[serde(default)]
    pub by_presync: bool,
    /// What the system's own automation would show (see [`Observation::automatic`]), from the
    /// last observation that said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<Availability>,
    /// Where presync's write only contributes to what the system shows
    /// ([`WriteSemantics::Contribution`](crate::connector::WriteSemantics::Contribution)): what
    /// the person's own inputs show, as far as presync can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own: Option<OwnState>,
}

/// What a person's own inputs to an aggregate (their Teams clients and chosen status) show, as
/// far as presync can tell from what the aggregate showed and what presync contributed to it.
///
/// The aggregate shows the input of highest [rank](Availability::aggregate_rank), or the
/// person's chosen status over everything. When it shows something other than presync's own
/// contribution, it shows the person's own state exactly; when it shows presync's, the person's
/// own state is hidden beneath it (of that rank or lower).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnState {
    /// The availabilities the person's own inputs may show now.
    pub possible: AvailabilitySet,
    /// The availabilities presync's contribution at the time could hide (a change of the
    /// person's to one of these after this observation shows only when presync lowers or
    /// withdraws its contribution).
    #[serde(default = "AvailabilitySet::empty")]
    pub hideable: AvailabilitySet,
    /// What the aggregate showed the last time it showed the person's own inputs (a meeting, a
    /// call), while that is still possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<OwnShown>,
    /// The sight this was made from showed [`shown`](Self::shown) itself (the person's own
    /// state exactly, not a contribution of presync's), set when presync took it to be.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

impl Default for OwnState {
    fn default() -> Self {
        OwnState {
            possible: AvailabilitySet::ANY,
            hideable: AvailabilitySet::EMPTY,
            shown: None,
            exact: false,
        }
    }
}

/// See [`OwnState::shown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnShown {
    pub availability: Availability,
    pub native: NativeState,
}

/// The last state presync wrote to one system for one representative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenState {
    /// `None` when presync withdrew its contribution instead of setting a state.
    pub availability: Option<Availability>,
    /// The canonical version the write carried.
    pub version: i64,
    pub written_at: Millis,
}

/// Per (representative, system): what presync last saw there and last wrote there.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SystemState {
    pub observed: Option<ObservedState>,
    pub written: Option<WrittenState>,
}

/// A write presync made and whose echo it expects back from the target.
///
/// Compared at the canonical level: Teams may echo `Busy/InACall` as `Busy/Busy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub id: i64,
    pub system: SystemId,
    pub availability: Availability,
    /// The canonical version that was written.
    pub version: i64,
    /// When the write was started.
    pub opened_at: Millis,
    /// When the target confirmed the write; `None` while in flight or when the outcome is unknown.
    pub completed_at: Option<Millis>,
    pub expires_at: Millis,
    /// A later write's echo, or a different state the target reported after this write landed,
    /// came first. Kept until it expires only to recognise this write's own late echo.
    #[serde(default)]
    pub superseded: bool,
}

/// What presync wants a target to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    /// Make the target show this canonical presence.
    Set(Presence),
    /// Remove presync's own contribution from the target (its Teams presence session), so that
    /// the target shows the person's own state. Only for targets with
    /// [`WriteSemantics::Contribution`](crate::connector::WriteSemantics::Contribution).
    Withdraw,
}

impl Desired {
    /// The availability a `Set` asks for; `None` for `Withdraw`.
    pub fn availability(&self) -> Option<Availability> {
        match self {
            Desired::Set(p) => Some(p.availability),
            Desired::Withdraw => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_parses_its_own_names_case_insensitively() {
        for a in Availability::ALL {
            assert_eq!(a.as_str().parse::<Availability>().ok(), Some(a));
            assert_eq!(
                a.as_str().to_lowercase().parse::<Availability>().ok(),
                Some(a)
            );
        }
        let err = "Sleeping".parse::<Availability>().unwrap_err();
        assert!(err.to_string().contains("expected one of"));
    }

    #[test]
    fn only_available_is_routable() {
        let routable: Vec<_> = Availability::ALL
            .into_iter()
            .filter(|a| a.is_routable())
            .collect();
        assert_eq!(routable, vec![Availability::Available]);
    }

    #[test]
    fn an_aggregate_hides_inputs_of_its_rank_or_lower() {
        use Availability::*;
        let under_busy = AvailabilitySet::up_to(Busy);
        assert!([Offline, Away, Available, Busy]
            .iter()
            .all(|a| under_busy.contains(*a)));
        assert!(!under_busy.contains(DoNotDisturb));
        assert_eq!(AvailabilitySet::up_to(DoNotDisturb), AvailabilitySet::ANY);
        assert_eq!(
            AvailabilitySet::up_to(Offline).single(),
            Some(Offline),
            "nothing hides beneath no input"
        );
        assert!(under_busy
            .and(AvailabilitySet::only(DoNotDisturb))
            .is_empty());
        assert_eq!(under_busy.to_string(), "Available|Busy|Away|Offline");
    }

    #[test]
    fn observation_round_trips_through_json() {
        let o = Observation {
            system: "teams".into(),
            external_id: "u1".into(),
            native: NativeState::new("Busy/InACall").with_label("In a call"),
            source_time: 1_700_000_000_123,
            sequence: Some(7),
            origin: Origin::Manual,
            kind: ObservationKind::Reconcile,
            delivery_key: "k".into(),
            observed_at: 1_700_000_000_200,
            changed_by: None,
            automatic: Some(Availability::Busy),
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Observation>(&json).unwrap(), o);
    }
}
