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
pub fn unknown_system(name: &str) -> Option<String> {
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

/// A representative read from an import, with where it stands there (`reps.csv:3`,
/// `reps.json[2]`), for errors.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rep: Representative,
    pub at: String,
}

/// A representative's id as stored: trimmed, in lower case (`REP-002` and `rep-002` are one).
pub fn normalise_id(id: &str) -> String {
    id.trim().to_lowercase()
}

/// The checks every entry gets, whatever its format: an id, known systems, no id twice.
fn check(
    at: &str,
    id: &str,
    systems: impl Iterator<Item = String>,
    seen: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    if id.is_empty() {
        problems.push(format!("{at}: id is empty"));
        return;
    }
    if let Some(first) = seen.insert(id.to_owned(), at.to_owned()) {
        problems.push(format!("{at}: id `{id}` is also at {first}"));
    }
    for system in systems {
        if let Some(why) = unknown_system(&system) {
            problems.push(format!("{at}: external_ids: {why}"));
        }
    }
}

/// Parse an import file: JSON (an array of `{id, display_name, external_ids}`) or CSV with the
/// header `id,display_name,<system>,<system>...` (one column per system; empty cells skipped;
/// cells may be quoted, `"Hopper, Grace"`; a byte-order mark, as Excel writes "CSV UTF-8", is
/// skipped). Ids are stored in lower case. Every problem is reported with its line or index.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Vec<Entry>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('[');
    if json {
        parse_json(path, text)
    } else {
        parse_csv(path, text)
    }
}

