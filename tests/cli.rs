//! The real `presync` binary, run as a user would.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[path = "../engine/tests/common/mod.rs"]
mod common;

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
fn logs_written_to_a_file_or_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("p.db").display());
    let out = presync()
        .args(["migrate", "--database", &url])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("DEBUG"), "the log lines to check: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log: {log:?}"
    );
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
#[cfg_attr(
    not(postgres_tests),
    ignore = "needs PostgreSQL: set PRESYNC_TEST_POSTGRES_URL"
)]
async fn migrate_runs_on_postgres_when_configured() {
    let pg = common::TestDb::postgres().await;
    let out = presync()
        .args(["migrate"])
        .env("PRESYNC_DATABASE_URL", pg.url())
        .output()
        .unwrap();
    pg.cleanup().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inspect_dataverse_prints_what_presync_derives_from_a_capture() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json"
    );
    let out = presync()
        .args(["inspect", "dataverse", file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["system"], "dataverse");
    assert_eq!(v["event"], "Update");
    assert_eq!(v["entity"], "msdyn_agentstatus");
    assert_eq!(v["agent_id"], "97c90b02-4e38-ef11-a315-000d3a5a54dc");
    assert_eq!(v["presence_id"], "efdeb843-c07a-e811-8162-000d3aa11f50");
    assert_eq!(v["canonical"], "Busy");
    assert_eq!(v["source_modified_at"], "2024-08-02T07:00:38.000Z");
    assert_eq!(v["modified_by"], "AGENT");
    assert_eq!(v["row_version"], "5948260");
    assert!(v["delivery_key"]
        .as_str()
        .unwrap()
        .starts_with("dataverse:"));
}

#[test]
fn inspect_dataverse_ignores_another_entity_and_exits_0() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/dataverse/albanian-xrm-DeserializationFromTextSamplesTests-0.json"
    );
    let out = presync()
        .args(["inspect", "dataverse", file])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entity"], "account");
    assert!(v["ignored"].is_string());
}

