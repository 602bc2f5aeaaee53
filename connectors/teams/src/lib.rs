//! # presync-teams
//!
//! The Microsoft Teams side of presync: a connector for the engine's
//! [`Connector`](presync_engine::Connector) contract, built on Microsoft Graph presence.
//!
//! Start at [`connector::TeamsConnector`], then:
//!
//! - [`mapping`]: Teams `availability/activity` pairs <-> canonical availability. The two write
//!   modes accept different pairs: `session` (`setPresence` with presync's app id as the
//!   session, the default) and `preferred` (`setUserPreferredPresence`). Offline clears
//!   presync's state.
//! - [`client`]: Graph calls, with one client-side limit per app and tenant (10,000 per 30 s by
//!   default), `Retry-After` read as decimal seconds, one token refresh on 401, and the error
//!   envelope mapped to the engine's classes. Reads go in batches of 650 ids.
//! - [`connector::TeamsConnector::keep_alive`]: re-posts presync's sessions before an Available
//!   session fades (5 minutes) and before any expires.
//! - [`webhook`]: change notifications. It answers the validation handshake, checks
//!   `clientState` per item, decrypts rich notifications ([`crypto`]), and queues a coalesced
//!   read for basic ones ([`webhook::spawn_reader`]). Lifecycle events go to [`subscriptions`],
//!   which renews before the 60-minute limit and recreates what Graph dropped.
//! - [`poll`]: polling mode, app-only, reporting only changes.
//! - [`auth`]: app-only tokens via `presync-entra`, and delegated tokens from the refresh token
//!   that `presync teams login` stores. Graph offers presence subscriptions only to a
//!   delegated user.
//! - [`sim`]: the Graph simulator (`presync sim teams`). [`inspect`] backs `presync inspect teams`.

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
