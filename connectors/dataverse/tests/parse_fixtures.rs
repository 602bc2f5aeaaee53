//! The recorded payloads in fixtures/dataverse/ parse, field by field.

#![allow(clippy::unwrap_used)]

use presync_dataverse::context::{
    agent_status, lookup, parse, AgentStatusChange, Derived, Entity, EntityReference,
    ExecutionContext, Value,
};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/dataverse/",
            $name
        ))
    };
}

const UPDATE: &[u8] = fixture!("ms-docs-agentstatus-update-modify-presence.json");
const CREATE: &[u8] = fixture!("ms-docs-agentstatus-create-new-agent.json");
const TEXT_SAMPLES: &[u8] = fixture!("albanian-xrm-DeserializationFromTextSamplesTests-0.json");
const ALL_FIELDS: &[u8] = fixture!("albanian-xrm-DeserializationFromAllFieldTypes-0.json");

fn target(ctx: &ExecutionContext) -> &Entity {
    ctx.target().expect("the fixture has an entity Target")
}

fn reference(logical_name: &str, id: &str) -> Value {
    Value::EntityReference(EntityReference {
        logical_name: Some(logical_name.to_owned()),
        id: Some(id.to_owned()),
        name: None,
    })
}

#[test]
fn every_fixture_in_the_directory_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dataverse");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let body = std::fs::read(&path).unwrap();
            let ctx = parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(ctx.message_name.is_some(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} fixtures found");
}

#[test]
fn update_sample_context_fields_are_read_exactly() {
    let ctx = parse(UPDATE).unwrap();
    assert_eq!(ctx.message_name.as_deref(), Some("Update"));
    assert_eq!(
        ctx.primary_entity_name.as_deref(),
        Some("msdyn_agentstatus")
    );
    assert_eq!(
        ctx.primary_entity_id.as_deref(),
        Some("00aa00aa-bb11-cc22-dd33-44ee44ee44ee")
    );
    assert_eq!(
        ctx.operation_id.as_deref(),
        Some("1a14c3ec-9c50-ef11-bfe3-00224802dbb1")
    );
    assert_eq!(
        ctx.request_id.as_deref(),
        Some("84d03007-6a8f-41da-aeae-7b6460bb7a04")
    );
    assert_eq!(
        ctx.correlation_id.as_deref(),
        Some("dddd3333-ee44-5555-66ff-777777aaaaaa")
    );
    assert_eq!(
        (ctx.mode, ctx.stage, ctx.depth),
        (Some(1), Some(40), Some(1))
    );
    assert_eq!(ctx.operation_created_on, Some(1_722_582_039_000));
    assert_eq!(
        ctx.initiating_user_agent.as_deref(),
        Some("Microsoft.CCaaS.AssignmentEngineVNext.AssignmentEngineVNext (DataverseSvcClient:1.1.0.11)")
    );
    assert_eq!(
        ctx.initiating_user_id.as_deref(),
        Some("d89254ff-9438-ef11-a315-000d3a5a54dc")
    );
    assert_eq!(
        ctx.user_id.as_deref(),
        Some("d89254ff-9438-ef11-a315-000d3a5a54dc")
    );
    assert_eq!(
        ctx.organization_id.as_deref(),
        Some("66aa66aa-bb77-cc88-dd99-00ee00ee00ee")
    );
    assert_eq!(
        ctx.organization_name.as_deref(),
        Some("unq6042beb1a93aef118e4b00224802c")
    );
    assert_eq!(ctx.secondary_entity_name.as_deref(), Some("none"));
    let step = ctx.owning_extension.as_ref().unwrap();
    assert_eq!(
        step.logical_name.as_deref(),
        Some("sdkmessageprocessingstep")
    );
    assert_eq!(
        step.id.as_deref(),
        Some("8ff4bda5-9d4e-ef11-bfe3-00224802dbb1")
    );
    assert_eq!(step.name, None);
    assert!(ctx.output_parameters.is_empty());
    assert_eq!(ctx.shared_variables.len(), 2);
    assert_eq!(
        ctx.shared_variables[0],
        ("IsAutoTransact".to_owned(), Value::Bool(true))
    );
    assert_eq!(
        ctx.shared_variables[1],
        ("AcceptLang".to_owned(), Value::String(String::new()))
    );
    assert!(ctx.pre_entity_images.is_empty());
    let image = ctx.post_image("AsynchronousStepPrimaryName").unwrap();
    assert_eq!(image.row_version, None);
    assert_eq!(image.attributes.len(), 1);

    let parent = ctx.parent_context.as_deref().unwrap();
    assert_eq!(parent.stage, Some(30));
    assert_eq!(parent.correlation_id, ctx.correlation_id);
    assert!(parent.parent_context.is_none());
    assert_eq!(target(parent).attributes.len(), 9);
}

