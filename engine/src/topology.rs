//! The sync topology: which systems exist and which way presence flows between them.
//!
//! A [`TopologyConfig`] (from the config file, or [`TopologyConfig::full_mesh`]) is checked by
//! [`Topology::build`] against the connectors before anything starts. Building reports every
//! problem at once in [`TopologyErrors`]: unknown connectors and systems, duplicates, self-loops,
//! edges the connectors cannot serve, and cycles that echo suppression cannot break.
//!
//! The graph is a petgraph [`DiGraph`]: one node per system, one edge ([`Route`]) per direction.
//! A cycle made only of two-way pairs is fine, because each hop's echo is suppressed at the pair.
//! A cycle through a one-way edge is not: a change would travel around it and come back to its
//! source as a fresh observation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use petgraph::algo::{has_path_connecting, DfsSpace};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction::Incoming;
use serde::{Deserialize, Serialize};

use crate::connector::{Capabilities, Connector, WriteSemantics};
use crate::model::{Availability, SystemId};

/// The topology as configured: the systems and the directed edges between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Every system that takes part, in the order the engine lists them.
    pub systems: Vec<SystemSpec>,
    /// The sync directions; `A -> B` propagates changes observed at A to B.
    pub edges: Vec<EdgeSpec>,
}

/// One system (connector instance) in the topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    /// The system's name; a connector must be registered under it.
    pub name: SystemId,
    /// The connector kind expected under that name (`dataverse`, `teams`, ...).
    pub kind: String,
}

/// One sync direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// The system whose observations are propagated.
    pub from: SystemId,
    /// The system that is written.
    pub to: SystemId,
    /// Propagate only these availabilities along this edge; every availability when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<Availability>>,
}

impl SystemSpec {
    /// A system named `name` expecting a connector of `kind`.
    pub fn new(name: impl Into<SystemId>, kind: impl Into<String>) -> Self {
        let (name, kind) = (name.into(), kind.into());
        Self { name, kind }
    }
}

impl EdgeSpec {
    /// An edge `from -> to` that propagates every availability.
    pub fn new(from: impl Into<SystemId>, to: impl Into<SystemId>) -> Self {
        let (from, to, only) = (from.into(), to.into(), None);
        Self { from, to, only }
    }
}

impl TopologyConfig {
    /// Every pair of the given systems connected both ways (a full mesh), kinds taken from the
    /// connectors. Systems and edges come in the map's (sorted) order.
    pub fn full_mesh(connectors: &BTreeMap<SystemId, Arc<dyn Connector>>) -> TopologyConfig {
        let systems = connectors
            .iter()
            .map(|(name, c)| SystemSpec::new(name.clone(), c.kind()))
            .collect();
        let edges = connectors
            .keys()
            .flat_map(|from| {
                connectors
                    .keys()
                    .filter(move |to| *to != from)
                    .map(move |to| EdgeSpec::new(from.clone(), to.clone()))
            })
            .collect();
        TopologyConfig { systems, edges }
    }
}

/// One validated sync direction.
#[derive(Debug, Clone)]
pub struct Route {
    pub from: SystemId,
    pub to: SystemId,
    /// Propagate only these availabilities; every availability when `None`.
    pub only: Option<Vec<Availability>>,
    /// What a write to `to` means.
    pub semantics: WriteSemantics,
}

impl Route {
    /// Whether this route propagates `a`.
    pub fn allows(&self, a: Availability) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&a))
    }
}

/// A node of the graph: one system and what its connector can do (`None` only while an
/// unknown connector is being reported).
#[derive(Debug, Clone)]
struct SystemNode {
    id: SystemId,
    capabilities: Option<Capabilities>,
}

/// The validated topology. Cheap to query; built once before start.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Nodes and edges in config order (skipping duplicates), so indices follow the config.
    graph: DiGraph<SystemNode, Route>,
    index: BTreeMap<SystemId, NodeIndex>,
}

