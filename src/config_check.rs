//! `presync config check`: every problem of a configuration at once, each with its key path,
//! the line of the file it is on, and what is wrong in plain words.
//!
//! Deserialization stops at the first problem, so the check reads the file again and again:
//! each problem found is reported and its key taken out of a copy of the file (a key that is
//! missing, its whole table), until the rest reads; then the rest is validated. Lines come
//! from the original text. A problem in a `PRESYNC_*` variable names the variable.

use std::collections::BTreeSet;
use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use toml_edit::{DocumentMut, ImDocument, Item, TableLike};

use crate::config::Config;

/// Problems reported at most; past it the file is likely not a presync configuration.
const MAX_PROBLEMS: usize = 50;

/// One problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `line N` in the file, or the variable it came from; empty when neither is known.
    pub place: String,
    /// The key path, dotted, with array positions in brackets.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.place.is_empty(), self.key.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.key, self.message),
            (false, true) => write!(f, "{}: {}", self.place, self.message),
            (false, false) => write!(f, "{}: {}: {}", self.place, self.key, self.message),
        }
    }
}

/// Check the configuration in `file` with the `PRESYNC_*` environment over it: the config when
/// it has no problem, else every problem found.
pub fn check(file: &Path) -> Result<Config, Vec<Problem>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Problem {
                place: String::new(),
                key: String::new(),
                message: format!("cannot read {}: {e}", file.display()),
            }])
        }
    };
    let original = match ImDocument::parse(text.as_str()) {
        Ok(d) => d,
        Err(e) => {
            return Err(vec![Problem {
                place: e
                    .span()
                    .map(|s| format!("line {}", line_of(&text, s.start)))
                    .unwrap_or_default(),
                key: String::new(),
                message: format!("not valid TOML: {}", first_line(e.message())),
            }])
        }
    };
    let mut pruned: DocumentMut = original.clone().into_mut();
    let mut problems = Vec::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let config = loop {
        let figment = Figment::new()
            .merge(Toml::string(&pruned.to_string()))
            .merge(
                Env::prefixed("PRESYNC_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            );
        let error = match figment.extract::<Config>() {
            Ok(c) => break Some(c),
            Err(e) => e,
        };
        let mut stuck = false;
        for e in error {
            let (at, message) = describe(&e.path, &e.kind);
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            let place = if from_env {
                variable(&at)
            } else {
                located(&original, &text, &at)
            };
            problems.push(Problem {
                place,
                key: key_path(&at),
                message,
            });
            // Take the key out (a missing one: its table) and read again.
            let target = match &e.kind {
                Kind::MissingField(_) => at[..at.len().saturating_sub(1)].to_vec(),
                _ => at.clone(),
            };
            if from_env || target.is_empty() || !remove(&mut pruned, &target) {
                stuck = true;
            } else {
                removed.insert(key_path(&target));
            }
        }
        if stuck || problems.len() >= MAX_PROBLEMS {
            break None;
        }
    };
    if let Some(config) = config {
        for message in config.validate() {
            let (key, rest) = match message.split_once(": ") {
                Some((k, r)) if !k.contains(' ') => (k.to_owned(), r.to_owned()),
                _ => (String::new(), message.clone()),
            };
            // Validating what was left: a key taken out is not missing, a system taken out
            // is not absent.
            let system_taken_out = removed
                .iter()
                .any(|r| r == crate::service::DATAVERSE || r == crate::service::TEAMS);
            if removed.iter().any(|r| key.starts_with(r.as_str()))
                || (system_taken_out && message.contains("configure at least one system"))
            {
                continue;
            }
            let path: Vec<String> = split_key(&key);
            problems.push(Problem {
                place: if key.is_empty() {
                    String::new()
                } else {
                    located(&original, &text, &path)
                },
                key,
                message: rest,
            });
        }
        if problems.is_empty() {
            return Ok(config);
        }
    }
    Err(problems)
}

/// The key a problem is about, and what is wrong with it in plain words.
fn describe(path: &[String], kind: &Kind) -> (Vec<String>, String) {
    let mut at = path.to_vec();
    let message = match kind {
        Kind::UnknownField(field, expected) => {
            if at.last() != Some(field) {
                at.push(field.clone());
            }
            let mut m = format!("unknown key `{field}`");
            match closest(field, expected) {
                Some(close) => m.push_str(&format!(" (did you mean `{close}`?)")),
                None if !expected.is_empty() => {
                    m.push_str(&format!("; this table takes {}", expected.join(", ")))
                }
                None => {}
            }
            m
        }
        Kind::MissingField(field) => {
            if at.last().map(String::as_str) != Some(field.as_ref()) {
                at.push(field.to_string());
            }
            "missing: this key is required".to_owned()
        }
        Kind::InvalidType(actual, expected) => {
            format!("is {actual}, but must be {}", plain(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("{actual} is not {expected}")
        }
        Kind::UnknownVariant(value, expected) => {
            let mut m = format!("`{value}` is not one of {}", expected.join(", "));
            if let Some(close) = closest(value, expected) {
                m.push_str(&format!(" (did you mean `{close}`?)"));
            }
            m
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    (at, message)
}

/// A Rust type name, as a person would say it.
fn plain(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        other => other.to_owned(),
    }
}

/// The expected name closest to `given`, if one is close enough to be a typo of it.
fn closest<'a>(given: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(given, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min()
        .map(|(_, e)| e)
}

/// `a.b[0].c` from its parts.
fn key_path(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

/// The parts of `a.b[0].c`.
fn split_key(key: &str) -> Vec<String> {
    key.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `PRESYNC_*` variable that sets `path`.
fn variable(path: &[String]) -> String {
    format!(
        "environment variable PRESYNC_{}",
        path.iter()
            .map(|p| p.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// `line N` of the deepest part of `path` the file has.
fn located(doc: &ImDocument<&str>, text: &str, path: &[String]) -> String {
    span_in_item(doc.as_item(), path, None)
        .map(|s| format!("line {}", line_of(text, s.start)))
        .unwrap_or_default()
}

type Span = Option<std::ops::Range<usize>>;

fn span_in_item(item: &Item, path: &[String], span: Span) -> Span {
    let Some((part, rest)) = path.split_first() else {
        return span;
    };
    match item {
        Item::ArrayOfTables(a) => match part.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(t) => span_in_table(t, rest, t.span().or(span)),
            None => span,
        },
        _ => match item.as_table_like() {
            Some(t) => span_in_table(t, path, span),
            None => span,
        },
    }
}

fn span_in_table(table: &dyn TableLike, path: &[String], span: Span) -> Span {
    let Some((part, rest)) = path.split_first() else {
        return span;
    };
    match table.get_key_value(part) {
        Some((key, value)) => span_in_item(value, rest, key.span().or(span)),
        None => span,
    }
}

/// Take the key at `path` out of `doc`; false when it is not there. An element of an array
/// of tables that is itself the problem goes whole.
fn remove(doc: &mut DocumentMut, path: &[String]) -> bool {
    remove_from_item(doc.as_item_mut(), path)
}

fn remove_from_item(item: &mut Item, path: &[String]) -> bool {
    let Some((part, rest)) = path.split_first() else {
        return false;
    };
    if let Item::ArrayOfTables(a) = item {
        let Some(i) = part.parse::<usize>().ok().filter(|i| *i < a.len()) else {
            return false;
        };
        if rest.is_empty() {
            a.remove(i);
            return true;
        }
        return a.get_mut(i).is_some_and(|t| remove_from_table(t, rest));
    }
    item.as_table_like_mut()
        .is_some_and(|t| remove_from_table(t, path))
}

fn remove_from_table(table: &mut dyn TableLike, path: &[String]) -> bool {
    let Some((part, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(part).is_some();
    }
    table
        .get_mut(part)
        .is_some_and(|child| remove_from_item(child, rest))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
