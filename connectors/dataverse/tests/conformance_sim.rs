//! The Dataverse connector against its simulator on loopback: the engine's conformance kit, and
//! what the kit cannot inject (paging, one token refresh on 401, refused credentials, the
//! presence catalog).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use presync_dataverse::auth::EntraCredentials;
use presync_dataverse::config::{DataverseConfig, WebhookConfig};
use presync_dataverse::connector::DataverseConnector;
use presync_dataverse::mapping::{builtin, BaseStatus, Catalog, PresenceEntry};
use presync_dataverse::sim::{DataverseSim, Fault, SimConfig, SimCredential};
use presync_engine::conformance::{self, Harness};
use presync_engine::{Availability, Connector, ConnectorError, ExternalId, Presence};
use presync_entra::{Credential, EntraConfig, TokenClient};

const TENANT: &str = "presync-sim-tenant";
const CLIENT: &str = "presync-sim-client";
const SECRET: &str = "sim-client-secret-0123456789";

fn agent(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

struct Env {
    sim: DataverseSim,
    connector: Arc<DataverseConnector>,
    agents: usize,
}

async fn env(agents: usize, page_size: u32, secret: &str) -> Env {
    env_with(agents, secret, |c| c.page_size = page_size).await
}

async fn env_with(agents: usize, secret: &str, tune: impl FnOnce(&mut DataverseConfig)) -> Env {
    let sim = DataverseSim::new(SimConfig::new(
        TENANT,
        CLIENT,
        SimCredential::ClientSecret(SECRET.into()),
        "contoso.crm.dynamics.com",
    ));
    for i in 0..agents {
        sim.add_agent(
            &agent(i),
            &format!("aad-{i}"),
            &format!("Agent {i}"),
            builtin::OFFLINE,
            true,
        );
    }
    let addr = sim.spawn().await.unwrap();
    let base = format!("http://{addr}");
    let mut config = DataverseConfig::new(
        base.clone(),
        WebhookConfig::header("x-presync-secret", "0123456789abcdef0123"),
    );
    tune(&mut config);
    let entra = EntraConfig::new(
        TENANT,
        CLIENT,
        format!("{base}/.default"),
        Credential::client_secret(secret.to_owned()),
    )
    .with_authority(base);
    let tokens = TokenClient::new(&entra).unwrap();
    let connector =
        Arc::new(DataverseConnector::new(config, Arc::new(EntraCredentials::new(tokens))).unwrap());
    Env {
        sim,
        connector,
        agents,
    }
}

#[async_trait]
impl Harness for Env {
    fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }

    fn users(&self) -> Vec<ExternalId> {
        (0..self.agents).map(|i| ExternalId(agent(i))).collect()
    }

    async fn remote_state(&self, user: &ExternalId) -> Option<Availability> {
        Catalog::builtin().canonical(&self.sim.presence(user.as_str())?)
    }

    async fn inject(&self, fault: conformance::Fault) -> bool {
        match fault {
            conformance::Fault::RateLimited { retry_after } => {
                self.sim.inject(Fault::RateLimited {
                    retry_after_secs: retry_after.as_secs().max(1),
                });
            }
            conformance::Fault::ServerError => self.sim.inject(Fault::ServerError(503)),
            conformance::Fault::RejectWrite => self.sim.inject(Fault::ServerError(400)),
            // Refused even after the one refresh: see `refused_credentials_are_unauthorized`.
            conformance::Fault::Unauthorized => return false,
        }
        true
    }
}

fn busy() -> presync_engine::Desired {
    presync_engine::Desired::Set(Presence {
        availability: Availability::Busy,
        native: presync_engine::NativeState::new(builtin::BUSY),
        source: "teams".into(),
        source_time: 0,
        origin: presync_engine::Origin::Unknown,
        observed_at: 0,
        version: 1,
    })
}

#[tokio::test]
async fn the_connector_passes_the_engine_conformance_kit_against_the_simulator() {
    let env = env(3, 5_000, SECRET).await;
    let report = conformance::run(&env).await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test]
async fn bulk_reads_follow_every_page() {
    let env = env(12, 5, SECRET).await;
    env.sim.agent_sets(&agent(7), builtin::BUSY_DND);
    let states = env.connector.read_all(&[]).await.unwrap();
    assert_eq!(states.len(), 12);
    let seven = states
        .iter()
        .find(|s| s.external_id.as_str() == agent(7))
        .unwrap();
    assert_eq!(
        env.connector.to_canonical(&seven.native).availability,
        Availability::DoNotDisturb
    );
    assert!(seven.source_time.is_some() && seven.sequence.is_some());
    let pages = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/msdyn_agentstatuses"))
        .count();
    assert_eq!(pages, 3, "12 rows at 5 a page");
}