#[test]
fn inspect_dataverse_refuses_an_unreadable_body_with_exit_2_and_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        b"{\"MessageName\": \"Update\", \"InputParameters\": [1,",
    )
    .unwrap();
    let out = presync()
        .args(["inspect", "dataverse"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("line") && err.contains("column"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A `presync sim ...` child process, killed when dropped (also when a test panics).
struct RunningSim {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, from the line the simulator prints when it listens.
    base: String,
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `presync sim <args>` on an ephemeral port with the simulators' test secret.
fn start_sim(args: &[&str]) -> RunningSim {
    use std::io::{BufRead, BufReader};
    let mut child = presync()
        .arg("sim")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("PRESYNC_SIM_CLIENT_SECRET", SIM_SECRET)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    let sim = RunningSim { child, base };
    assert!(sim.base.starts_with("http://127.0.0.1:"), "{line}");
    sim
}

const SIM_SECRET: &str = "a-test-secret-for-the-sim";

/// A client-credentials access token from a simulator's token endpoint.
async fn sim_bearer(client: &reqwest::Client, base: &str, client_id: &str, scope: &str) -> String {
    let token: serde_json::Value = client
        .post(format!("{base}/presync-sim/oauth2/v2.0/token"))
        .form(&[
            ("client_id", client_id),
            ("client_secret", SIM_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sim_dataverse_serves_the_token_endpoint_and_the_web_api() {
    let sim = start_sim(&["dataverse", "--agents", "3"]);
    let base = &sim.base;
    let client = reqwest::Client::new();
    let bearer = sim_bearer(
        &client,
        base,
        "presync",
        "https://contoso.crm.dynamics.com/.default",
    )
    .await;
    let rows: serde_json::Value = client
        .get(format!(
            "{base}/api/data/v9.2/msdyn_agentstatuses?$select=msdyn_agentstatusid,_msdyn_agentid_value"
        ))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rows["value"].as_array().map(Vec::len), Some(3));
}

#[test]
fn inspect_teams_prints_one_entry_per_item() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/teams/batch-two-subscriptions.json"
    );
    let out = presync().args(["inspect", "teams", file]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["kind"], "change");
        assert!(item["subscription_id"].is_string() && item["user_id"].is_string());
        assert!(
            item["availability"].is_null(),
            "basic notifications carry no availability"
        );
    }
}

#[test]
fn inspect_teams_reads_a_presence_collection() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/teams/presences-by-user-id.json"
    );
    let out = presync().args(["inspect", "teams", file]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let canonical: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["canonical"].clone())
        .collect();
    assert_eq!(
        canonical,
        [
            serde_json::json!("Busy"),
            serde_json::json!("Busy"),
            serde_json::Value::Null
        ]
    );
}

#[test]
fn inspect_teams_decrypts_a_rich_notification_with_the_key() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    let out = presync()
        .args([
            "inspect",
            "teams",
            &format!("{dir}/teams/rich-presence.json"),
        ])
        .args([
            "--key",
            &format!("{dir}/entra/test-only-key.pem"),
            "--certificate-id",
            "presync-test-only-cert",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["availability"].is_string(), "{v}");
}

#[test]
fn inspect_teams_refuses_an_unreadable_body_with_exit_2_and_one_line() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/teams/malformed-truncated.json"
    );
    let out = presync().args(["inspect", "teams", file]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn sim_teams_serves_presence_reads() {
    let sim = start_sim(&["teams", "--users", "2"]);
    let base = &sim.base;
    let client = reqwest::Client::new();
    let bearer = sim_bearer(
        &client,
        base,
        "11111111-2222-3333-4444-555555555555",
        "https://graph.microsoft.com/.default",
    )
    .await;
    let ids = [
        "aad00000-0000-4000-8000-000000000000",
        "aad00000-0000-4000-8000-000000000001",
    ];
    let body: serde_json::Value = client
        .post(format!("{base}/v1.0/communications/getPresencesByUserId"))
        .bearer_auth(bearer)
        .json(&serde_json::json!({ "ids": ids }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let available = body["value"].as_array().map(|v| {
        v.iter()
            .filter(|p| p["availability"] == "Available")
            .count()
    });
    assert_eq!(available, Some(2));
}

fn with_example_secrets(cmd: &mut Command) -> &mut Command {
    cmd.env("PRESYNC_ADMIN_TOKEN", "admin")
        .env("PRESYNC_DATAVERSE_WEBHOOK_SECRET", "0123456789abcdef0123")
        .env("PRESYNC_DATAVERSE_CLIENT_SECRET", "dv")
        .env("PRESYNC_TEAMS_CLIENT_SECRET", "teams")
}

#[test]
fn config_default_prints_an_example_that_config_check_accepts() {
    let out = presync().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presync.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = with_example_secrets(presync().args(["config", "check", "-c"]).arg(&file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A PRESYNC_* variable overrides a key, and its problem is reported with the key path.
    let out = with_example_secrets(presync().args(["config", "check", "-c"]).arg(&file))
        .env("PRESYNC_HTTP__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
}

#[test]
fn a_secret_written_where_its_reference_belongs_is_never_repeated() {
    let out = presync().args(["config", "default"]).output().unwrap();
    let example = String::from_utf8(out.stdout).unwrap();
    let reference = "webhook_secret = { env = \"PRESYNC_DATAVERSE_WEBHOOK_SECRET\" }";
    assert!(example.contains(reference), "{example}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("presync.toml");
    // Inline in the file, in a map under an unknown key, and through a PRESYNC_ variable.
    for (text, var) in [
        (
            example.replace(reference, "webhook_secret = \"inline-s3cr3t-value-4711\""),
            None,
        ),
        (
            example.replace(
                reference,
                "webhook_secret = { value = \"inline-s3cr3t-value-4711\" }",
            ),
            None,
        ),
        (
            example.clone(),
            Some(("PRESYNC_HTTP__ADMIN_TOKEN", "inline-s3cr3t-value-4711")),
        ),
    ] {
        std::fs::write(&file, &text).unwrap();
        let mut cmd = presync();
        cmd.args(["config", "check", "-c"]).arg(&file);
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let out = with_example_secrets(&mut cmd).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("{ env = \"NAME\" }"), "{err}");
    }
}

#[test]
fn config_check_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[database]\nurl = \"mysql://root:hunter2@db/x\"\n[http]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let out = presync()
        .args(["config", "check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["database.url", "http.listen", "dataverse, teams"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn config_check_reports_every_problem_with_its_line_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typos.toml");
    std::fs::write(
        &file,
        r#"[database]
url = "sqlite:presync.db"

[http]
listen = "127.0.0.1:8080"
lisen = "127.0.0.1:9090"

[dataverse]
org_url = "https://contoso.crm.dynamics.com"
webhook_secret = { env = "CLI_SHORT_SECRET" }
discovry = true

[dataverse.entra]
tenant_id = "t"
client_id = "c"
client_secret = { env = "CLI_SHORT_SECRET" }

[teams]
ingress = "polling"
poll_interval_secs = "often"

[teams.entra]
tenant_id = "t"
client_id = "c"
client_secret = { env = "CLI_SHORT_SECRET" }

[teams.graph]
app_id = "c"
"#,
    )
    .unwrap();
    let out = presync()
        .args(["config", "check", "-c"])
        .arg(&file)
        .env("CLI_SHORT_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "line 6: http.lisen: unknown key `lisen` (did you mean `listen`?)",
        "line 11: dataverse.discovry: unknown key `discovry` (did you mean `discovery`?)",
        "line 20: teams.poll_interval_secs: is string \"often\", but must be a whole number, 0 or more",
        "line 10: dataverse.webhook_secret: use a random secret of at least 16 characters",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    assert!(err.contains("4 problem(s)"), "{err}");
    for internal in ["expected `one of", "webhook.auth.value", "short\""] {
        assert!(!err.contains(internal), "{internal:?} in:\n{err}");
    }
}

/// `presync sim up`, then the commands it prints, as the README's quick start has them.
#[test]
fn sim_up_prints_commands_that_run_presync_against_the_simulators() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("try");
    let mut sim = presync()
        .args(["sim", "up", "--reps", "3", "--dir"])
        .arg(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sim.stdout.take().unwrap();
    let _sim = KillOnDrop(sim);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut commands = Vec::new();
    let mut listen = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(cmd) = line.strip_prefix("  ") {
            commands.push(cmd.to_owned());
        }
        if let Some(rest) = line.strip_prefix("presync will listen on ") {
            listen = rest.split(". ").next().map(str::to_owned);
            break;
        }
    }
    assert_eq!(commands.len(), 2, "{commands:?}");
    let listen = listen.expect("the address presync will listen on");
    for secret in [
        "webhook-secret",
        "dataverse-secret",
        "graph-secret",
        "admin-token",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(work.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let toml = std::fs::read_to_string(work.join("presync.toml")).unwrap();
    assert!(toml.contains("file = "), "{toml}");
    let run = |cmd: &str| {
        let mut parts = cmd.split_whitespace();
        let exe = parts.next().unwrap();
        assert!(exe.ends_with("presync"), "{cmd}");
        let mut c = presync();
        c.args(parts);
        c
    };
    let out = run(&commands[0]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 representative(s) imported"));
    let log = dir.path().join("run.log");
    let mut service = KillOnDrop(
        run(&commands[1])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Ready, with both connectors' credentials accepted by the simulators.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let health = loop {
        let body = http_get(&listen, "/readyz").unwrap_or_default();
        if body.contains("\"ready\":true") {
            break body;
        }
        assert!(
            service.0.try_wait().unwrap().is_none(),
            "presync run exited"
        );
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["status"], "ok", "{health}");
    assert_eq!(v["connectors"]["dataverse"], "ok", "{health}");
    assert_eq!(v["connectors"]["teams"], "ok", "{health}");
    // The default log level: presync's own INFO lines, not the scheduler library's.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("presync running"), "{logged}");
    assert!(!logged.contains("tokio_cron_scheduler"), "{logged}");
}

/// The body of `GET base/path` (HTTP/1.1, one request per connection).
fn http_get(base: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// A child process, killed and waited for when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `reconcile` runs one pass with or without `--once`: without it, it used to refuse with a
/// message about the flag instead of doing what its help says.
#[test]
fn reconcile_without_once_runs_its_pass() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let out = presync()
        .args(["reconcile", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere.toml"), "{err}");
    assert!(!err.contains("--once"), "{err}");
}

#[test]
fn reps_import_list_and_explain_work_on_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("p.db").display());
    let csv = dir.path().join("reps.csv");
    std::fs::write(&csv, "id,display_name,dataverse,teams\nann,Ann Lee,97c90b02-4e38-ef11-a315-000d3a5a54dc,aad-1\nbob,Bob Ray,,aad-2\n").unwrap();
    let out = presync()
        .args(["reps", "import"])
        .arg(&csv)
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 representative(s)"));
    let out = presync()
        .args(["reps", "list"])
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("ann\tAnn Lee") && listing.contains("teams=aad-2"),
        "{listing}"
    );
    let out = presync()
        .args(["explain", "ann"])
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("canonical: not known yet"));
    let out = presync()
        .args(["explain", "nobody"])
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no representative nobody"));
}

#[test]
fn a_display_name_with_control_characters_cannot_forge_a_line_of_reps_list() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("p.db").display());
    let file = dir.path().join("reps.json");
    std::fs::write(
        &file,
        r#"[{"id": "ann", "display_name": "Ann\nmallory\tMallory\u001b[31m", "external_ids": {"teams": "aad-1"}}]"#,
    )
    .unwrap();
    let out = presync()
        .args(["reps", "import"])
        .arg(&file)
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = presync()
        .args(["reps", "list"])
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(!listing.contains('\u{1b}'), "{listing}");
    assert!(
        listing.contains("Ann\\nmallory\\tMallory\\u{1b}[31m"),
        "{listing}"
    );
}

#[test]
fn the_demo_refuses_a_database_an_earlier_day_left() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.db");
    std::fs::write(&file, b"").unwrap();
    let out = presync()
        .args(["demo", "--reps", "2", "--duration", "1", "--database"])
        .arg(format!("sqlite:{}", file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists already"), "{err}");
}

#[test]
fn read_commands_refuse_a_database_that_is_not_there_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.db");
    let db = format!("sqlite:{}", file.display());
    for args in [vec!["reps", "list"], vec!["explain", "ann"]] {
        let out = presync()
            .args(&args)
            .env("PRESYNC_DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no database at"), "{args:?}: {err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{args:?} created a file"
        );
    }
}

#[cfg(unix)]
#[test]
fn the_database_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("p.db").display());
    let csv = dir.path().join("reps.csv");
    std::fs::write(&csv, "id,display_name,teams\nann,Ann Lee,aad-1\n").unwrap();
    let out = presync()
        .args(["reps", "import"])
        .arg(&csv)
        .env("PRESYNC_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path == csv {
            continue;
        }
        files += 1;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    // The database and its intake, at least (and their WAL files while open).
    assert!(files >= 2, "{files}");
}

#[test]
fn the_demo_follows_the_people_and_prints_its_summary_as_json() {
    let out = presync()
        .args(["demo", "--reps", "8", "--duration", "6", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["reps"], 8);
    assert_eq!(s["passed"], true, "{s}");
    assert_eq!(s["checks"]["follows_the_people"], true, "{s}");
    assert_eq!(s["routing"]["offers_while_unavailable"], 0, "{s}");
    assert!(s["people"]["d365_actions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["people"]["teams_actions"].as_u64().unwrap() > 0, "{s}");
    for system in ["d365", "teams"] {
        assert!(s["writes"][system]["writes"].is_u64(), "{system} in {s}");
    }
    assert!(s["latency_ms"]["samples"].as_u64().unwrap() > 0, "{s}");
    assert!(s["latency_ms"]["p50"].is_number() && s["latency_ms"]["p99"].is_number());
}
