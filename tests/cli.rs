//! The real `presync` binary, run as a user would.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn presync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_presync"))
}

#[test]
fn migrate_creates_the_sqlite_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("p.db").display());
    for _ in 0..2 {
        let out = presync()
            .args(["migrate", "--database", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("schema is up to date"));
    }
    assert!(dir.path().join("p.db").exists());
}

#[test]
fn migrate_refuses_an_unknown_scheme_without_echoing_the_password() {
    let out = presync()
        .args(["migrate", "--database", "mysql://app:hunter2@db/presync"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected sqlite: or postgres://"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn migrate_runs_on_postgres_when_configured() {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("PRESYNC_TEST_POSTGRES_URL") else {
        eprintln!("skipped: PRESYNC_TEST_POSTGRES_URL is not set");
        return;
    };
    let name = format!("presync_cli_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let out = presync()
        .args(["migrate"])
        .env("PRESYNC_DATABASE_URL", &url)
        .output()
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
