//! [`DataverseConnector`]: the engine's [`Connector`] for Dynamics 365 Contact Center.
//!
//! A user of this system is an agent's `systemuserid`; its native state is a presence id
//! (`msdyn_presenceid`), mapped through the presence catalog. Writes go through
//! `CCaaS_ModifyAgentPresence`; the reconciler reads `msdyn_agentstatuses` in pages (or
//! `CCaaS_GetPresence` per agent, as configured).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use presync_engine::{
    Availability, Capabilities, Connector, ConnectorError, Desired, ExternalId, Mapped,
    NativeState, Origin, RemoteState, WriteSemantics,
};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::client::{Agent, AgentStatusRow, Credentials, DataverseClient};
use crate::config::{Caller, CallerHeader, DataverseConfig, ReconcileSource};
use crate::mapping::{Catalog, UnknownPresence};

/// The connector kind, as named in config.
pub const KIND: &str = "dataverse";

/// A configuration the connector refuses.
#[derive(Debug, thiserror::Error)]
#[error("invalid Dataverse configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// The Dataverse connector.
#[derive(Debug)]
pub struct DataverseConnector {
    client: DataverseClient,
    catalog: RwLock<Arc<Catalog>>,
    /// systemuserid -> Entra object id, for the `CallerObjectId` header.
    aad: Mutex<HashMap<String, String>>,
}

impl DataverseConnector {
    /// Validate the configuration (every problem at once) and build the connector. The catalog
    /// starts with the built-in presences; [`DataverseConnector::refresh_catalog`] adds the rest.
    pub fn new(
        config: DataverseConfig,
        credentials: Arc<dyn Credentials>,
    ) -> Result<Self, ConfigError> {
        let mut problems = config.validate();
        let catalog = catalog_for(&config, Catalog::builtin()).unwrap_or_else(|unknown| {
            // Custom ids are unknown until the catalog is read: not an error yet. The refresh
            // at start-up checks them.
            debug!(
                unknown = unknown.len(),
                "Outbound presence ids wait for the catalog"
            );
            Catalog::builtin().with_unknown(config.unknown_presence)
        });
        let client = DataverseClient::new(config, credentials).map_err(|e| {
            problems.push(e.to_string());
            ConfigError(problems.clone())
        })?;
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(DataverseConnector {
            client,
            catalog: RwLock::new(Arc::new(catalog)),
            aad: Mutex::new(HashMap::new()),
        })
    }

    /// The client, for ingress read-backs and discovery.
    pub fn client(&self) -> &DataverseClient {
        &self.client
    }

    /// The current presence catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Read `msdyn_presence` and swap in the new catalog. Returns the number of presences. A
    /// configured outbound id that the catalog still does not know is an error.
    pub async fn refresh_catalog(&self) -> Result<usize, ConnectorError> {
        let entries = self.client.presences().await?;
        let catalog = catalog_for(
            self.client.config(),
            Catalog::builtin().with_entries(entries),
        )
        .map_err(|errors| ConnectorError::Rejected {
            message: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let n = catalog.entries().len();
        if let Ok(mut c) = self.catalog.write() {
            *c = Arc::new(catalog);
        }
        info!(presences = n, "Presence catalog refreshed");
        Ok(n)
    }

    async fn agent(&self, user: &ExternalId) -> Result<Agent, ConnectorError> {
        let systemuser_id = user.as_str().to_ascii_lowercase();
        let needs_aad = self.client.config().impersonation.header == CallerHeader::CallerObjectId
            && self.client.config().impersonation.caller == Caller::Agent;
        let mut aad_object_id = None;
        if needs_aad {
            let mut cache = self.aad.lock().await;
            if let Some(oid) = cache.get(&systemuser_id) {
                aad_object_id = Some(oid.clone());
            } else if let Some(oid) = self.client.aad_object_id(&systemuser_id).await? {
                cache.insert(systemuser_id.clone(), oid.clone());
                aad_object_id = Some(oid);
            }
        }
        Ok(Agent {
            systemuser_id,
            aad_object_id,
        })
    }

    /// The engine's view of one `msdyn_agentstatus` row.
    pub fn remote_state(&self, row: &AgentStatusRow) -> Option<RemoteState> {
        let presence = row.presence_id.as_ref()?;
        let catalog = self.catalog();
        let label = catalog.entry(presence).map(|e| e.text.clone());
        let mut native = NativeState::new(presence.clone());
        native.label = label;
        Some(RemoteState {
            external_id: ExternalId(row.agent_id.clone()),
            native,
            source_time: row.modified_on,
            sequence: row.row_version,
            origin: Origin::Unknown,
            automatic: crate::mapping::automatic(
                row.capacity,
                None,
                self.client.config().full_capacity,
            ),
        })
    }
}

fn catalog_for(
    config: &DataverseConfig,
    catalog: Catalog,
) -> Result<Catalog, Vec<UnknownPresence>> {
    catalog
        .with_unknown(config.unknown_presence)
        .with_outbound(&config.presence_map)
}

#[async_trait]
impl Connector for DataverseConnector {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            push_ingress: true,
            bulk_read: true,
            write: true,
            write_semantics: WriteSemantics::Overwrite,
            source_timestamps: true,
        }
    }

