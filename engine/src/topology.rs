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
use petgraph::Direction;
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

impl TopologyConfig {
    /// Every pair of the given systems connected both ways (a full mesh), kinds taken from the
    /// connectors. Systems and edges come in the map's (sorted) order.
    pub fn full_mesh(connectors: &BTreeMap<SystemId, Arc<dyn Connector>>) -> TopologyConfig {
        let systems = connectors
            .iter()
            .map(|(name, c)| SystemSpec {
                name: name.clone(),
                kind: c.kind().to_owned(),
            })
            .collect();
        let edges = connectors
            .keys()
            .flat_map(|from| {
                connectors
                    .keys()
                    .filter(move |to| *to != from)
                    .map(move |to| EdgeSpec {
                        from: from.clone(),
                        to: to.clone(),
                        only: None,
                    })
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

/// A node of the graph: one system and what its connector can do.
#[derive(Debug, Clone)]
struct SystemNode {
    id: SystemId,
    capabilities: Capabilities,
}

/// The validated topology. Cheap to query; built once before start.
#[derive(Debug, Clone)]
pub struct Topology {
    graph: DiGraph<SystemNode, Route>,
    index: BTreeMap<SystemId, NodeIndex>,
}

impl Topology {
    /// Check `config` against `connectors` and build the graph, or report every problem found.
    pub fn build(
        config: &TopologyConfig,
        connectors: &BTreeMap<SystemId, Arc<dyn Connector>>,
    ) -> Result<Topology, TopologyErrors> {
        let mut errors = Vec::new();

        // Systems: the first declaration of a name wins; its position is its node index.
        let mut declared: BTreeMap<&SystemId, (NodeIndex, Option<Capabilities>)> = BTreeMap::new();
        let mut shape: DiGraph<(), ()> = DiGraph::new();
        for (index, spec) in config.systems.iter().enumerate() {
            if let Some((first, _)) = declared.get(&spec.name) {
                errors.push(TopologyError::DuplicateSystem {
                    index,
                    system: spec.name.clone(),
                    first: first.index(),
                });
                continue;
            }
            let capabilities = match connectors.get(&spec.name) {
                None => {
                    errors.push(TopologyError::UnknownConnector {
                        index,
                        system: spec.name.clone(),
                        expected: connectors.keys().cloned().collect(),
                    });
                    None
                }
                Some(c) => {
                    if c.kind() != spec.kind {
                        errors.push(TopologyError::KindMismatch {
                            index,
                            system: spec.name.clone(),
                            declared: spec.kind.clone(),
                            actual: c.kind(),
                        });
                    }
                    Some(c.capabilities())
                }
            };
            declared.insert(&spec.name, (shape.add_node(()), capabilities));
        }

        // Edges: the structure goes into `shape` for the cycle check, one edge per valid spec.
        let mut seen: BTreeMap<(&SystemId, &SystemId), usize> = BTreeMap::new();
        let mut valid: Vec<(usize, NodeIndex, NodeIndex)> = Vec::new();
        for (index, edge) in config.edges.iter().enumerate() {
            let (from, to) = (&edge.from, &edge.to);
            let endpoints: &[&SystemId] = if from == to { &[from] } else { &[from, to] };
            for system in endpoints {
                if !declared.contains_key(*system) {
                    errors.push(TopologyError::UnknownSystemInEdge {
                        index,
                        from: from.clone(),
                        to: to.clone(),
                        system: (*system).clone(),
                        expected: declared.keys().map(|s| (*s).clone()).collect(),
                    });
                }
            }
            if edge.only.as_ref().is_some_and(Vec::is_empty) {
                errors.push(TopologyError::EmptyOnly {
                    index,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            if from == to {
                errors.push(TopologyError::SelfLoop {
                    index,
                    system: from.clone(),
                });
                continue;
            }
            if let Some(&first) = seen.get(&(from, to)) {
                errors.push(TopologyError::DuplicateEdge {
                    index,
                    from: from.clone(),
                    to: to.clone(),
                    first,
                });
                continue;
            }
            seen.insert((from, to), index);
            let (Some(&(a, source)), Some(&(b, target))) = (declared.get(from), declared.get(to))
            else {
                continue;
            };
            if source.is_some_and(|c| !(c.push_ingress || c.bulk_read)) {
                errors.push(TopologyError::SourceCannotObserve {
                    index,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            if target.is_some_and(|c| !c.write) {
                errors.push(TopologyError::TargetCannotWrite {
                    index,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            shape.add_edge(a, b, ());
            valid.push((index, a, b));
        }

        // Cycles: a one-way edge u -> v is a problem when u is reachable from v.
        let mut space = DfsSpace::new(&shape);
        for &(index, a, b) in &valid {
            let two_way = shape.find_edge(b, a).is_some();
            if !two_way && has_path_connecting(&shape, b, a, Some(&mut space)) {
                let edge = &config.edges[index];
                errors.push(TopologyError::OneWayCycle {
                    index,
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                });
            }
        }

        if !errors.is_empty() {
            return Err(TopologyErrors(errors));
        }

        // No problems: every declared system has capabilities and every edge is valid.
        let mut graph = DiGraph::with_capacity(declared.len(), valid.len());
        let mut index = BTreeMap::new();
        for spec in &config.systems {
            if let Some((_, Some(capabilities))) = declared.get(&spec.name) {
                let node = graph.add_node(SystemNode {
                    id: spec.name.clone(),
                    capabilities: *capabilities,
                });
                index.insert(spec.name.clone(), node);
            }
        }
        for &(i, a, b) in &valid {
            let edge = &config.edges[i];
            let semantics = graph[b].capabilities.write_semantics;
            graph.add_edge(
                a,
                b,
                Route {
                    from: edge.from.clone(),
                    to: edge.to.clone(),
                    only: edge.only.clone(),
                    semantics,
                },
            );
        }
        Ok(Topology { graph, index })
    }

    /// Every system, in config order.
    pub fn systems(&self) -> impl Iterator<Item = &SystemId> {
        self.graph.node_weights().map(|n| &n.id)
    }

    /// What the system's connector can do; `None` for a system not in the topology.
    pub fn capabilities(&self, system: &SystemId) -> Option<Capabilities> {
        self.index.get(system).map(|&n| self.graph[n].capabilities)
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
        self.index.get(system).is_some_and(|&n| {
            self.graph
                .neighbors_directed(n, Direction::Incoming)
                .next()
                .is_some()
        })
    }
}

fn join(names: &[SystemId]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    names
        .iter()
        .map(SystemId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One problem with a [`TopologyConfig`]. Positions are indices into `systems` / `edges`.
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
    #[error("edges[{index}] ({from} -> {to}): system `{system}` is not declared in systems: expected one of {}", join(.expected))]
    UnknownSystemInEdge {
        index: usize,
        from: SystemId,
        to: SystemId,
        system: SystemId,
        expected: Vec<SystemId>,
    },
    #[error("edges[{index}] ({system} -> {system}): an edge from a system to itself")]
    SelfLoop { index: usize, system: SystemId },
    #[error("edges[{index}] ({from} -> {to}): duplicate of edges[{first}]")]
    DuplicateEdge {
        index: usize,
        from: SystemId,
        to: SystemId,
        first: usize,
    },
    #[error("edges[{index}] ({from} -> {to}): `only` is empty, so nothing would propagate; remove the edge or list availabilities")]
    EmptyOnly {
        index: usize,
        from: SystemId,
        to: SystemId,
    },
    #[error("edges[{index}] ({from} -> {to}): source system `{from}` cannot produce observations (needs capability push_ingress or bulk_read)")]
    SourceCannotObserve {
        index: usize,
        from: SystemId,
        to: SystemId,
    },
    #[error("edges[{index}] ({from} -> {to}): target system `{to}` cannot be written (needs capability write)")]
    TargetCannotWrite {
        index: usize,
        from: SystemId,
        to: SystemId,
    },
    #[error("edges[{index}] ({from} -> {to}): one-way edge closes a cycle (`{from}` is reachable from `{to}`); echo suppression covers only two-way pairs, so add `{to} -> {from}` or break the cycle")]
    OneWayCycle {
        index: usize,
        from: SystemId,
        to: SystemId,
    },
}

/// Every problem found in a [`TopologyConfig`], in the order found (systems, edges, cycles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyErrors {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::connector::{ConnectorError, Mapped, RemoteState};
    use crate::model::{Desired, ExternalId, NativeState};

    #[derive(Debug)]
    struct TestConnector {
        caps: Capabilities,
    }

    #[async_trait::async_trait]
    impl Connector for TestConnector {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn to_canonical(&self, _native: &NativeState) -> Mapped {
            Mapped {
                availability: Availability::Offline,
                known: false,
            }
        }
        fn to_native(&self, _availability: Availability) -> Option<NativeState> {
            None
        }
        async fn write(
            &self,
            _user: &ExternalId,
            _desired: &Desired,
        ) -> Result<(), ConnectorError> {
            Err(ConnectorError::Unsupported("test"))
        }
        async fn read_all(
            &self,
            _users: &[ExternalId],
        ) -> Result<Vec<RemoteState>, ConnectorError> {
            Err(ConnectorError::Unsupported("test"))
        }
    }

    fn caps(push_ingress: bool, bulk_read: bool, write: bool) -> Capabilities {
        Capabilities {
            push_ingress,
            bulk_read,
            write,
            write_semantics: WriteSemantics::Overwrite,
            source_timestamps: true,
        }
    }

    fn full() -> Capabilities {
        caps(true, true, true)
    }

    fn connectors(list: &[(&str, Capabilities)]) -> BTreeMap<SystemId, Arc<dyn Connector>> {
        list.iter()
            .map(|(name, caps)| {
                let c: Arc<dyn Connector> = Arc::new(TestConnector { caps: *caps });
                (SystemId::from(*name), c)
            })
            .collect()
    }

    fn config(systems: &[&str], edges: &[(&str, &str)]) -> TopologyConfig {
        TopologyConfig {
            systems: systems
                .iter()
                .map(|s| SystemSpec {
                    name: (*s).into(),
                    kind: "test".into(),
                })
                .collect(),
            edges: edges
                .iter()
                .map(|(from, to)| EdgeSpec {
                    from: (*from).into(),
                    to: (*to).into(),
                    only: None,
                })
                .collect(),
        }
    }

    fn abc() -> BTreeMap<SystemId, Arc<dyn Connector>> {
        connectors(&[("a", full()), ("b", full()), ("c", full())])
    }

    fn errors(
        config: &TopologyConfig,
        conns: &BTreeMap<SystemId, Arc<dyn Connector>>,
    ) -> Vec<TopologyError> {
        Topology::build(config, conns).unwrap_err().0
    }

    fn one_way_cycle_edges(errs: &[TopologyError]) -> Vec<(String, String)> {
        errs.iter()
            .filter_map(|e| match e {
                TopologyError::OneWayCycle { from, to, .. } => {
                    Some((from.to_string(), to.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    fn id(s: &str) -> SystemId {
        s.into()
    }

    #[test]
    fn two_way_pair_is_valid() {
        let t = Topology::build(&config(&["a", "b"], &[("a", "b"), ("b", "a")]), &abc()).unwrap();
        assert!(t.route(&id("a"), &id("b")).is_some());
        assert!(t.route(&id("b"), &id("a")).is_some());
        assert!(t.has_inbound(&id("a")) && t.has_inbound(&id("b")));
    }

    #[test]
    fn full_mesh_of_three_two_way_pairs_is_valid() {
        let edges = [
            ("a", "b"),
            ("b", "a"),
            ("b", "c"),
            ("c", "b"),
            ("a", "c"),
            ("c", "a"),
        ];
        Topology::build(&config(&["a", "b", "c"], &edges), &abc()).unwrap();
    }

    #[test]
    fn one_way_chain_is_valid() {
        let t =
            Topology::build(&config(&["a", "b", "c"], &[("a", "b"), ("b", "c")]), &abc()).unwrap();
        assert!(!t.has_inbound(&id("a")));
        assert!(t.has_inbound(&id("c")));
        assert!(t.route(&id("b"), &id("a")).is_none());
    }

    #[test]
    fn one_way_three_cycle_is_rejected() {
        let errs = errors(
            &config(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("c", "a")]),
            &abc(),
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(one_way_cycle_edges(&errs).len(), 3);
    }

    #[test]
    fn mixed_cycle_is_rejected_naming_only_the_one_way_edges() {
        let edges = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")];
        let errs = errors(&config(&["a", "b", "c"], &edges), &abc());
        assert_eq!(
            one_way_cycle_edges(&errs),
            vec![("b".into(), "c".into()), ("c".into(), "a".into())]
        );
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].to_string().contains("edges[2] (b -> c)"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn one_way_edge_beside_a_two_way_pair_is_valid() {
        let edges = [("a", "b"), ("b", "a"), ("b", "c")];
        Topology::build(&config(&["a", "b", "c"], &edges), &abc()).unwrap();
    }

    #[test]
    fn unknown_connector_lists_the_available_systems() {
        let errs = errors(&config(&["a", "zz"], &[]), &abc());
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(matches!(errs[0], TopologyError::UnknownConnector { .. }));
        assert!(
            msg.contains("`zz`") && msg.contains("expected one of a, b, c"),
            "{msg}"
        );
    }

    #[test]
    fn kind_mismatch_is_reported() {
        let mut cfg = config(&["a"], &[]);
        cfg.systems[0].kind = "teams".into();
        let errs = errors(&cfg, &abc());
        assert!(matches!(
            &errs[..],
            [TopologyError::KindMismatch { actual: "test", .. }]
        ));
        assert!(errs[0].to_string().contains("`teams`"));
    }

    #[test]
    fn target_without_write_capability_is_rejected() {
        let conns = connectors(&[("a", full()), ("ro", caps(true, true, false))]);
        let errs = errors(&config(&["a", "ro"], &[("a", "ro")]), &conns);
        assert!(
            matches!(&errs[..], [TopologyError::TargetCannotWrite { .. }]),
            "{errs:?}"
        );
        let msg = errs[0].to_string();
        assert!(
            msg.contains("`ro`") && msg.contains("write") && msg.contains("a -> ro"),
            "{msg}"
        );
    }

    #[test]
    fn source_without_ingress_or_bulk_read_is_rejected() {
        let conns = connectors(&[("wo", caps(false, false, true)), ("b", full())]);
        let errs = errors(&config(&["wo", "b"], &[("wo", "b")]), &conns);
        assert!(
            matches!(&errs[..], [TopologyError::SourceCannotObserve { .. }]),
            "{errs:?}"
        );
        assert!(errs[0].to_string().contains("push_ingress or bulk_read"));
    }

    #[test]
    fn source_with_bulk_read_only_is_accepted() {
        let conns = connectors(&[("poll", caps(false, true, false)), ("b", full())]);
        Topology::build(&config(&["poll", "b"], &[("poll", "b")]), &conns).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let conns = connectors(&[
            ("a", full()),
            ("b", caps(false, false, false)),
            ("c", full()),
        ]);
        let mut cfg = config(
            &["a", "b", "c", "a", "ghost"],
            &[
                ("a", "b"),
                ("b", "c"),
                ("a", "a"),
                ("a", "x"),
                ("c", "a"),
                ("c", "a"),
                ("a", "c"),
            ],
        );
        cfg.edges[6].only = Some(vec![]);
        let errs = errors(&cfg, &conns);
        // systems[3] duplicate, systems[4] unknown connector, edges[0] b cannot write,
        // edges[1] b cannot observe, edges[2] self-loop, edges[3] unknown system x,
        // edges[5] duplicate, edges[6] empty only; a -> b and b -> c close a one-way cycle.
        assert_eq!(errs.len(), 10, "{errs:#?}");
        let text = TopologyErrors(errs).to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
    }

    #[test]
    fn routes_from_returns_direct_successors_in_config_order() {
        let edges = [("a", "c"), ("b", "c"), ("a", "b")];
        let t = Topology::build(&config(&["a", "b", "c"], &edges), &abc()).unwrap();
        let to: Vec<_> = t
            .routes_from(&id("a"))
            .iter()
            .map(|r| r.to.to_string())
            .collect();
        assert_eq!(to, ["c", "b"]);
        assert!(t.routes_from(&id("c")).is_empty());
        assert!(t.routes_from(&id("nope")).is_empty());
        let systems: Vec<_> = t.systems().map(SystemId::as_str).collect();
        assert_eq!(systems, ["a", "b", "c"]);
    }

    #[test]
    fn full_mesh_builds_a_valid_topology() {
        let conns = abc();
        let cfg = TopologyConfig::full_mesh(&conns);
        assert_eq!(cfg.edges.len(), 6);
        let t = Topology::build(&cfg, &conns).unwrap();
        for from in ["a", "b", "c"] {
            assert_eq!(t.routes_from(&id(from)).len(), 2);
        }
        assert_eq!(t.capabilities(&id("b")), Some(full()));
        assert_eq!(t.capabilities(&id("zz")), None);
    }

    #[test]
    fn route_carries_the_target_write_semantics_and_filter() {
        let mut contribution = full();
        contribution.write_semantics = WriteSemantics::Contribution;
        let conns = connectors(&[("a", full()), ("teams", contribution)]);
        let mut cfg = config(&["a", "teams"], &[("a", "teams")]);
        cfg.edges[0].only = Some(vec![Availability::Busy]);
        let t = Topology::build(&cfg, &conns).unwrap();
        let route = t.route(&id("a"), &id("teams")).unwrap();
        assert_eq!(route.semantics, WriteSemantics::Contribution);
        assert!(route.allows(Availability::Busy));
        assert!(!route.allows(Availability::Available));
    }

    #[test]
    fn system_without_edges_is_valid() {
        let t = Topology::build(&config(&["a", "b"], &[]), &abc()).unwrap();
        assert_eq!(t.systems().count(), 2);
        assert!(!t.has_inbound(&id("a")));
    }

    #[test]
    fn config_parses_with_optional_only_and_rejects_unknown_keys() {
        let json = r#"{"systems":[{"name":"a","kind":"test"}],
            "edges":[{"from":"a","to":"b"},{"from":"b","to":"a","only":["Busy","Offline"]}]}"#;
        let cfg: TopologyConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.edges[0].only, None);
        assert_eq!(
            cfg.edges[1].only,
            Some(vec![Availability::Busy, Availability::Offline])
        );
        let bad = r#"{"systems":[],"edges":[{"from":"a","to":"b","onyl":[]}]}"#;
        assert!(serde_json::from_str::<TopologyConfig>(bad).is_err());
    }
}