#[test]
fn update_sample_target_columns_have_their_value_types() {
    let ctx = parse(UPDATE).unwrap();
    let t = target(&ctx);
    assert_eq!(t.logical_name.as_deref(), Some("msdyn_agentstatus"));
    assert_eq!(
        t.id.as_deref(),
        Some("00aa00aa-bb11-cc22-dd33-44ee44ee44ee")
    );
    assert_eq!(t.row_version.as_deref(), Some("5948260"));
    assert_eq!(t.attributes.len(), 13);
    assert_eq!(
        t.attributes[0].0, "modifiedby",
        "attributes keep their order"
    );
    assert_eq!(t.get("msdyn_isagentloggedin"), Some(&Value::Bool(true)));
    assert_eq!(t.get("modifiedon"), Some(&Value::Date(1_722_582_039_000)));
    assert_eq!(t.get("modifiedonbehalfby"), Some(&Value::Null));
    assert_eq!(
        t.get("msdyn_availableunitscapacity"),
        Some(&Value::Int(100))
    );
    assert_eq!(
        t.get("msdyn_presencemodifiedby"),
        Some(&Value::String("AGENT".into()))
    );
    assert_eq!(
        t.get("msdyn_currentpresenceid"),
        Some(&reference(
            "msdyn_presence",
            "efdeb843-c07a-e811-8162-000d3aa11f50"
        ))
    );
    assert_eq!(
        t.get("msdyn_agentid"),
        Some(&reference(
            "systemuser",
            "97c90b02-4e38-ef11-a315-000d3a5a54dc"
        ))
    );
    assert_eq!(t.get("no_such_column"), None);
    assert!(t.formatted_values.is_empty() && t.key_attributes.is_empty());
}

#[test]
fn update_sample_is_a_busy_change_by_the_agent() {
    let ctx = parse(UPDATE).unwrap();
    let expected = AgentStatusChange {
        event: "Update".into(),
        agent_status_id: "00aa00aa-bb11-cc22-dd33-44ee44ee44ee".into(),
        agent_id: "97c90b02-4e38-ef11-a315-000d3a5a54dc".into(),
        presence_id: Some("efdeb843-c07a-e811-8162-000d3aa11f50".into()),
        source_modified_at: Some(1_722_582_038_000),
        modified_by: Some("AGENT".into()),
        logged_in: Some(true),
        row_version: Some("5948260".into()),
        capacity: Some(100),
        conversations: None,
        delivery_key: "dataverse:1a14c3ec-9c50-ef11-bfe3-00224802dbb1:\
                       00aa00aa-bb11-cc22-dd33-44ee44ee44ee:5948260"
            .into(),
    };
    assert_eq!(agent_status(&ctx, false), Derived::Change(expected.clone()));
    // The header alone does not force a read-back when the body is complete.
    assert_eq!(agent_status(&ctx, true), Derived::Change(expected));
}

