//! The routing-safety findings, each a scenario of `fixtures/scenarios/` played by the real
//! binary (`presync scenario run FILE --json`: both simulators, the real service, and the
//! expectations checked against what each system showed). Every file there also runs in CI;
//! these are the ones that failed before presync followed what the people did.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// Play `file` and return its exit status and its JSON report.
fn play(file: &Path) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_presync"))
        .args(["scenario", "run"])
        .arg(file)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: no JSON report ({e}):\n{}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The fixture `name` passes: exit 0, `passed`, and every expectation met.
fn passes(name: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/scenarios")
        .join(name);
    let (ok, report) = play(&file);
    assert!(ok && report["passed"] == true, "{name}: {report:#}");
    let expectations = report["expectations"].as_array().unwrap();
    assert!(!expectations.is_empty(), "{name} checks nothing");
    assert!(
        expectations.iter().all(|e| e["passed"] == true),
        "{report:#}"
    );
}

/// Finding 1, session mode: a break in D365 while the Teams client stays Available. presync
/// lowers its own Teams session, Teams falls back to the client's Available, and that is not
/// the person's change: D365 stays Away and the representative is not routed.
#[test]
fn a_break_in_d365_stays_with_the_teams_client_available() {
    passes("d365-break-stays.toml");
}

/// Finding 1, session mode: signing out of D365 at the end of a shift, Teams staying on.
#[test]
fn a_sign_out_of_d365_stays_with_the_teams_client_available() {
    passes("d365-sign-out-stays.toml");
}

/// Finding 1 in preferred mode: presync's preferred presence is cleared at the sign-out and
/// Teams shows the client's Available again.
#[test]
fn in_preferred_mode_a_break_and_a_sign_out_stay() {
    passes("preferred-mode-break-and-sign-out.toml");
}

/// Findings 2 and 3: a meeting through a conversation's close. D365 recalculates at the close
/// and makes the representative Available; the hold (Busy - DND, not Busy, which a workstream
/// may route to) is put back at once.
#[test]
fn a_meeting_through_a_close_stays_unroutable() {
    passes("meeting-through-a-close.toml");
}

/// A failed expectation exits non-zero and says what each system showed.
#[test]
fn a_failed_expectation_exits_non_zero_and_says_what_each_system_showed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.toml");
    std::fs::write(
        &file,
        r#"
name = "A break expected to be routable"
reps = 1

[[step]]
at = 1.0
rep = "rep-1"
do = "d365.set"
to = "Away"

[[expect]]
at = 4.0
rep = "rep-1"
d365 = "Available"
routable = true
"#,
    )
    .unwrap();
    let (ok, report) = play(&file);
    assert!(!ok, "{report:#}");
    assert_eq!(report["passed"], false);
    let e = &report["expectations"][0];
    assert_eq!(e["passed"], false);
    assert_eq!(e["want"]["d365"], "Available");
    assert_eq!(e["got"]["d365"], "Away", "{e}");
    assert_eq!(e["got"]["routable"], false, "{e}");
    assert!(e["got"]["teams"].is_string(), "{e}");
}