fn parse_json(path: &Path, text: &str) -> anyhow::Result<Vec<Entry>> {
    let reps: Vec<JsonRep> = serde_json::from_str(text)
        .with_context(|| format!("{}: not a JSON array of representatives", path.display()))?;
    let mut seen = BTreeMap::new();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (i, r) in reps.into_iter().enumerate() {
        let at = format!("{}[{i}]", path.display());
        let id = normalise_id(&r.id);
        let systems = r.external_ids.keys().cloned();
        check(&at, &id, systems, &mut seen, &mut problems);
        let external_ids = r
            .external_ids
            .into_iter()
            .filter(|(_, e)| !e.trim().is_empty())
            .map(|(s, e)| (SystemId(s), ExternalId(e.trim().to_ascii_lowercase())))
            .collect();
        out.push(Entry {
            rep: Representative {
                id: RepId(id),
                display_name: r.display_name,
                external_ids,
            },
            at,
        });
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

fn parse_csv(path: &Path, text: &str) -> anyhow::Result<Vec<Entry>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("{}:{line}: {e}", path.display())
        })?;
        // Blank lines are skipped.
        if record.iter().all(str::is_empty) {
            continue;
        }
        let line = record.position().map_or(0, |p| line_at(text, p.byte()));
        records.push((line, record));
    }
    let mut records = records.into_iter();
    let Some((header_line, header)) = records.next() else {
        bail!("{}: empty file", path.display());
    };
    let columns: Vec<&str> = header.iter().collect();
    if columns.len() < 3 || columns[0] != "id" || columns[1] != "display_name" {
        bail!(
            "{}:{header_line}: the header must be id,display_name,<system>[,<system>...], e.g. id,display_name,dataverse,teams",
            path.display()
        );
    }
    let mut problems = Vec::new();
    for (i, column) in columns.iter().enumerate().skip(2) {
        if let Some(why) = unknown_system(column) {
            problems.push(format!(
                "{}:{header_line}: column {}: {why}",
                path.display(),
                i + 1
            ));
        } else if columns[2..i].contains(column) {
            problems.push(format!(
                "{}:{header_line}: column {}: `{column}` is a column already",
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
    for (line, record) in records {
        let at = format!("{}:{line}", path.display());
        let cells: Vec<&str> = record.iter().collect();
        if cells.len() != columns.len() {
            problems.push(format!(
                "{at}: {} cells, the header has {}",
                cells.len(),
                columns.len()
            ));
            continue;
        }
        let id = normalise_id(cells[0]);
        check(&at, &id, std::iter::empty(), &mut seen, &mut problems);
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
        out.push(Entry {
            rep: Representative {
                id: RepId(id),
                display_name: cells[1].to_owned(),
                external_ids,
            },
            at,
        });
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

/// The line (from 1) of the record that starts at byte `at`. (The reader's own line count
/// lags by one after a `\r\n`: it can place a record's start on the line ending before it.)
fn line_at(text: &str, at: u64) -> u64 {
    let bytes = text.as_bytes();
    let mut at = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
    while matches!(bytes.get(at), Some(b'\r' | b'\n')) {
        at += 1;
    }
    bytes[..at].iter().filter(|b| **b == b'\n').count() as u64 + 1
}

/// Why an import failed.
#[derive(Debug)]
pub enum ImportError {
    /// An external id belongs to another representative (in the directory, or earlier in the
    /// same import): nothing was imported. The message names the entry.
    Clash(String),
    Store(presync_engine::store::StoreError),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Clash(m) => f.write_str(m),
            ImportError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for ImportError {}

/// Write `entries` to the directory in one transaction: all of them, or none (an external id
/// that belongs to another representative names the entry that brought it).
pub async fn import_entries(store: &Store, entries: &[Entry], now: i64) -> Result<(), ImportError> {
    use presync_engine::store::StoreError;
    let reps: Vec<Representative> = entries.iter().map(|e| e.rep.clone()).collect();
    match store.upsert_representatives(&reps, now).await {
        Ok(()) => Ok(()),
        Err(e @ StoreError::ExternalIdTaken { .. }) => {
            let StoreError::ExternalIdTaken {
                system,
                external_id,
                owner,
            } = &e
            else {
                unreachable!("matched above")
            };
            let at = entries
                .iter()
                .find(|entry| {
                    entry.rep.id != *owner
                        && entry
                            .rep
                            .external_ids
                            .get(&SystemId(system.clone()))
                            .is_some_and(|x| x.as_str() == external_id)
                })
                .map_or("the import".to_owned(), |entry| entry.at.clone());
            Err(ImportError::Clash(format!(
                "{at}: {e}; nothing was imported"
            )))
        }
        Err(e) => Err(ImportError::Store(e)),
    }
}

/// Import a file into the directory, all or nothing; returns how many representatives were
/// written.
pub async fn import(store: &Store, path: &Path, now: i64) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries = parse(path, &text)?;
    import_entries(store, &entries, now).await?;
    Ok(entries.len())
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
                .rep
                .external_ids
                .get(&SystemId::from("dataverse"))
                .unwrap()
                .as_str(),
            "aaaa-1"
        );
        assert_eq!(reps[1].rep.external_ids.len(), 1, "an empty cell is no id");
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
        assert_eq!(err, "r.csv:4: id `ann` is also at r.csv:2");
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
        assert!(
            err.contains("r.json[1]: id `ann` is also at r.json[0]"),
            "{err}"
        );
    }

    #[test]
    fn json_import() {
        let reps = parse(
            Path::new("r.json"),
            r#"[{"id":"ann","display_name":"Ann","external_ids":{"dataverse":"X","teams":"y"}}]"#,
        )
        .unwrap();
        assert_eq!(reps[0].rep.external_ids.len(), 2);
        assert!(parse(Path::new("r.json"), r#"[{"id":"a","name":"A"}]"#).is_err());
    }

    #[test]
    fn a_csv_saved_by_excel_with_a_byte_order_mark_and_quoted_cells_is_read() {
        let reps = parse(
            Path::new("r.csv"),
            "\u{feff}id,display_name,teams\r\nrep-1,\"Hopper, Grace\",AAD-1\r\n",
        )
        .unwrap();
        assert_eq!(reps.len(), 1);
        assert_eq!(reps[0].rep.display_name, "Hopper, Grace");
        assert_eq!(reps[0].at, "r.csv:2");
    }

    #[test]
    fn ids_are_one_whatever_their_case() {
        let reps = parse(
            Path::new("r.csv"),
            "id,display_name,teams\n REP-002 ,Ann,a\n",
        )
        .unwrap();
        assert_eq!(reps[0].rep.id.as_str(), "rep-002");
        let err = parse(
            Path::new("r.csv"),
            "id,display_name,teams\nREP-002,Ann,a\nrep-002,Bob,b\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "r.csv:3: id `rep-002` is also at r.csv:2");
    }

    #[tokio::test]
    async fn an_import_with_a_clash_imports_nothing_and_names_the_line() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let first = parse(Path::new("a.csv"), "id,display_name,teams\nann,Ann,aad-1\n").unwrap();
        import_entries(&store, &first, 1).await.unwrap();
        // Line 2 is fine; line 3 takes Ann's Teams id.
        let second = parse(
            Path::new("b.csv"),
            "id,display_name,teams\nbob,Bob,aad-2\ncyd,Cyd,AAD-1\n",
        )
        .unwrap();
        let err = import_entries(&store, &second, 2)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.csv:3: "), "{err}");
        assert!(err.contains("nothing was imported"), "{err}");
        let ids: Vec<String> = store
            .representatives()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id.as_str().to_owned())
            .collect();
        assert_eq!(ids, ["ann"], "line 2 was not kept");
        // Two lines of one import clash with each other: the later one is named.
        let third = parse(
            Path::new("c.csv"),
            "id,display_name,teams\ndee,Dee,aad-9\neve,Eve,aad-9\n",
        )
        .unwrap();
        let err = import_entries(&store, &third, 3)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.csv:3: "), "{err}");
    }
}
