//! presync-teams (work in progress).

pub mod auth;
pub mod client;
pub mod config;
pub mod connector;
pub mod crypto;
pub mod inspect;
pub mod login;
pub mod mapping;
pub mod notifications;
pub mod poll;
pub mod sim;
pub mod subscriptions;
pub mod webhook;