    fn to_canonical(&self, native: &NativeState) -> Mapped {
        self.catalog().to_canonical(native)
    }

    fn to_native(&self, availability: Availability) -> Option<NativeState> {
        self.catalog().to_native(availability)
    }

    async fn write(&self, user: &ExternalId, desired: &Desired) -> Result<(), ConnectorError> {
        let Desired::Set(presence) = desired else {
            return Err(ConnectorError::Unsupported(
                "withdraw: Dataverse holds one presence per agent, not presync's contribution",
            ));
        };
        // A presence of this org's own that shows the availability (a hold's custom presence,
        // a representative's own presence put back) is written as it is; else the mapping's.
        let catalog = self.catalog();
        let own = catalog
            .entry(&presence.native.code)
            .filter(|_| catalog.canonical(&presence.native.code) == Some(presence.availability))
            .map(|e| e.id.clone());
        let id = match own {
            Some(id) => id,
            None => {
                self.to_native(presence.availability)
                    .ok_or(ConnectorError::Rejected {
                        message: format!(
                            "no presence id is configured for {}",
                            presence.availability
                        ),
                    })?
                    .code
            }
        };
        let agent = self.agent(user).await?;
        self.client.modify_presence(&agent, &id).await
    }

    async fn read_all(&self, users: &[ExternalId]) -> Result<Vec<RemoteState>, ConnectorError> {
        let wanted: HashSet<String> = users
            .iter()
            .map(|u| u.as_str().to_ascii_lowercase())
            .collect();
        match self.client.config().reconcile_source {
            ReconcileSource::AgentStatusQuery => {
                let mut out = Vec::new();
                self.client
                    .each_agent_status(|r| {
                        if wanted.is_empty() || wanted.contains(&r.agent_id) {
                            out.extend(self.remote_state(&r));
                        }
                    })
                    .await?;
                out.sort_by(|a, b| a.external_id.cmp(&b.external_id));
                Ok(out)
            }
            ReconcileSource::GetPresence => {
                let mut out = Vec::with_capacity(users.len());
                for user in users {
                    let agent = self.agent(user).await?;
                    let info = match self.client.get_presence(&agent).await {
                        Ok(info) => info,
                        // An agent who never signed in has no presence to read.
                        Err(ConnectorError::Rejected { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    if let Some(p) = info.presence_id {
                        let mut native = NativeState::new(p.to_ascii_lowercase());
                        native.label = info.status_info;
                        out.push(RemoteState {
                            external_id: ExternalId(agent.systemuser_id),
                            native,
                            source_time: None,
                            sequence: None,
                            origin: Origin::Unknown,
                            automatic: None,
                        });
                    }
                }
                Ok(out)
            }
        }
    }
}
