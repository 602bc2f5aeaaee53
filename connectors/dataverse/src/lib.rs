//! presync-dataverse (work in progress).

pub mod auth;
pub mod client;
pub mod config;
pub mod connector;
pub mod context;
pub mod inspect;
pub mod mapping;
pub mod sim;
pub mod time;
pub mod webhook;
