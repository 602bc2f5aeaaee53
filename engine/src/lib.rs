//! presync-engine: the core of presync.
//!
//! (Crate documentation is completed with the pipeline; see the module list below.)

pub mod clock;
pub mod conformance;
pub mod connector;
pub mod memory;
pub mod model;
pub mod topology;

pub use connector::{Capabilities, Connector, ConnectorError, Mapped, RemoteState, WriteSemantics};
pub use model::*;
pub mod config;
mod dispatch;
pub mod engine;
pub mod rules;
pub mod store;
