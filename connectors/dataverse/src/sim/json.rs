//! A JSON value that keeps its members in the order they were written, for webhook bodies.
//!
//! `serde_json::Value` sorts object members; a `RemoteExecutionContext` is written by WCF's
//! `DataContractJsonSerializer` with `__type` first and the rest in data-member order, and
//! Dataverse escapes the slashes of `/Date(...)/` (every slash, in some payloads). This writer
//! reproduces both.

use std::fmt::Write as _;

/// An ordered JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum J {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    /// A WCF date: `"\/Date(<ms>)\/"`, or `"\/Date(<ms>+0000)\/"` when `offset` is set.
    Date {
        ms: i64,
        offset: bool,
    },
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    /// A string value.
    pub(crate) fn s(v: impl Into<String>) -> J {
        J::Str(v.into())
    }

    /// A date without offset suffix.
    pub(crate) fn date(ms: i64) -> J {
        J::Date { ms, offset: false }
    }

    /// An empty array.
    pub(crate) fn empty() -> J {
        J::Arr(Vec::new())
    }

    /// A `{"key": .., "value": ..}` pair, the form of every Dataverse parameter collection.
    pub(crate) fn kv(key: &str, value: J) -> J {
        J::Obj(vec![("key", J::s(key)), ("value", value)])
    }

    /// Remove the object members named in `keys` (no-op on non-objects).
    pub(crate) fn without(self, keys: &[&str]) -> J {
        match self {
            J::Obj(members) => J::Obj(
                members
                    .into_iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .collect(),
            ),
            other => other,
        }
    }

    /// The JSON text. With `escape_all_slashes`, every `/` inside strings is written `\/` (as the
    /// Create sample does); date slashes are always escaped.
    pub(crate) fn render(&self, escape_all_slashes: bool) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.write(&mut out, escape_all_slashes);
        out
    }

    fn write(&self, out: &mut String, esc: bool) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::Str(s) => write_str(out, s, esc),
            J::Date { ms, offset } => {
                let _ = write!(
                    out,
                    "\"\\/Date({ms}{})\\/\"",
                    if *offset { "+0000" } else { "" }
                );
            }
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out, esc);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k, esc);
                    out.push(':');
                    v.write(out, esc);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str, escape_slashes: bool) {
    // serde_json escapes quotes, backslashes and control characters; a String never fails.
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    if escape_slashes {
        out.push_str(&quoted.replace('/', "\\/"));
    } else {
        out.push_str(&quoted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_and_dates_are_escaped() {
        let v = J::Obj(vec![
            ("__type", J::s("Entity:http://x")),
            ("A", J::date(5)),
            (
                "B",
                J::Date {
                    ms: 7,
                    offset: true,
                },
            ),
            ("C", J::Arr(vec![J::Null, J::Bool(true), J::Int(-3)])),
        ]);
        assert_eq!(
            v.render(false),
            r#"{"__type":"Entity:http://x","A":"\/Date(5)\/","B":"\/Date(7+0000)\/","C":[null,true,-3]}"#
        );
        assert_eq!(
            v.render(true),
            r#"{"__type":"Entity:http:\/\/x","A":"\/Date(5)\/","B":"\/Date(7+0000)\/","C":[null,true,-3]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&v.render(true)).unwrap();
        assert_eq!(parsed["A"], "/Date(5)/");
        assert_eq!(parsed["__type"], "Entity:http://x");
    }

    #[test]
    fn without_drops_members() {
        let v = J::Obj(vec![("a", J::Null), ("b", J::Null)]).without(&["a"]);
        assert_eq!(v.render(false), r#"{"b":null}"#);
    }
}
