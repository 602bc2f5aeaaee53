//! Webhook bodies: the JSON form of `RemoteExecutionContext`, member for member in the shape of
//! Microsoft's two `msdyn_agentstatus` samples (fixtures/dataverse/ms-docs-agentstatus-*.json).
//!
//! An Update follows the "modify presence" sample: an asynchronous step (Mode 1, Stage 40), the
//! Stage 30 core operation as `ParentContext`, and the `AsynchronousStepPrimaryName` post image.
//! A Create follows the "new agent" sample: a synchronous step (Mode 0) in the transaction, with
//! `FormattedValues`, `OutputParameters` `id`, and every slash escaped as `\/`. The ids, times,
//! presence, row version and flags are the changed row's; everything else is the sample's.
//!
//! Beyond the samples, both carry `msdyn_presencemodifiedonwithmilliseconds` (the column exists,
//! dataverse.md §3.1) so receivers can order changes within a second, and
//! `msdyn_assignedconversationcount` (a newer column, §3.1) next to
//! `msdyn_availableunitscapacity`. The Update's post image stays as in the sample: the
//! `AsynchronousStepPrimaryName` image of an async step carries only the primary key.

use super::json::J;
use super::state::{new_guid, Message, RowChange};

const ENTITY: &str = "Entity:http://schemas.microsoft.com/xrm/2011/Contracts";
const ENTITY_REFERENCE: &str = "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts";
const OPTION_SET_VALUE: &str = "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts";
/// `InitiatingUserAgent` of the update sample: presence changes pass through the CCaaS
/// assignment engine (for API-driven changes this is an inference, dataverse.md §4.10).
const CCAAS_USER_AGENT: &str =
    "Microsoft.CCaaS.AssignmentEngineVNext.AssignmentEngineVNext (DataverseSvcClient:1.1.0.11)";
/// Members removed from a body over 256 KB (dataverse.md §4.7).
pub(crate) const STRIPPED_WHEN_TOO_LARGE: [&str; 4] = [
    "ParentContext",
    "InputParameters",
    "PreEntityImages",
    "PostEntityImages",
];

/// The org-level ids every body repeats, fixed for the life of a simulator.
#[derive(Debug, Clone)]
pub(crate) struct OrgIds {
    pub organization_id: String,
    pub organization_name: String,
    pub business_unit_id: String,
    /// The service identity that runs presence changes (`InitiatingUserId`, `UserId`).
    pub service_user_id: String,
    pub service_aad_object_id: String,
    /// The registered `sdkmessageprocessingstep`s.
    pub update_step_id: String,
    pub create_step_id: String,
    /// The platform's own core-operation step (the Create sample's "ObjectModel Implementation").
    pub core_step_id: String,
}

impl OrgIds {
    pub(crate) fn generate() -> OrgIds {
        let organization_id = new_guid();
        let organization_name = format!("unq{}", &organization_id.replace('-', "")[..29]);
        OrgIds {
            organization_id,
            organization_name,
            business_unit_id: new_guid(),
            service_user_id: new_guid(),
            service_aad_object_id: new_guid(),
            update_step_id: new_guid(),
            create_step_id: new_guid(),
            core_step_id: new_guid(),
        }
    }
}

/// One event as the webhook step sees it: the change and the ids of its pipeline execution.
#[derive(Debug, Clone)]
pub(crate) struct WebhookEvent {
    /// Order of emission, from 1.
    pub seq: u64,
    pub change: RowChange,
    pub correlation_id: String,
    pub operation_id: String,
    pub request_id: String,
    /// Already released from a reorder hold (never held twice).
    pub released: bool,
}

impl WebhookEvent {
    pub(crate) fn new(seq: u64, change: RowChange) -> WebhookEvent {
        let operation_id = new_guid();
        // The Create sample has RequestId == OperationId; the Update sample does not.
        let request_id = match change.message {
            Message::Create => operation_id.clone(),
            Message::Update => new_guid(),
        };
        WebhookEvent {
            seq,
            change,
            correlation_id: new_guid(),
            operation_id,
            request_id,
            released: false,
        }
    }