/// Found by the memory benchmark: a bulk read held every page of 100,000 rows as JSON values
/// (~200 MB) before converting any. Rows now go to the caller page by page.
#[tokio::test]
async fn bulk_read_rows_are_handed_over_page_by_page() {
    let env = env(12, 5, SECRET).await;
    let pages = |sim: &DataverseSim| {
        sim.requests()
            .iter()
            .filter(|r| r.path.ends_with("/msdyn_agentstatuses"))
            .count()
    };
    let mut seen = Vec::new();
    env.connector
        .client()
        .each_agent_status(|row| seen.push((row.agent_id, pages(&env.sim))))
        .await
        .unwrap();
    assert_eq!(seen.len(), 12);
    let pages_read_when_handed: Vec<usize> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        pages_read_when_handed,
        [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],
        "each row is handed over before the next page is read"
    );
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_write_goes_through() {
    let env = env(1, 5_000, SECRET).await;
    env.connector
        .write(&ExternalId(agent(0)), &busy())
        .await
        .unwrap();
    let issued = env.sim.authority().tokens_issued();
    env.sim.inject(Fault::RevokeTokens);
    env.connector
        .write(&ExternalId(agent(0)), &busy())
        .await
        .unwrap();
    assert_eq!(
        env.sim.authority().tokens_issued(),
        issued + 1,
        "exactly one refresh"
    );
    assert_eq!(env.sim.presence(&agent(0)).as_deref(), Some(builtin::BUSY));
}

#[tokio::test]
async fn refused_credentials_are_unauthorized_and_never_shown() {
    let env = env(1, 5_000, "not-the-secret-at-all").await;
    let err = env
        .connector
        .write(&ExternalId(agent(0)), &busy())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized { .. }), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-secret-at-all"), "{shown}");
}

#[tokio::test]
async fn a_throttled_call_reports_retry_after_in_seconds() {
    let env = env(1, 5_000, SECRET).await;
    env.sim.inject(Fault::RateLimited {
        retry_after_secs: 7,
    });
    let err = env
        .connector
        .write(&ExternalId(agent(0)), &busy())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
/// `CCaaS_ModifyAgentPresence` answers 404 for an agent it cannot set, whether unknown or signed
/// out, with the same code: the connector cannot tell them apart, and neither is worth a retry.
async fn an_unknown_agent_is_a_write_that_will_not_land() {
    let env = env(1, 5_000, SECRET).await;
    let err = env
        .connector
        .write(&ExternalId(agent(99)), &busy())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::NotSignedIn { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn the_catalog_refresh_reads_custom_presences() {
    let env = env(1, 5_000, SECRET).await;
    let custom = PresenceEntry {
        id: "aaaaaaaa-1111-2222-3333-444444444444".into(),
        name: "Training".into(),
        text: "In training".into(),
        base: BaseStatus::BusyDnd,
    };
    env.sim.add_custom_presence(custom.clone());
    assert_eq!(env.connector.catalog().canonical(&custom.id), None);
    let n = env.connector.refresh_catalog().await.unwrap();
    assert_eq!(n, 6);
    assert_eq!(
        env.connector.catalog().canonical(&custom.id),
        Some(Availability::DoNotDisturb)
    );
    env.sim.agent_sets(&agent(0), &custom.id);
    let states = env
        .connector
        .read_all(&[ExternalId(agent(0))])
        .await
        .unwrap();
    assert_eq!(
        env.connector.to_canonical(&states[0].native).availability,
        Availability::DoNotDisturb
    );
}

#[tokio::test]
async fn get_presence_is_called_in_its_documented_bare_form_unless_told_otherwise() {
    use presync_dataverse::config::{GetPresenceForm, ReconcileSource};
    for (form, path) in [
        (None, "/CCaaS_GetPresence"),
        (
            Some(GetPresenceForm::Function),
            "/CCaaS_GetPresence(ApiVersion=@p1)",
        ),
    ] {
        let env = env_with(2, SECRET, |c| {
            c.reconcile_source = ReconcileSource::GetPresence;
            if let Some(form) = form {
                c.get_presence_form = form;
            }
        })
        .await;
        let users: Vec<ExternalId> = (0..2).map(|i| ExternalId(agent(i))).collect();
        let states = env.connector.read_all(&users).await.unwrap();
        assert_eq!(states.len(), 2, "{form:?}");
        let calls: Vec<_> = env
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("CCaaS_GetPresence"))
            .collect();
        assert_eq!(calls.len(), 2, "{form:?}");
        assert!(
            calls
                .iter()
                .all(|r| r.path.ends_with(path) && r.status == 200),
            "{form:?}: {calls:?}"
        );
    }
}