impl Topology {
    /// Check `config` against `connectors` and build the graph, or report every problem found.
    pub fn build(
        config: &TopologyConfig,
        connectors: &BTreeMap<SystemId, Arc<dyn Connector>>,
    ) -> Result<Topology, TopologyErrors> {
        use TopologyError as E;
        let mut errors = Vec::new();
        let mut graph = DiGraph::with_capacity(config.systems.len(), config.edges.len());

        // Systems: the first declaration of a name wins.
        let mut index = BTreeMap::new();
        for (i, spec) in config.systems.iter().enumerate() {
            let system = spec.name.clone();
            if let Some(first) = index.get(&spec.name).map(|n: &NodeIndex| n.index()) {
                let (index, first) = (i, first);
                errors.push(E::DuplicateSystem {
                    index,
                    system,
                    first,
                });
                continue;
            }
            let connector = connectors.get(&spec.name);
            match connector {
                None => errors.push(E::UnknownConnector {
                    index: i,
                    system: system.clone(),
                    expected: connectors.keys().cloned().collect(),
                }),
                Some(c) if c.kind() != spec.kind => errors.push(E::KindMismatch {
                    index: i,
                    system: system.clone(),
                    declared: spec.kind.clone(),
                    actual: c.kind(),
                }),
                Some(_) => {}
            }
            let capabilities = connector.map(|c| c.capabilities());
            let id = system.clone();
            let node = graph.add_node(SystemNode { id, capabilities });
            index.insert(system, node);
        }

        // Edges: each valid, first-seen edge becomes a route; `at` maps route -> config index.
        let mut at = Vec::with_capacity(config.edges.len());
        for (i, spec) in config.edges.iter().enumerate() {
            let (from, to) = (&spec.from, &spec.to);
            let edge = EdgeAt::new(i, from, to);
            let endpoints: &[&SystemId] = if from == to { &[from] } else { &[from, to] };
            for system in endpoints.iter().filter(|s| !index.contains_key(**s)) {
                errors.push(E::UnknownSystemInEdge {
                    edge: edge.clone(),
                    system: (*system).clone(),
                    expected: config.systems.iter().map(|s| s.name.clone()).collect(),
                });
            }
            if spec.only.as_ref().is_some_and(Vec::is_empty) {
                errors.push(E::EmptyOnly { edge: edge.clone() });
            }
            if from == to {
                errors.push(E::SelfLoop { edge });
                continue;
            }
            let (Some(&a), Some(&b)) = (index.get(from), index.get(to)) else {
                continue;
            };
            if let Some(existing) = graph.find_edge(a, b) {
                let first = at[existing.index()];
                errors.push(E::DuplicateEdge { edge, first });
                continue;
            }
            let (source, target) = (graph[a].capabilities, graph[b].capabilities);
            if source.is_some_and(|c| !(c.push_ingress || c.bulk_read)) {
                errors.push(E::SourceCannotObserve { edge: edge.clone() });
            }
            if target.is_some_and(|c| !c.write) {
                errors.push(E::TargetCannotWrite { edge: edge.clone() });
            }
            // An unknown target is already reported; its semantics never reach a caller.
            let semantics = target.map_or(WriteSemantics::Overwrite, |c| c.write_semantics);
            let only = spec.only.clone();
            let route = Route {
                from: from.clone(),
                to: to.clone(),
                only,
                semantics,
            };
            graph.add_edge(a, b, route);
            at.push(i);
        }

        // Cycles: a one-way edge u -> v is a problem when u is reachable from v.
        let mut space = DfsSpace::new(&graph);
        for e in graph.edge_references() {
            let (u, v) = (e.source(), e.target());
            let one_way = graph.find_edge(v, u).is_none();
            if one_way && has_path_connecting(&graph, v, u, Some(&mut space)) {
                let (index, r) = (at[e.id().index()], e.weight());
                let edge = EdgeAt::new(index, &r.from, &r.to);
                errors.push(E::OneWayCycle { edge });
            }
        }

        if errors.is_empty() {
            Ok(Topology { graph, index })
        } else {
            Err(TopologyErrors(errors))
        }
    }

    /// Every system, in config order.
    pub fn systems(&self) -> impl Iterator<Item = &SystemId> {
        self.graph.node_weights().map(|n| &n.id)
    }

    /// What the system's connector can do; `None` for a system not in the topology.
    pub fn capabilities(&self, system: &SystemId) -> Option<Capabilities> {
        self.index
            .get(system)
            .and_then(|&n| self.graph[n].capabilities)
    }

    /// The routes leaving `system` (direct successors only), in config order.
    pub fn routes_from(&self, system: &SystemId) -> Vec<&Route> {
        let Some(&node) = self.index.get(system) else {
            return Vec::new();
        };
        let mut edges: Vec<_> = self.graph.edges(node).collect();
        edges.sort_by_key(|e| e.id());
        edges.into_iter().map(|e| e.weight()).collect()
    }