#[test]
fn create_sample_is_a_new_agent_starting_offline() {
    let ctx = parse(CREATE).unwrap();
    assert_eq!((ctx.mode, ctx.stage), (Some(0), Some(40)));
    assert_eq!(ctx.operation_created_on, Some(1_721_816_905_786));
    assert_eq!(
        ctx.output_parameters,
        [(
            "id".to_owned(),
            Value::String("44ee44ee-ff55-aa66-bb77-88cc88cc88cc".into())
        )]
    );
    assert_eq!(
        ctx.owning_extension
            .as_ref()
            .and_then(|s| s.name.as_deref()),
        Some("Bhanu_Update: Create of msdyn_agentstatus")
    );
    let t = target(&ctx);
    assert_eq!(t.get("statecode"), Some(&Value::OptionSet(0)));
    assert_eq!(t.get("statuscode"), Some(&Value::OptionSet(1)));
    assert_eq!(t.formatted("statecode"), Some("Active"));
    assert_eq!(
        t.formatted("msdyn_presencemodifiedon"),
        Some("2024-07-24T10:28:24-00:00")
    );
    assert_eq!(t.formatted_values.len(), 10);
    // The parent context's dates carry an offset and milliseconds.
    let parent = target(ctx.parent_context.as_deref().unwrap());
    assert_eq!(
        parent.get("msdyn_capacitymodifiedon"),
        Some(&Value::Date(1_721_809_601_096))
    );
    assert_eq!(
        parent.get("msdyn_presencemodifiedon"),
        Some(&Value::Date(1_721_816_904_678))
    );

    let expected = AgentStatusChange {
        event: "Create".into(),
        agent_status_id: "44ee44ee-ff55-aa66-bb77-88cc88cc88cc".into(),
        agent_id: "a7f9a9ed-b311-ef11-9f89-000d3a544b4c".into(),
        presence_id: Some("70139190-c07a-e811-8162-000d3aa11f50".into()),
        source_modified_at: Some(1_721_816_904_000),
        modified_by: Some("SYSTEM".into()),
        logged_in: Some(false),
        row_version: None,
        capacity: Some(100),
        conversations: None,
        delivery_key: "dataverse:09097f27-6123-4c61-b463-af00adb2e082:\
                       44ee44ee-ff55-aa66-bb77-88cc88cc88cc:-"
            .into(),
    };
    assert_eq!(agent_status(&ctx, false), Derived::Change(expected));
}

#[test]
fn text_samples_wrapped_guid_and_datetime_become_guid_and_date() {
    let ctx = parse(TEXT_SAMPLES).unwrap();
    let t = target(&ctx);
    assert_eq!(t.get("telephone1"), Some(&Value::String("1111".into())));
    assert_eq!(
        t.get("accountid"),
        Some(&Value::Guid("ec4e2f7d-9d60-e811-a95a-000d3af24950".into()))
    );
    assert_eq!(t.get("modifiedon"), Some(&Value::Date(1_527_757_524_000)));
    assert_eq!(
        t.get("modifiedby"),
        Some(&reference(
            "systemuser",
            "df010dad-f103-4589-ba66-76a5a04c2a11"
        ))
    );
    assert_eq!(
        ctx.owning_extension
            .as_ref()
            .and_then(|s| s.name.as_deref()),
        Some("D365WebHookHttpTrigger: Update of account")
    );
    let parent = ctx.parent_context.as_deref().unwrap();
    assert_eq!(
        parent.input("SuppressDuplicateDetection"),
        Some(&Value::Bool(false))
    );
    let Some(Value::Array(changed)) = lookup(&parent.shared_variables, "ChangedEntityTypes") else {
        panic!("ChangedEntityTypes is an array");
    };
    assert!(
        matches!(&changed[..], [Value::Unknown(v)] if v["key"] == "account" && v["value"] == "Update")
    );
}

