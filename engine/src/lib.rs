//! presync-engine: the core of presync.
//!
//! (Crate documentation is completed with the pipeline; see the module list below.)

pub mod clock;
pub mod connector;
pub mod model;
pub mod topology;
pub mod memory;
pub mod conformance;

pub use connector::{Capabilities, Connector, ConnectorError, Mapped, RemoteState, WriteSemantics};
pub use model::*;
pub mod config;
pub mod rules;
pub mod store;
mod dispatch;
pub mod engine;