    /// The route `from -> to`, if configured.
    pub fn route(&self, from: &SystemId, to: &SystemId) -> Option<&Route> {
        let (a, b) = (self.index.get(from)?, self.index.get(to)?);
        self.graph.find_edge(*a, *b).map(|e| &self.graph[e])
    }

    /// Every route, in config order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.graph.edge_weights()
    }

    /// Whether any route writes to `system`.
    pub fn has_inbound(&self, system: &SystemId) -> bool {
        let inbound = |&n| self.graph.neighbors_directed(n, Incoming).next().is_some();
        self.index.get(system).is_some_and(inbound)
    }
}

fn join(names: &[SystemId]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    let names: Vec<&str> = names.iter().map(SystemId::as_str).collect();
    names.join(", ")
}

/// Where an edge is in the config: its index in `edges` and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeAt {
    pub index: usize,
    pub from: SystemId,
    pub to: SystemId,
}

impl EdgeAt {
    fn new(index: usize, from: &SystemId, to: &SystemId) -> Self {
        let (from, to) = (from.clone(), to.clone());
        Self { index, from, to }
    }
}

impl fmt::Display for EdgeAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edges[{}] ({} -> {})", self.index, self.from, self.to)
    }
}

/// One problem with a [`TopologyConfig`]. `index` is a position in `systems`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("systems[{index}]: no connector for system `{system}`: expected one of {}", join(.expected))]
    UnknownConnector {
        index: usize,
        system: SystemId,
        expected: Vec<SystemId>,
    },
    #[error("systems[{index}]: system `{system}` is declared as kind `{declared}` but its connector is `{actual}`")]
    KindMismatch {
        index: usize,
        system: SystemId,
        declared: String,
        actual: &'static str,
    },
    #[error("systems[{index}]: system `{system}` is already declared at systems[{first}]")]
    DuplicateSystem {
        index: usize,
        system: SystemId,
        first: usize,
    },
    #[error("{edge}: system `{system}` is not declared in systems: expected one of {}", join(.expected))]
    UnknownSystemInEdge {
        edge: EdgeAt,
        system: SystemId,
        expected: Vec<SystemId>,
    },
    #[error("{edge}: an edge from a system to itself")]
    SelfLoop { edge: EdgeAt },
    #[error("{edge}: duplicate of edges[{first}]")]
    DuplicateEdge { edge: EdgeAt, first: usize },
    #[error("{edge}: `only` is empty, so nothing would propagate; remove the edge or list availabilities")]
    EmptyOnly { edge: EdgeAt },
    #[error("{edge}: source system `{}` cannot produce observations (needs capability push_ingress or bulk_read)", .edge.from)]
    SourceCannotObserve { edge: EdgeAt },
    #[error("{edge}: target system `{}` cannot be written (needs capability write)", .edge.to)]
    TargetCannotWrite { edge: EdgeAt },
    #[error("{edge}: one-way edge closes a cycle (`{}` is reachable from `{}`); echo suppression covers only two-way pairs, so add the reverse edge or break the cycle", .edge.from, .edge.to)]
    OneWayCycle { edge: EdgeAt },
}