#[test]
fn text_samples_account_update_is_ignored_with_the_entity_name() {
    let ctx = parse(TEXT_SAMPLES).unwrap();
    let Derived::Ignored { reason, entity } = agent_status(&ctx, false) else {
        panic!("an account event carries no presence");
    };
    assert_eq!(entity, "account");
    assert!(reason.contains("account"), "{reason}");
    // Even with the size header: only msdyn_agentstatus is ever read back.
    assert!(matches!(agent_status(&ctx, true), Derived::Ignored { .. }));
}

#[test]
fn all_field_types_parse_to_their_value_variants() {
    let ctx = parse(ALL_FIELDS).unwrap();
    let t = target(&ctx);
    assert_eq!(t.get("shko_integer"), Some(&Value::Int(321)));
    assert_eq!(t.get("shko_decimal"), Some(&Value::Float(10.12)));
    assert_eq!(t.get("shko_boolean"), Some(&Value::Bool(false)));
    assert_eq!(
        t.get("shko_string"),
        Some(&Value::String("This is a String".into()))
    );
    assert_eq!(t.get("shko_currency"), Some(&Value::Money(100.0)));
    assert_eq!(t.get("shko_currency_base"), Some(&Value::Money(100.0)));
    assert_eq!(t.get("shko_choice"), Some(&Value::OptionSet(342_490_000)));
    assert_eq!(
        t.get("shko_choices"),
        Some(&Value::OptionSetArray(vec![342_490_001, 342_490_002]))
    );
    // The albanian-xrm test: /Date(1697526000000)/ is 2023-10-17T07:00Z.
    assert_eq!(
        t.get("shko_datetime"),
        Some(&Value::Date(1_697_526_000_000))
    );
    assert_eq!(
        t.get("shko_lookup"),
        Some(&reference(
            "systemuser",
            "c7877889-0f5f-ee11-8def-000d3adbef1f"
        ))
    );
    assert_eq!(t.get("exchangerate"), Some(&Value::Int(1)));
    assert_eq!(t.formatted("shko_choices"), Some("One; Two"));
    assert_eq!(
        lookup(&ctx.output_parameters, "id").and_then(Value::as_str),
        Some("6420f0cc-916b-ee11-9ae6-000d3a688809")
    );
}

#[test]
fn activity_parties_array_parses_as_an_entity_collection() {
    let ctx = parse(ALL_FIELDS).unwrap();
    let parent = ctx.parent_context.as_deref().unwrap();
    let Some(Value::EntityCollection(parties)) = target(parent).get("requiredattendees") else {
        panic!("requiredattendees is an EntityCollection");
    };
    assert_eq!(parties.len(), 1);
    assert_eq!(parties[0].logical_name.as_deref(), Some("activityparty"));
    assert_eq!(
        parties[0].get("partyid"),
        Some(&reference(
            "contact",
            "f0459662-7d02-f111-8407-7ced8d48fc4e"
        ))
    );
    assert_eq!(
        parent.input("x-ms-app-name"),
        Some(&Value::String("shko_Quick".into()))
    );
}

#[test]
fn entity_collection_object_form_parses_its_entities() {
    let body = br#"{"InputParameters":[{"key":"Parties","value":{
        "__type":"EntityCollection:http://schemas.microsoft.com/xrm/2011/Contracts",
        "EntityName":"activityparty","MoreRecords":false,
        "Entities":[{"LogicalName":"activityparty","Attributes":[]},{"LogicalName":"activityparty"}]}}]}"#;
    let ctx = parse(body).unwrap();
    let Some(Value::EntityCollection(parties)) = ctx.input("Parties") else {
        panic!("an EntityCollection");
    };
    assert_eq!(parties.len(), 2);
}

#[test]
fn all_field_types_create_is_ignored_with_the_entity_name() {
    let ctx = parse(ALL_FIELDS).unwrap();
    let Derived::Ignored { entity, .. } = agent_status(&ctx, false) else {
        panic!("shko_allfields carries no presence");
    };
    assert_eq!(entity, "shko_allfields");
}
