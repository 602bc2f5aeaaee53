//! Malformed bodies give one-line errors that say what and where; nothing makes the parser panic.

#![allow(clippy::unwrap_used)]

use presync_dataverse::context::{agent_status, parse, ParseError, Value};
use presync_dataverse::inspect::inspect;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

const FIXTURES: [&[u8]; 4] = [
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-create-new-agent.json"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/albanian-xrm-DeserializationFromTextSamplesTests-0.json"
    )),
    include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/albanian-xrm-DeserializationFromAllFieldTypes-0.json"
    )),
];

fn error(body: &[u8]) -> String {
    let message = parse(body).unwrap_err().to_string();
    assert!(!message.contains('\n'), "{message}");
    message
}

#[test]
fn invalid_utf8_error_gives_the_byte_offset() {
    assert_eq!(
        parse(b"{\"MessageName\":\"Upd\xffate\"}").unwrap_err(),
        ParseError::InvalidUtf8 { offset: 19 }
    );
    assert_eq!(
        error(b"{\"MessageName\":\"Upd\xffate\"}"),
        "body is not valid UTF-8: invalid byte at offset 19"
    );
    // The offset counts the BOM, as the bytes were received.
    assert_eq!(
        parse(b"\xEF\xBB\xBF{\"a\":\"\xc3\"}").unwrap_err(),
        ParseError::InvalidUtf8 { offset: 9 }
    );
}

#[test]
fn body_is_utf8_with_or_without_a_bom() {
    let body = "{\"OrganizationName\":\"Zürich €\"}";
    assert_eq!(
        parse(body.as_bytes()).unwrap().organization_name.as_deref(),
        Some("Zürich €")
    );
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    assert_eq!(
        parse(&with_bom).unwrap().organization_name.as_deref(),
        Some("Zürich €")
    );
}