/// Every problem found in a [`TopologyConfig`], in the order found (systems, edges, cycles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for TopologyErrors {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::connector::{ConnectorError, Mapped, RemoteState};
    use crate::model::{Desired, ExternalId, NativeState};

    type Conns = BTreeMap<SystemId, Arc<dyn Connector>>;

    #[derive(Debug)]
    struct TestConnector(Capabilities);

    #[async_trait::async_trait]
    impl Connector for TestConnector {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn capabilities(&self) -> Capabilities {
            self.0
        }
        fn to_canonical(&self, _: &NativeState) -> Mapped {
            let availability = Availability::Offline;
            Mapped {
                availability,
                known: false,
            }
        }
        fn to_native(&self, _: Availability) -> Option<NativeState> {
            None
        }
        async fn write(&self, _: &ExternalId, _: &Desired) -> Result<(), ConnectorError> {
            Err(ConnectorError::Unsupported("test"))
        }
        async fn read_all(&self, _: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
            Err(ConnectorError::Unsupported("test"))
        }
    }

    /// Capabilities from flags: `i` push ingress, `r` bulk read, `w` write, `c` contribution.
    fn caps(flags: &str) -> Capabilities {
        let semantics = [WriteSemantics::Overwrite, WriteSemantics::Contribution];
        Capabilities {
            push_ingress: flags.contains('i'),
            bulk_read: flags.contains('r'),
            write: flags.contains('w'),
            write_semantics: semantics[usize::from(flags.contains('c'))],
            source_timestamps: true,
        }
    }

    /// Connectors from `name:flags` words, e.g. `"a:irw b:w"`.
    fn connectors(list: &str) -> Conns {
        let arc = |c| Arc::new(TestConnector(c)) as Arc<dyn Connector>;
        let entry = |w: &str| w.split_once(':').map(|(n, f)| (id(n), arc(caps(f))));
        list.split_whitespace().map(|w| entry(w).unwrap()).collect()
    }

    fn abc() -> Conns {
        connectors("a:irw b:irw c:irw")
    }

    /// A config from `"a b c"` systems (kind `test`) and `"a>b b>c"` edges.
    fn config(systems: &str, edges: &str) -> TopologyConfig {
        let edge = |e: &str| e.split_once('>').map(|(f, t)| EdgeSpec::new(f, t)).unwrap();
        TopologyConfig {
            systems: systems
                .split_whitespace()
                .map(|s| SystemSpec::new(s, "test"))
                .collect(),
            edges: edges.split_whitespace().map(edge).collect(),
        }
    }

    fn valid(systems: &str, edges: &str) -> Topology {
        Topology::build(&config(systems, edges), &abc()).unwrap()
    }

    fn errors(config: &TopologyConfig, conns: &Conns) -> Vec<TopologyError> {
        Topology::build(config, conns).unwrap_err().0
    }

    /// The one error expected, with its message.
    fn single(errs: Vec<TopologyError>) -> (TopologyError, String) {
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let msg = errs[0].to_string();
        (errs.into_iter().next().unwrap(), msg)
    }

    fn cycle_edges(errs: &[TopologyError]) -> Vec<String> {
        let cycle = |e: &TopologyError| match e {
            TopologyError::OneWayCycle { edge } => Some(format!("{}>{}", edge.from, edge.to)),
            _ => None,
        };
        errs.iter().filter_map(cycle).collect()
    }

    fn id(s: &str) -> SystemId {
        s.into()
    }

    #[test]
    fn two_way_pair_is_valid() {
        let t = valid("a b", "a>b b>a");
        assert!(t.route(&id("a"), &id("b")).is_some() && t.route(&id("b"), &id("a")).is_some());
        assert!(t.has_inbound(&id("a")) && t.has_inbound(&id("b")));
    }

    #[test]
    fn full_mesh_of_three_two_way_pairs_is_valid() {
        valid("a b c", "a>b b>a b>c c>b a>c c>a");
    }

    #[test]
    fn one_way_chain_is_valid() {
        let t = valid("a b c", "a>b b>c");
        assert!(!t.has_inbound(&id("a")) && t.has_inbound(&id("c")));
        assert!(t.route(&id("b"), &id("a")).is_none());
    }

    #[test]
    fn one_way_edge_leaving_a_two_way_pair_is_valid() {
        valid("a b c", "a>b b>a b>c");
    }

    #[test]
    fn system_without_edges_is_valid() {
        let t = valid("a b", "");
        assert_eq!(t.systems().count(), 2);
        assert!(!t.has_inbound(&id("a")) && t.routes_from(&id("a")).is_empty());
    }

    #[test]
    fn one_way_three_cycle_is_rejected() {
        let errs = errors(&config("a b c", "a>b b>c c>a"), &abc());
        assert_eq!(cycle_edges(&errs), ["a>b", "b>c", "c>a"]);
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn mixed_cycle_is_rejected_naming_the_one_way_edges() {
        let errs = errors(&config("a b c", "a>b b>a b>c c>a"), &abc());
        assert_eq!(cycle_edges(&errs), ["b>c", "c>a"]);
        assert_eq!(errs.len(), 2);
        let msg = errs[0].to_string();
        assert!(msg.starts_with("edges[2] (b -> c): one-way edge"), "{msg}");
    }

    #[test]
    fn unknown_connector_is_reported_with_the_available_names() {
        let (e, msg) = single(errors(&config("a zz", ""), &abc()));
        assert!(matches!(e, TopologyError::UnknownConnector { .. }), "{msg}");
        assert!(msg.contains("`zz`: expected one of a, b, c"), "{msg}");
    }

    #[test]
    fn kind_mismatch_is_reported() {
        let mut cfg = config("a", "");
        cfg.systems[0].kind = "teams".into();
        let (e, msg) = single(errors(&cfg, &abc()));
        assert!(matches!(
            e,
            TopologyError::KindMismatch { actual: "test", .. }
        ));
        assert!(msg.contains("kind `teams`"), "{msg}");
    }

    #[test]
    fn target_without_write_capability_is_rejected() {
        let (e, msg) = single(errors(&config("a ro", "a>ro"), &connectors("a:irw ro:ir")));
        assert!(
            matches!(e, TopologyError::TargetCannotWrite { .. }),
            "{msg}"
        );
        assert!(msg.contains("(a -> ro): target system `ro`"), "{msg}");
        assert!(msg.contains("needs capability write"), "{msg}");
    }

    #[test]
    fn source_without_ingress_or_bulk_read_is_rejected() {
        let (e, msg) = single(errors(&config("wo b", "wo>b"), &connectors("wo:w b:irw")));
        assert!(
            matches!(e, TopologyError::SourceCannotObserve { .. }),
            "{msg}"
        );
        assert!(msg.contains("(wo -> b): source system `wo`"), "{msg}");
        assert!(msg.contains("push_ingress or bulk_read"), "{msg}");
    }

    #[test]
    fn source_with_bulk_read_only_is_accepted() {
        Topology::build(&config("poll b", "poll>b"), &connectors("poll:r b:w")).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let conns = connectors("a:irw b: c:irw");
        let mut cfg = config("a b c a ghost", "a>b b>c a>a a>x c>a c>a a>c");
        cfg.edges[6].only = Some(vec![]);
        let errs = errors(&cfg, &conns);
        // systems[3] duplicate, systems[4] unknown connector; edges[0] b cannot write,
        // edges[1] b cannot observe, edges[2] self-loop, edges[3] unknown x, edges[5] duplicate,
        // edges[6] empty `only`; a>b and b>c close one-way cycles through c>a.
        assert_eq!(errs.len(), 10, "{errs:#?}");
        assert_eq!(cycle_edges(&errs), ["a>b", "b>c"]);
        let text = TopologyErrors(errs).to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
    }

    #[test]
    fn routes_from_returns_direct_successors_in_config_order() {
        let t = valid("a b c", "a>c b>c a>b");
        let targets = |s| {
            t.routes_from(&id(s))
                .iter()
                .map(|r| r.to.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(targets("a"), [id("c"), id("b")]);
        assert_eq!(targets("b"), [id("c")]);
        assert!(targets("c").is_empty() && targets("nope").is_empty());
        let systems: Vec<_> = t.systems().map(SystemId::as_str).collect();
        assert_eq!(systems, ["a", "b", "c"]);
    }

    #[test]
    fn full_mesh_builds_a_valid_topology() {
        let conns = abc();
        let cfg = TopologyConfig::full_mesh(&conns);
        assert_eq!(cfg.edges.len(), 6);
        let t = Topology::build(&cfg, &conns).unwrap();
        for s in ["a", "b", "c"] {
            assert_eq!(t.routes_from(&id(s)).len(), 2);
        }
        assert_eq!(t.capabilities(&id("b")), Some(caps("irw")));
        assert_eq!(t.capabilities(&id("zz")), None);
    }

    #[test]
    fn route_carries_the_target_write_semantics_and_filter() {
        let mut cfg = config("a teams", "a>teams");
        cfg.edges[0].only = Some(vec![Availability::Busy]);
        let t = Topology::build(&cfg, &connectors("a:irw teams:iwc")).unwrap();
        let route = t.route(&id("a"), &id("teams")).unwrap();
        assert_eq!(route.semantics, WriteSemantics::Contribution);
        assert!(route.allows(Availability::Busy) && !route.allows(Availability::Available));
    }

    #[test]
    fn config_defaults_only_and_rejects_unknown_keys() {
        let json = r#"{"systems":[{"name":"a","kind":"test"}],
            "edges":[{"from":"a","to":"b"},{"from":"b","to":"a","only":["Busy"]}]}"#;
        let cfg: TopologyConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.edges[0].only, None);
        assert_eq!(cfg.edges[1].only, Some(vec![Availability::Busy]));
        let bad = r#"{"systems":[],"edges":[{"from":"a","to":"b","onyl":[]}]}"#;
        assert!(serde_json::from_str::<TopologyConfig>(bad).is_err());
    }
}