    /// The body text; `stripped` removes what Dataverse drops from bodies over 256 KB.
    pub(crate) fn render(&self, ids: &OrgIds, stripped: bool) -> String {
        let (body, escape_all) = match self.change.message {
            Message::Update => (update_body(ids, self), false),
            Message::Create => (super::webhook_create::create_body(ids, self), true),
        };
        let body = if stripped {
            body.without(&STRIPPED_WHEN_TOO_LARGE)
        } else {
            body
        };
        body.render(escape_all)
    }
}

pub(super) fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000
}

pub(super) fn reference(logical_name: &str, id: &str) -> J {
    J::Obj(vec![
        ("__type", J::s(ENTITY_REFERENCE)),
        ("Id", J::s(id)),
        ("KeyAttributes", J::empty()),
        ("LogicalName", J::s(logical_name)),
        ("Name", J::Null),
        ("RowVersion", J::Null),
    ])
}

pub(super) fn step(id: &str, name: Option<&str>) -> J {
    J::Obj(vec![
        ("Id", J::s(id)),
        ("KeyAttributes", J::empty()),
        ("LogicalName", J::s("sdkmessageprocessingstep")),
        ("Name", name.map_or(J::Null, J::s)),
        ("RowVersion", J::Null),
    ])
}

pub(super) fn option_set(value: i64) -> J {
    J::Obj(vec![
        ("__type", J::s(OPTION_SET_VALUE)),
        ("Value", J::Int(value)),
    ])
}

pub(super) fn entity(
    id: &str,
    attributes: Vec<J>,
    formatted: Vec<J>,
    row_version: Option<i64>,
    typed: bool,
) -> J {
    let mut members = Vec::with_capacity(9);
    if typed {
        members.push(("__type", J::s(ENTITY)));
    }
    members.extend([
        ("Attributes", J::Arr(attributes)),
        ("EntityState", J::Null),
        ("FormattedValues", J::Arr(formatted)),
        ("Id", J::s(id)),
        ("KeyAttributes", J::empty()),
        ("LogicalName", J::s("msdyn_agentstatus")),
        ("RelatedEntities", J::empty()),
        (
            "RowVersion",
            row_version.map_or(J::Null, |v| J::s(v.to_string())),
        ),
    ]);
    J::Obj(members)
}

/// Everything a context varies by.
pub(super) struct Ctx {
    pub(super) user_agent: &'static str,
    pub(super) target: J,
    pub(super) in_transaction: bool,
    pub(super) mode: i64,
    pub(super) operation_created_on: J,
    pub(super) output: Vec<J>,
    pub(super) owning_extension: J,
    pub(super) parent: J,
    pub(super) post_images: Vec<J>,
    pub(super) shared: Vec<J>,
    pub(super) stage: i64,
    pub(super) message: Message,
}

pub(super) fn context(ids: &OrgIds, ev: &WebhookEvent, c: Ctx) -> J {
    let id = &ev.change.row.status_id;
    J::Obj(vec![
        ("BusinessUnitId", J::s(&ids.business_unit_id)),
        ("CorrelationId", J::s(&ev.correlation_id)),
        ("Depth", J::Int(1)),
        ("InitiatingUserAgent", J::s(c.user_agent)),
        (
            "InitiatingUserAzureActiveDirectoryObjectId",
            J::s(&ids.service_aad_object_id),
        ),
        ("InitiatingUserId", J::s(&ids.service_user_id)),
        ("InputParameters", J::Arr(vec![J::kv("Target", c.target)])),
        ("IsExecutingOffline", J::Bool(false)),
        ("IsInTransaction", J::Bool(c.in_transaction)),
        ("IsOfflinePlayback", J::Bool(false)),
        ("IsolationMode", J::Int(1)),
        ("MessageName", J::s(c.message.name())),
        ("Mode", J::Int(c.mode)),
        ("OperationCreatedOn", c.operation_created_on),
        ("OperationId", J::s(&ev.operation_id)),
        ("OrganizationId", J::s(&ids.organization_id)),
        ("OrganizationName", J::s(&ids.organization_name)),
        ("OutputParameters", J::Arr(c.output)),
        ("OwningExtension", c.owning_extension),
        ("ParentContext", c.parent),
        ("PostEntityImages", J::Arr(c.post_images)),
        ("PreEntityImages", J::empty()),
        ("PrimaryEntityId", J::s(id)),
        ("PrimaryEntityName", J::s("msdyn_agentstatus")),
        ("RequestId", J::s(&ev.request_id)),
        ("SecondaryEntityName", J::s("none")),
        ("SharedVariables", J::Arr(c.shared)),
        ("Stage", J::Int(c.stage)),
        (
            "UserAzureActiveDirectoryObjectId",
            J::s(&ids.service_aad_object_id),
        ),
        ("UserId", J::s(&ids.service_user_id)),
    ])
}

