//! # presync-dataverse
//!
//! The Dynamics 365 Contact Center side of presync: a connector for the engine's
//! [`Connector`](presync_engine::Connector) contract, built on the Dataverse Web API.
//!
//! Start at [`connector::DataverseConnector`], then:
//!
//! - [`webhook`]: the ingress for `msdyn_agentstatus` Create and Update webhooks. Requests are
//!   authenticated as Dataverse sends them (HttpHeader, WebhookKey `?code=`, HttpQueryString;
//!   constant-time compare; optional organization check), parsed, stored in the engine's inbox,
//!   and only then acknowledged. Other entities are acknowledged and ignored. Bodies stripped by
//!   the 256 KB limit are read back, and new agents can be discovered.
//! - [`context`]: the parser for the whole `RemoteExecutionContext` JSON format, and the
//!   derivation of an agent's presence change from it.
//! - [`mapping`]: the presence catalog. Presence ids map through their base status; the five
//!   built-ins need no catalog; the outbound ids are configurable.
//! - [`client`]: `CCaaS_ModifyAgentPresence`, `CCaaS_GetPresence`, the paged
//!   `msdyn_agentstatuses` read, the catalog read. It handles impersonation, a client-side
//!   limit per impersonated user, `Retry-After`, and one token refresh on 401. [`auth`] gets
//!   the tokens from Entra ID via `presync-entra`.
//! - [`config`]: every setting, with the unconfirmed facts of the reference (impersonation,
//!   the `CCaaS_GetPresence` call form) made configurable.
//! - [`sim`]: the simulator (`presync sim dataverse`), which follows dataverse.md and enforces
//!   its rules. [`inspect`] backs `presync inspect dataverse FILE`.

pub mod auth;
pub mod client;
pub mod config;
pub mod connector;
pub mod context;
mod direct;
pub mod inspect;
mod jsontree;
pub mod mapping;
pub mod sim;
pub mod time;
pub mod webhook;