#[test]
fn body_that_is_not_an_object_is_rejected() {
    assert_eq!(error(b"[]"), "body: expected a JSON object, found an array");
    assert_eq!(
        error(b"[{\"MessageName\":\"Update\"}]"),
        "body: expected a JSON object, found an array"
    );
    assert_eq!(error(b"42"), "body: expected a JSON object, found a number");
    assert_eq!(
        error(b"\"text\""),
        "body: expected a JSON object, found a string"
    );
    assert_eq!(error(b"null"), "body: expected a JSON object, found null");
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    assert_eq!(
        error(b""),
        "body is not valid JSON: EOF while parsing a value at line 1 column 0"
    );
    let err = parse(b"{\n  \"MessageName\": \"Update\",\n  oops\n}").unwrap_err();
    assert!(
        matches!(
            err,
            ParseError::Syntax {
                line: 3,
                column: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "body is not valid JSON: key must be a string at line 3 column 3"
    );
    assert!(error(b"{\"a\":1}trailing").contains("line 1 column 8"));
}

#[test]
fn required_structure_errors_name_the_json_path() {
    assert_eq!(
        error(br#"{"InputParameters":{"Target":{}}}"#),
        "InputParameters: expected an array of {key, value} objects, found an object"
    );
    assert_eq!(
        error(br#"{"InputParameters":[{"value":1}]}"#),
        "InputParameters[0].key: expected a string, found nothing"
    );
    assert_eq!(
        error(br#"{"SharedVariables":[{"key":"a","value":1},7]}"#),
        "SharedVariables[1]: expected a {key, value} object, found a number"
    );
    assert_eq!(
        error(br#"{"Mode":"async"}"#),
        "Mode: expected an integer, found a string"
    );
    assert_eq!(
        error(br#"{"OperationCreatedOn":"yesterday"}"#),
        "OperationCreatedOn: expected a /Date(ms)/ string, found a string"
    );
    assert_eq!(
        error(br#"{"PostEntityImages":[{"key":"img","value":"x"}]}"#),
        "PostEntityImages[0].value: expected an Entity object, found a string"
    );
}

#[test]
fn attribute_object_without_type_is_an_error_at_its_path() {
    let mut body: Json = serde_json::from_slice(FIXTURES[0]).unwrap();
    body["InputParameters"][0]["value"]["Attributes"][3]["value"] = json!({"Id": "x"});
    assert_eq!(
        error(body.to_string().as_bytes()),
        "InputParameters[0].value.Attributes[3].value: expected an object with __type, \
         found an object without __type"
    );
    let mut body: Json = serde_json::from_slice(FIXTURES[0]).unwrap();
    body["ParentContext"]["InputParameters"][0]["value"]["Attributes"][2]["value"]["__type"] =
        json!(5);
    assert_eq!(
        error(body.to_string().as_bytes()),
        "ParentContext.InputParameters[0].value.Attributes[2].value.__type: expected a string, \
         found a number"
    );
}

#[test]
fn typed_values_missing_their_payload_are_errors() {
    let attr = |value: Json| json!({"InputParameters": [{"key": "k", "value": value}]}).to_string();
    let option =
        json!({"__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts"});
    assert_eq!(
        error(attr(option).as_bytes()),
        "InputParameters[0].value.Value: expected a number, found nothing"
    );
    let money = json!({"__type": "Money:x", "Value": "12"});
    assert_eq!(
        error(attr(money).as_bytes()),
        "InputParameters[0].value.Value: expected a number, found a string"
    );
    let guid = json!({"__type": "Guid:#System", "__value": 3});
    assert_eq!(
        error(attr(guid).as_bytes()),
        "InputParameters[0].value.__value: expected a GUID string, found a number"
    );
    let date = json!([{"__type": "DateTime:#System", "__value": "soon"}]);
    assert_eq!(
        error(attr(date).as_bytes()),
        "InputParameters[0].value[0].__value: expected a /Date(ms)/ string, found a string"
    );
}

#[test]
fn unknown_fields_and_types_are_tolerated() {
    let body = json!({
        "SomethingNew": {"deep": [1, 2]},
        "MessageName": "Update",
        "Mode": null,
        "InputParameters": [
            {"key": "Odd", "value": {"__type": "Frobnicator:http://example", "x": 1}},
            {"key": "Int", "value": {"__type": "int:#System", "__value": 5}},
            {"key": "Mixed", "value": [1, "two", null]},
            {"key": "Empty", "value": []},
            {"key": "NoValue"}
        ]
    });
    let ctx = parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(ctx.mode, None);
    assert!(matches!(ctx.input("Odd"), Some(Value::Unknown(v)) if v["x"] == 1));
    assert_eq!(ctx.input("Int"), Some(&Value::Int(5)));
    assert_eq!(
        ctx.input("Mixed"),
        Some(&Value::Array(vec![
            Value::Int(1),
            Value::String("two".into()),
            Value::Null
        ]))
    );
    assert_eq!(ctx.input("Empty"), Some(&Value::Array(vec![])));
    assert_eq!(ctx.input("NoValue"), Some(&Value::Null));
    assert_eq!(parse(b"{}").unwrap(), Default::default());
}

#[test]
fn nesting_deeper_than_json_allows_is_an_error_not_a_crash() {
    let deep = format!(
        "{{\"InputParameters\":[{{\"key\":\"k\",\"value\":{}{}}}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(error(deep.as_bytes()).contains("recursion limit exceeded"));
    let mut nested = json!({"MessageName": "Update"});
    for _ in 0..60 {
        nested = json!({"ParentContext": nested});
    }
    assert!(parse(nested.to_string().as_bytes()).is_ok());
}

/// Parses and, when that succeeds, derives and inspects too: none of it may panic, and an
/// error is one line.
fn check(body: &[u8]) -> Result<(), TestCaseError> {
    match parse(body) {
        Ok(ctx) => {
            let _ = agent_status(&ctx, false);
            let _ = agent_status(&ctx, true);
            prop_assert!(inspect(body, false, &|_| None).is_ok());
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(
                !message.is_empty() && !message.contains(['\n', '\r']),
                "{message:?}"
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes biased towards JSON structure so the mutants get past the tokenizer.
    let byte = prop_oneof![
        3 => prop::sample::select(b"{}[]:,\"\\0123456789-+/ntfeE.".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        "\\PC{0,12}".prop_map(Json::from),
        prop::sample::select(vec![
            "/Date(1722582038000)/",
            "/Date(-1+0100)/",
            "Target",
            "key",
            "value",
            "__type",
            "Entity:x",
            "EntityReference:x",
            "OptionSetValue:x",
            "Money:x",
            "EntityCollection:x",
            "Guid:#System",
            "DateTime:#System",
            "int:#System",
        ])
        .prop_map(Json::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        let keys = prop::sample::select(vec![
            "key",
            "value",
            "__type",
            "__value",
            "Value",
            "Id",
            "LogicalName",
            "RowVersion",
            "Attributes",
            "FormattedValues",
            "KeyAttributes",
            "Entities",
            "Name",
            "other",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((keys, inner), 0..5).prop_map(|kv| Json::Object(
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

const CONTEXT_FIELDS: [&str; 12] = [
    "MessageName",
    "PrimaryEntityId",
    "Mode",
    "OperationCreatedOn",
    "OwningExtension",
    "InputParameters",
    "OutputParameters",
    "SharedVariables",
    "PreEntityImages",
    "PostEntityImages",
    "ParentContext",
    "PrimaryEntityName",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut body = FIXTURES[which].to_vec();
        for m in mutations {
            let len = body.len().max(1);
            match m {
                Mutation::Flip(at, b) if !body.is_empty() => body[at % len] = b,
                Mutation::Insert(at, b) => body.insert(at % (body.len() + 1), b),
                Mutation::Delete(at) if !body.is_empty() => { body.remove(at % len); }
                _ => {}
            }
        }
        check(&body)?;
    }

    #[test]
    fn truncated_fixtures_never_panic(which in 0..FIXTURES.len(), cut in any::<prop::sample::Index>()) {
        let body = FIXTURES[which];
        let body = &body[..cut.index(body.len() + 1)];
        check(body)?;
        // Only the closing brace ends the object: every shorter prefix is incomplete JSON.
        let complete = FIXTURES[which].trim_ascii_end().len();
        prop_assert!(body.len() >= complete || parse(body).is_err());
    }

    #[test]
    fn arbitrary_json_bodies_never_panic(value in json_value()) {
        check(value.to_string().as_bytes())?;
    }

    #[test]
    fn arbitrary_json_in_a_fixture_field_never_panics(
        which in 0..2usize,
        field in prop::sample::select(CONTEXT_FIELDS.to_vec()),
        attribute in any::<prop::sample::Index>(),
        value in json_value(),
    ) {
        let mut body: Json = serde_json::from_slice(FIXTURES[which]).unwrap();
        body[field] = value.clone();
        check(body.to_string().as_bytes())?;

        let mut body: Json = serde_json::from_slice(FIXTURES[which]).unwrap();
        let attributes = body["InputParameters"][0]["value"]["Attributes"].as_array_mut().unwrap();
        let at = attribute.index(attributes.len());
        attributes[at]["value"] = value;
        check(body.to_string().as_bytes())?;
    }
}
