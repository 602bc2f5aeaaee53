//! Shared test fixtures: databases for both backends and a `World` of in-memory systems driven
//! by the real engine on a real store.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use presync_engine::clock::ManualClock;
use presync_engine::config::EngineConfig;
use presync_engine::engine::Engine;
use presync_engine::memory::MemorySystem;
use presync_engine::store::Store;
use presync_engine::topology::TopologyConfig;
use presync_engine::{
    Availability, Connector, ExternalId, Observation, RepId, Representative, SystemId,
};
use sqlx::Connection;

/// The environment variable that points the PostgreSQL half of the suites at a server.
pub const POSTGRES_ENV: &str = "PRESYNC_TEST_POSTGRES_URL";

/// A database for one test, dropped (PostgreSQL) or deleted (SQLite) afterwards.
#[derive(Debug)]
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin: String, name: String },
}

impl TestDb {
    /// A fresh SQLite file in a temporary directory.
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh PostgreSQL database on the server of `PRESYNC_TEST_POSTGRES_URL`. The tests
    /// that call this are built as ignored when the variable was not set at build time
    /// (`build.rs`); set then but not now, it is an error, not a skip.
    pub async fn postgres() -> TestDb {
        let admin = std::env::var(POSTGRES_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                panic!("{POSTGRES_ENV} was set when the tests were built but is not set now")
            });
        let name = format!("presync_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is set but unreachable: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        TestDb::Postgres { admin, name }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => format!("sqlite:{}", dir.path().join("presync.db").display()),
            TestDb::Postgres { admin, name } => {
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        }
    }

    /// Drop a PostgreSQL database (after every store using it was closed).
    pub async fn cleanup(self) {
        if let TestDb::Postgres { admin, name } = self {
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// Generate one test per backend for each async scenario `fn(String)` taking a store URL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite();
                    super::$name(db.url()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL")]
                async fn $name() {
                    let db = $crate::common::TestDb::postgres().await;
                    super::$name(db.url()).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

pub const T0: i64 = 1_750_000_000_000;

/// Representatives `rep-0..n`, each with user `sys-user-i` in every system.
pub fn user(system: &str, i: usize) -> ExternalId {
    ExternalId(format!("{system}-user-{i}"))
}

pub fn rep(i: usize) -> RepId {
    RepId(format!("rep-{i}"))
}

/// In-memory systems, a real store and the real engine, driven step by step.
#[derive(Debug)]
pub struct World {
    pub clock: Arc<ManualClock>,
    pub systems: Vec<MemorySystem>,
    pub engine: Engine,
    pub url: String,
    pub config: EngineConfig,
    pub topology: TopologyConfig,
    pub reps: usize,
}

impl World {
    /// `systems` in-memory systems (all overwrite semantics unless changed before `start`),
    /// fully meshed both ways, `reps` representatives starting Offline everywhere.
    pub async fn new(
        url: &str,
        systems: &[MemorySystem],
        reps: usize,
        config: EngineConfig,
    ) -> World {
        let clock = Arc::new(ManualClock::new(T0));
        World::with_clock(url, clock, systems, reps, config).await
    }

    pub async fn with_clock(
        url: &str,
        clock: Arc<ManualClock>,
        systems: &[MemorySystem],
        reps: usize,
        config: EngineConfig,
    ) -> World {
        let connectors = connectors(systems);
        let topology = TopologyConfig::full_mesh(&connectors);
        let store = Store::open(url).await.unwrap();
        for i in 0..reps {
            let mut external_ids = BTreeMap::new();
            for s in systems {
                external_ids.insert(s.name(), user(s.name().as_str(), i));
                s.add_user(user(s.name().as_str(), i), Availability::Offline);
            }
            store
                .upsert_representative(
                    &Representative {
                        id: rep(i),
                        display_name: format!("Rep {i}"),
                        external_ids,
                    },
                    T0,
                )
                .await
                .unwrap();
        }
        let engine =
            Engine::with_clock(store, connectors, &topology, config.clone(), clock.clone())
                .unwrap();
        World {
            clock,
            systems: systems.to_vec(),
            engine,
            url: url.to_owned(),
            config,
            topology,
            reps,
        }
    }

    /// Another engine instance on the same database and systems (a second presync process).
    pub async fn second_instance(&self) -> Engine {
        let store = Store::open(&self.url).await.unwrap();
        Engine::with_clock(
            store,
            connectors(&self.systems),
            &self.topology,
            self.config.clone(),
            self.clock.clone(),
        )
        .unwrap()
    }

    /// Drop the engine as a crash would and start a new one on the same database.
    pub async fn restart(&mut self) {
        self.engine.store().close().await;
        let store = Store::open(&self.url).await.unwrap();
        self.engine = Engine::with_clock(
            store,
            connectors(&self.systems),
            &self.topology,
            self.config.clone(),
            self.clock.clone(),
        )
        .unwrap();
        self.engine.recover().await.unwrap();
    }

    pub fn system(&self, name: &str) -> &MemorySystem {
        self.systems
            .iter()
            .find(|s| s.name().as_str() == name)
            .unwrap()
    }

    /// Every delivery the systems queued since the last call.
    pub fn take_deliveries(&self) -> Vec<Observation> {
        self.systems
            .iter()
            .flat_map(|s| s.take_deliveries())
            .collect()
    }

    /// Deliver everything, resolve, dispatch, until nothing moves.
    pub async fn settle(&self) {
        for _ in 0..50 {
            let deliveries = self.take_deliveries();
            let delivered = !deliveries.is_empty();
            for d in deliveries {
                self.engine.ingest(d).await.unwrap();
            }
            let resolved = self.engine.resolve_pending().await.unwrap();
            let written = self.engine.dispatch_pending().await.unwrap();
            self.clock.advance(1);
            if !delivered && resolved == 0 && written == 0 {
                return;
            }
        }
        panic!("the world did not settle in 50 rounds");
    }

    /// Every system's state of representative `i`.
    pub fn states(&self, i: usize) -> Vec<Option<Availability>> {
        self.systems
            .iter()
            .map(|s| s.state(&user(s.name().as_str(), i)))
            .collect()
    }
}

pub fn connectors(systems: &[MemorySystem]) -> BTreeMap<SystemId, Arc<dyn Connector>> {
    systems
        .iter()
        .map(|s| (s.name(), s.connector() as Arc<dyn Connector>))
        .collect()
}
