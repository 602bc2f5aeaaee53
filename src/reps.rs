//! `presync reps import|list` and `presync explain`: the directory and the history, from the
//! command line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use presync_engine::store::Store;
use presync_engine::{ExternalId, RepId, Representative, SystemId};
use serde::Deserialize;

use crate::service::SYSTEMS;

/// Why `name` cannot be a system column or key; `None` when it can.
fn unknown_system(name: &str) -> Option<String> {
    (!SYSTEMS.contains(&name)).then(|| {
        format!(
            "unknown system `{name}`; the systems are {}",
            SYSTEMS.join(", ")
        )
    })
}

/// One representative in a JSON import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRep {
    id: String,
    display_name: String,
    external_ids: BTreeMap<String, String>,
}

/// Parse an import file: JSON (an array of `{id, display_name, external_ids}`) or CSV with the
/// header `id,display_name,<system>,<system>...` (one column per system; empty cells skipped).
/// Every problem is reported with its line or index.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Vec<Representative>> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('[');
    if json {
        let reps: Vec<JsonRep> = serde_json::from_str(text)
            .with_context(|| format!("{}: not a JSON array of representatives", path.display()))?;
        let mut seen = BTreeMap::new();
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for (i, r) in reps.into_iter().enumerate() {
            let at = format!("{}[{i}]", path.display());
            if r.id.trim().is_empty() {
                problems.push(format!("{at}: id is empty"));
                continue;
            }
            if let Some(first) = seen.insert(r.id.clone(), i) {
                problems.push(format!("{at}: id `{}` is also at [{first}]", r.id));
            }
            for system in r.external_ids.keys() {
                if let Some(why) = unknown_system(system) {
                    problems.push(format!("{at}: external_ids: {why}"));
                }
            }
            out.push(Representative {
                id: RepId(r.id),
                display_name: r.display_name,
                external_ids: r
                    .external_ids
                    .into_iter()
                    .map(|(s, e)| (SystemId(s), ExternalId(e.to_ascii_lowercase())))
                    .collect(),
            });
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        return Ok(out);
    }
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{}: empty file", path.display());
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    if columns.len() < 3 || columns[0] != "id" || columns[1] != "display_name" {
        bail!(
            "{}:1: the header must be id,display_name,<system>[,<system>...], e.g. id,display_name,dataverse,teams",
            path.display()
        );
    }
    let mut problems = Vec::new();
    for (i, column) in columns.iter().enumerate().skip(2) {
        if let Some(why) = unknown_system(column) {
            problems.push(format!("{}:1: column {}: {why}", path.display(), i + 1));
        } else if columns[2..i].contains(column) {
            problems.push(format!(
                "{}:1: column {}: `{column}` is a column already",
                path.display(),
                i + 1
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != columns.len() {
            problems.push(format!(
                "{}:{}: {} cells, the header has {}",
                path.display(),
                n + 1,
                cells.len(),
                columns.len()
            ));
            continue;
        }
        if cells[0].is_empty() {
            problems.push(format!("{}:{}: id is empty", path.display(), n + 1));
            continue;
        }
        if let Some(first) = seen.insert(cells[0], n + 1) {
            problems.push(format!(
                "{}:{}: id `{}` is also on line {first}",
                path.display(),
                n + 1,
                cells[0]
            ));
        }
        let external_ids = columns[2..]
            .iter()
            .zip(&cells[2..])
            .filter(|(_, v)| !v.is_empty())
            .map(|(s, v)| {
                (
                    SystemId((*s).to_owned()),
                    ExternalId(v.to_ascii_lowercase()),
                )
            })
            .collect();
        out.push(Representative {
            id: RepId(cells[0].to_owned()),
            display_name: cells[1].to_owned(),
            external_ids,
        });
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

/// Import a file into the directory; returns how many representatives were written.
pub async fn import(store: &Store, path: &Path, now: i64) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let reps = parse(path, &text)?;
    for rep in &reps {
        store
            .upsert_representative(rep, now)
            .await
            .with_context(|| format!("importing {}", rep.id))?;
    }
    Ok(reps.len())
}

/// The directory as lines: id, name, and each system's id.
pub async fn list(store: &Store) -> anyhow::Result<String> {
    let mut out = String::new();
    for rep in store.representatives().await? {
        let ids: Vec<String> = rep
            .external_ids
            .iter()
            .map(|(s, e)| format!("{}={}", printable(s.as_str()), printable(e.as_str())))
            .collect();
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            printable(rep.id.as_str()),
            printable(&rep.display_name),
            ids.join(" ")
        ));
    }
    Ok(out)
}

/// `s` with its control characters escaped (a newline as `\n`, an escape as `\u{1b}`), so that
/// a value taken from a file or a remote system prints on its own line and can neither forge
/// another line nor drive a terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Why a representative's presence is what it is: the canonical state, each system's observed
/// and written state, and the last decisions with their rules.
pub async fn explain(store: &Store, rep: &RepId, limit: i64) -> anyhow::Result<String> {
    use presync_engine::time::to_rfc3339_millis;
    let Some(r) = store.representative(rep).await? else {
        bail!("no representative {rep} in the directory");
    };
    let view = store.rep_view(rep).await?;
    let mut out = format!(
        "{} ({})\n",
        printable(&r.display_name),
        printable(r.id.as_str())
    );
    match &view.canonical {
        Some(c) => out.push_str(&format!(
            "canonical: {} (version {}) from {} at {}\n",
            c.availability,
            c.version,
            c.source,
            to_rfc3339_millis(c.source_time)
        )),
        None => out.push_str("canonical: not known yet\n"),
    }
    for (system, state) in &view.systems {
        let observed = state.observed.as_ref().map_or("-".to_owned(), |o| {
            let whose = if o.by_presync {
                ", presync's own write"
            } else {
                ""
            };
            let own = o.own.as_ref().map_or(String::new(), |own| {
                let shown = own
                    .shown
                    .as_ref()
                    .map_or("hidden".to_owned(), |s| s.native.code.clone());
                format!("; the person's own: {shown} (may be {})", own.possible)
            });
            format!("{} ({}{whose}){own}", o.availability, o.native.code)
        });
        let written = state.written.as_ref().map_or("-".to_owned(), |w| {
            w.availability
                .map_or("withdrawn".to_owned(), |a| a.to_string())
        });
        out.push_str(&format!(
            "{system}: observed {}, written {written}\n",
            printable(&observed)
        ));
    }
    let history = store.history(rep, limit).await?;
    // History is newest first: the latest hold event says whether a hold holds now.
    if let Some(h) = history.iter().find(|h| h.rule == "hold") {
        let state = if h.outcome == "released" {
            "none (last released"
        } else {
            "holding (since"
        };
        out.push_str(&format!(
            "hold: {state} at {}: {})\n",
            to_rfc3339_millis(h.at),
            printable(&h.detail)
        ));
    }
    out.push_str("recent decisions (newest first):\n");
    for h in &history {
        let writes = if h.writes.is_empty() {
            String::new()
        } else {
            format!(" -> writes {}", h.writes.join(", "))
        };
        // A hold's event, and a write's outcome, say more than their rule.
        let rule = match h.rule.as_str() {
            "hold" | "write" => format!("{} {}", h.rule, h.outcome),
            other => other.to_owned(),
        };
        out.push_str(&format!(
            "  {} {} {rule}: {}{writes}\n",
            to_rfc3339_millis(h.at),
            h.system,
            printable(&h.detail)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_print_escaped_on_one_line() {
        assert_eq!(printable("Ann Lee"), "Ann Lee");
        assert_eq!(
            printable("Ann\nbob\tBob Forged\u{1b}[31m"),
            "Ann\\nbob\\tBob Forged\\u{1b}[31m"
        );
        assert_eq!(printable("Zoë\u{85}"), "Zoë\\u{85}");
    }

    #[test]
    fn csv_with_one_column_per_system() {
        let reps = parse(
            Path::new("reps.csv"),
            "id,display_name,dataverse,teams\nann,Ann Lee,AAAA-1,aad-1\nbob,Bob,,aad-2\n",
        )
        .unwrap();
        assert_eq!(reps.len(), 2);
        assert_eq!(
            reps[0]
                .external_ids
                .get(&SystemId::from("dataverse"))
                .unwrap()
                .as_str(),
            "aaaa-1"
        );
        assert_eq!(reps[1].external_ids.len(), 1, "an empty cell is no id");
    }

    #[test]
    fn every_bad_line_is_reported() {
        let err = parse(
            Path::new("r.csv"),
            "id,display_name,teams\n,No id,x\nann,Ann\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("r.csv:2") && msg.contains("r.csv:3"), "{msg}");
        let err = parse(Path::new("r.csv"), "name,teams\n").unwrap_err();
        assert!(err.to_string().contains("header"));
    }

    /// A misspelt or repeated system column, or an id twice, would import what nothing reads
    /// or overwrite a line with a later one: refused, every problem named, nothing imported.
    #[test]
    fn unknown_or_repeated_columns_and_repeated_ids_are_refused() {
        let err = parse(
            Path::new("r.csv"),
            "id,display_name,dataverse,team,dataverse\nann,Ann,a,b,c\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "r.csv:1: column 4: unknown system `team`; the systems are dataverse, teams"
            ),
            "{err}"
        );
        assert!(
            err.contains("r.csv:1: column 5: `dataverse` is a column already"),
            "{err}"
        );
        let err = parse(
            Path::new("r.csv"),
            "id,display_name,teams\nann,Ann,a\nbob,Bob,b\nann,Ann Lee,c\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "r.csv:4: id `ann` is also on line 2");
        let err = parse(
            Path::new("r.json"),
            r#"[{"id":"ann","display_name":"Ann","external_ids":{"temas":"x"}},
                {"id":"ann","display_name":"Ann","external_ids":{}}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.json[0]: external_ids: unknown system `temas`"),
            "{err}"
        );
        assert!(err.contains("r.json[1]: id `ann` is also at [0]"), "{err}");
    }

    #[test]
    fn json_import() {
        let reps = parse(
            Path::new("r.json"),
            r#"[{"id":"ann","display_name":"Ann","external_ids":{"dataverse":"X","teams":"y"}}]"#,
        )
        .unwrap();
        assert_eq!(reps[0].external_ids.len(), 2);
        assert!(parse(Path::new("r.json"), r#"[{"id":"a","name":"A"}]"#).is_err());
    }
}
