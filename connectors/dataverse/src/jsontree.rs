//! The JSON tree the webhook body is parsed into before it becomes an
//! [`ExecutionContext`](crate::context::ExecutionContext).
//!
//! It holds what `serde_json::Value` holds, but an object is its members in a vector instead of
//! a `BTreeMap`, and a string without escapes borrows from the body instead of being copied. A
//! body is parsed once per webhook, and with `serde_json::Value` most of that time went to the
//! tree's small allocations (BENCHMARKS.md has the figures).
//!
//! It reads the same as `serde_json::Value`: [`Object::get`] finds the last member of a name,
//! which is the one a `serde_json::Map` keeps, and numbers are serde_json's own [`Number`]s,
//! made by the same visitor methods. [`Json::to_value`] gives the `serde_json::Value`
//! itself, and the tests check that it is the one serde_json parses from the same text. (One
//! difference is not carried over: serde_json reads an object whose first member is named
//! `$serde_json::private::RawValue` as the JSON text inside it, an artefact of its raw-value
//! support that a webhook body has no use for; here it is an object like any other.)

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A JSON value; strings borrow from the text where they can.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object's members in the order they came, a repeated name included.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

/// `null`, for a member that is not there.
pub(crate) const NULL: Json<'static> = Json::Null;

impl<'a> Object<'a> {
    /// The member `name`; its last value when the name is repeated.
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl<'a> Json<'a> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer that fits `i64`, as `serde_json::Value::as_i64` reads it.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&Vec<Json<'a>>> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    /// The `serde_json::Value` of the same text.
    pub(crate) fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            // Inserted in order: a repeated name keeps its last value, as serde_json's does.
            Json::Object(members) => Value::Object(
                members
                    .0
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(name)) = map.next_key()? {
            members.push((name, map.next_value()?));
        }
        Ok(Json::Object(Object(members)))
    }
}

/// An object member's name, borrowed where the text allows (serde's `Cow<str>` never borrows).
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both parses of `text`: this tree's, as a `serde_json::Value`, and serde_json's own.
    fn both(
        text: &str,
    ) -> (
        Result<serde_json::Value, String>,
        Result<serde_json::Value, String>,
    ) {
        let tree = serde_json::from_str::<Json<'_>>(text)
            .map(|t| t.to_value())
            .map_err(|e| e.to_string());
        let value = serde_json::from_str::<serde_json::Value>(text).map_err(|e| e.to_string());
        (tree, value)
    }

    #[test]
    fn reads_the_fixtures_as_serde_json_does() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dataverse");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("readable");
                let text = text.trim_start_matches('\u{feff}');
                let (tree, value) = both(text);
                assert!(value.is_ok(), "{path:?}");
                assert_eq!(tree, value, "{path:?}");
                read += 1;
            }
        }
        assert!(read >= 4, "found {read} fixtures");
    }

    #[test]
    fn strings_without_escapes_borrow_and_repeated_names_keep_the_last() {
        let text =
            r#"{"a": "plain", "b": "esc\"aped", "a": 2, "c": [1.5, -3, 18446744073709551615]}"#;
        let tree: Json<'_> = serde_json::from_str(text).unwrap();
        let obj = tree.as_object().unwrap();
        assert_eq!(obj.get("a").and_then(Json::as_i64), Some(2));
        assert!(matches!(obj.get("b"), Some(Json::String(Cow::Owned(s))) if s == "esc\"aped"));
        let first = &obj.0[0].1;
        assert!(matches!(first, Json::String(Cow::Borrowed("plain"))));
        assert_eq!(obj.get("missing"), None);
        assert_eq!(both(text).0, both(text).1);
    }

    #[test]
    fn errors_are_serde_jsons() {
        for text in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{} x",
            "1e999",
            "\"\\u12\"",
            "{\"a\" 1}",
            "nul",
        ] {
            let (tree, value) = both(text);
            assert!(value.is_err(), "{text}");
            assert_eq!(tree, value, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(both(&deep).0, both(&deep).1);
    }

    /// JSON text with repeated names, escapes, and every kind of number.
    fn json_text() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("a".to_owned()),
            Just("key".to_owned()),
            Just("__type".to_owned()),
            "[a-z\"\\\\/\u{e9}\u{1F600}]{0,6}",
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            Just("-0".to_owned()),
            Just("1.0e2".to_owned()),
            "[ -~\u{e9}\u{1F600}]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u00e9\ud83d\ude00\/\n""#.to_owned()),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((name.clone(), inner), 0..6).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{}: {v}", serde_json::to_string(&k).unwrap()))
                        .collect();
                    format!("{{ {} }}", members.join(", "))
                }),
            ]
        })
    }

    /// Every member [`Object::get`] finds under `tree` is the one `value` holds.
    fn gets_as_serde_json(tree: &Json<'_>, value: &serde_json::Value) {
        match (tree, value) {
            (Json::Object(members), serde_json::Value::Object(map)) => {
                assert_eq!(
                    map.len(),
                    members
                        .0
                        .iter()
                        .map(|(k, _)| k)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                );
                for (name, want) in map {
                    let got = members.get(name).expect("a member serde_json has");
                    assert_eq!(&got.to_value(), want);
                    gets_as_serde_json(got, want);
                }
            }
            (Json::Array(items), serde_json::Value::Array(values)) => {
                for (item, want) in items.iter().zip(values) {
                    gets_as_serde_json(item, want);
                }
            }
            _ => {}
        }
    }

    proptest! {
        #[test]
        fn reads_any_json_as_serde_json_does(text in json_text()) {
            let (tree, value) = both(&text);
            prop_assert!(value.is_ok());
            prop_assert_eq!(&tree, &value);
            let parsed: Json<'_> = serde_json::from_str(&text).unwrap();
            gets_as_serde_json(&parsed, &value.unwrap());
        }

        #[test]
        fn refuses_what_serde_json_refuses_with_its_message(text in json_text(), cut in any::<prop::sample::Index>()) {
            // Truncated text: mostly invalid, sometimes still valid.
            let end = cut.index(text.len() + 1);
            if let Some(prefix) = text.get(..end) {
                let (tree, value) = both(prefix);
                prop_assert_eq!(tree, value);
            }
        }
    }
}
