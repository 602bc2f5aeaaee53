//! The Markdown report: the machine and the commit first, then the headline table, then one
//! section per figure with what was measured and the command that reproduces it.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Outcome, Scale};

/// Cores, CPU model and memory, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {model}, {:.1} GiB memory",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// `git rev-parse --short HEAD`, and whether the tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head} (with uncommitted changes)")
            } else {
                head
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

/// Now, in UTC, from `date` (the binary carries no calendar library).
fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug build (figures not comparable: use `cargo run --release -- bench`)"
    } else {
        "release build"
    }
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "-",
    }
}

pub fn render(scale: Scale, outcomes: &[Outcome], took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# presync benchmarks\n");
    let _ = writeln!(s, "- Machine: {}", machine());
    let _ = writeln!(s, "- Commit: {}", commit());
    let _ = writeln!(s, "- Date: {}", date());
    let _ = writeln!(s, "- Build: {}", build());
    let _ = writeln!(
        s,
        "- Run: `presync bench{}`, {:.0} s in all{}\n",
        if scale.quick { " --quick" } else { "" },
        took.as_secs_f64(),
        if scale.quick {
            " (smoke run: reduced sizes, not the report's figures)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "Everything runs on this one machine, shared and noisy: the service under test, both \
         simulators and the load generator compete for the same cores. Each figure is measured \
         next to its reference in the same run; the ratio is the headline, the absolute figures \
         are context.\n"
    );
    let _ = writeln!(s, "| Figure | Measured | Reference | Ratio | Goal | Met |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for row in outcomes.iter().flat_map(|o| &o.rows) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row.name,
            row.measured,
            row.reference,
            row.ratio,
            row.goal,
            met(row.met)
        );
    }
    for o in outcomes {
        let _ = writeln!(s, "\n## {}\n", o.figure.name());
        let _ = writeln!(s, "{}\n", o.details.trim_end());
        let _ = writeln!(s, "Reproduce: `{}`", scale.command(o.figure));
    }
    s
}