pub(super) fn shared_variables(create: bool) -> Vec<J> {
    let mut v = vec![
        J::kv("IsAutoTransact", J::Bool(true)),
        J::kv("AcceptLang", J::s("")),
    ];
    if create {
        v.push(J::kv("DefaultsAddedFlag", J::Bool(true)));
    }
    v
}

/// The "modify presence" sample's shape.
fn update_body(ids: &OrgIds, ev: &WebhookEvent) -> J {
    let r = &ev.change.row;
    let at = secs(ev.change.at_ms);
    let target = entity(
        &r.status_id,
        vec![
            J::kv("modifiedby", reference("systemuser", &ids.service_user_id)),
            J::kv("msdyn_isagentloggedin", J::Bool(r.logged_in)),
            J::kv(
                "msdyn_currentpresenceid",
                reference("msdyn_presence", &r.presence_id),
            ),
            J::kv("modifiedon", J::date(at)),
            J::kv("modifiedonbehalfby", J::Null),
            J::kv("msdyn_availableunitscapacity", J::Int(r.capacity)),
            J::kv(
                "msdyn_assignedconversationcount",
                J::Int(r.assigned_conversations),
            ),
            J::kv("msdyn_agentstatusid", J::s(&r.status_id)),
            J::kv(
                "msdyn_capacitymodifiedon",
                J::date(secs(r.capacity_modified_on_ms)),
            ),
            J::kv("msdyn_presencemodifiedon", J::date(secs(r.modified_on_ms))),
            J::kv(
                "msdyn_presencemodifiedonwithmilliseconds",
                J::date(r.modified_on_ms),
            ),
            J::kv("msdyn_isblockedbysomeprofile", J::Bool(false)),
            J::kv("msdyn_presencemodifiedby", J::s(&r.modified_by)),
            J::kv("msdyn_agentid", reference("systemuser", &r.agent_id)),
            J::kv("timezoneruleversionnumber", J::Int(4)),
        ],
        Vec::new(),
        Some(r.row_version),
        true,
    );
    let core_target = entity(
        &r.status_id,
        vec![
            J::kv("msdyn_agentstatusid", J::s(&r.status_id)),
            J::kv("msdyn_availableunitscapacity", J::Int(r.capacity)),
            J::kv(
                "msdyn_assignedconversationcount",
                J::Int(r.assigned_conversations),
            ),
            J::kv(
                "msdyn_currentpresenceid",
                reference("msdyn_presence", &r.presence_id),
            ),
            J::kv(
                "msdyn_capacitymodifiedon",
                J::date(secs(r.capacity_modified_on_ms)),
            ),
            J::kv("msdyn_presencemodifiedby", J::s(&r.modified_by)),
            J::kv("msdyn_presencemodifiedon", J::date(secs(r.modified_on_ms))),
            J::kv(
                "msdyn_presencemodifiedonwithmilliseconds",
                J::date(r.modified_on_ms),
            ),
            J::kv("msdyn_isblockedbysomeprofile", J::Bool(false)),
            J::kv("msdyn_isagentloggedin", J::Bool(r.logged_in)),
            J::kv("msdyn_agentid", reference("systemuser", &r.agent_id)),
        ],
        Vec::new(),
        Some(r.row_version),
        true,
    );
    let created = J::Date {
        ms: at,
        offset: true,
    };
    let parent = context(
        ids,
        ev,
        Ctx {
            user_agent: CCAAS_USER_AGENT,
            target: core_target,
            in_transaction: false,
            mode: 1,
            operation_created_on: created.clone(),
            output: Vec::new(),
            owning_extension: step(&ids.update_step_id, None),
            parent: J::Null,
            post_images: Vec::new(),
            shared: shared_variables(false),
            stage: 30,
            message: Message::Update,
        },
    );
    let image = entity(
        &r.status_id,
        vec![J::kv("msdyn_agentstatusid", J::s(&r.status_id))],
        Vec::new(),
        None,
        false,
    );
    context(
        ids,
        ev,
        Ctx {
            user_agent: CCAAS_USER_AGENT,
            target,
            in_transaction: false,
            mode: 1,
            operation_created_on: created,
            output: Vec::new(),
            owning_extension: step(&ids.update_step_id, None),
            parent,
            post_images: vec![J::kv("AsynchronousStepPrimaryName", image)],
            shared: shared_variables(false),
            stage: 40,
            message: Message::Update,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::builtin;
    use crate::sim::state::State;
    use serde_json::Value;

    const UPDATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-update-modify-presence.json"
    ));
    const CREATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/dataverse/ms-docs-agentstatus-create-new-agent.json"
    ));

    /// Every JSON path with the type of its value, array indices folded.
    fn shape(v: &Value, path: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    shape(v, format!("{path}.{k}"), out);
                }
            }
            Value::Array(a) => {
                for v in a {
                    shape(v, format!("{path}[]"), out);
                }
            }
            other => {
                let t = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "bool",
                    Value::Number(_) => "number",
                    _ => "string",
                };
                out.insert(format!("{path}:{t}"));
            }
        }
    }

    fn paths(text: &str) -> std::collections::BTreeSet<String> {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut out = std::collections::BTreeSet::new();
        shape(&v, String::new(), &mut out);
        out
    }

    fn events() -> (WebhookEvent, WebhookEvent) {
        let mut s = State::new();
        let (_, created) = s
            .add_agent(
                "a7f9a9ed-b311-ef11-9f89-000d3a544b4c",
                "aad",
                "Ann",
                builtin::OFFLINE,
                false,
            )
            .unwrap();
        let updated = s
            .set_presence(
                "a7f9a9ed-b311-ef11-9f89-000d3a544b4c",
                builtin::BUSY,
                "AGENT",
                Some(true),
            )
            .unwrap();
        (
            WebhookEvent::new(1, created.unwrap()),
            WebhookEvent::new(2, updated),
        )
    }

    #[test]
    fn bodies_have_exactly_the_json_paths_of_the_samples() {
        let ids = OrgIds::generate();
        let (create, update) = events();
        for (ours, sample) in [
            (update.render(&ids, false), UPDATE),
            (create.render(&ids, false), CREATE),
        ] {
            let ours = paths(&ours);
            let sample = paths(sample);
            let extra: Vec<_> = ours.difference(&sample).collect();
            let missing: Vec<_> = sample.difference(&ours).collect();
            assert!(missing.is_empty(), "missing {missing:#?}");
            assert!(extra.is_empty(), "extra {extra:#?}");
        }
    }

    #[test]
    fn members_come_in_the_samples_order() {
        let ids = OrgIds::generate();
        let (create, update) = events();
        let keys = |t: &str| -> Vec<String> {
            // Top-level member names in text order.
            let v: Value = serde_json::from_str(t).unwrap();
            let mut names: Vec<(usize, String)> = v
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (t.find(&format!("\"{k}\":")).unwrap(), k.clone()))
                .collect();
            names.sort();
            names.into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!(keys(&update.render(&ids, false)), keys(UPDATE));
        let body = create.render(&ids, false);
        assert!(body.contains(r#"{"__type":"Entity:http:\/\/schemas.microsoft.com\/xrm\/2011\/Contracts","Attributes""#));
        let body = update.render(&ids, false);
        assert!(
            body.contains(r#""value":"\/Date("#),
            "dates are written with escaped slashes"
        );
    }

    /// What the simulator sends (and so the benchmarks) takes the direct parse, to the same
    /// context the tree gives.
    #[test]
    fn bodies_parse_directly_as_through_the_tree() {
        let ids = OrgIds::generate();
        let (create, update) = events();
        for body in [
            create.render(&ids, false),
            update.render(&ids, false),
            update.render(&ids, true),
        ] {
            let direct = crate::direct::parse(&body).expect("parsed directly");
            assert_eq!(Ok(direct), crate::context::parse_tree(&body));
        }
    }

    #[test]
    fn a_stripped_body_lacks_the_four_members() {
        let ids = OrgIds::generate();
        let (_, update) = events();
        let v: Value = serde_json::from_str(&update.render(&ids, true)).unwrap();
        for k in STRIPPED_WHEN_TOO_LARGE {
            assert!(v.get(k).is_none(), "{k}");
        }
        assert_eq!(v["PrimaryEntityId"], update.change.row.status_id.as_str());
    }
}
