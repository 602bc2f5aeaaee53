//! The Create webhook body, in the shape of Microsoft's "new agent" sample
//! (fixtures/dataverse/ms-docs-agentstatus-create-new-agent.json): a synchronous step (Mode 0)
//! inside the transaction, the full Target with `FormattedValues`, `OutputParameters` `id`, the
//! Stage 30 "ObjectModel Implementation" parent, and no post image.

use super::dates::iso_seconds;
use super::json::J;
use super::state::Message;
use super::webhook_body::{
    context, entity, option_set, reference, secs, shared_variables, step, Ctx, OrgIds, WebhookEvent,
};

/// `2024-07-24T10:28:25-00:00`, the FormattedValues form of a date.
fn formatted_date(ms: i64) -> J {
    J::s(iso_seconds(ms).replace('Z', "-00:00"))
}

fn yes_no(b: bool) -> J {
    J::s(if b { "Yes" } else { "No" })
}

/// The "new agent" sample's shape.
pub(crate) fn create_body(ids: &OrgIds, ev: &WebhookEvent) -> J {
    let r = &ev.change.row;
    let at = secs(ev.change.at_ms);
    let me = || reference("systemuser", &ids.service_user_id);
    let target = entity(
        &r.status_id,
        vec![
            J::kv(
                "msdyn_capacitymodifiedon",
                J::date(secs(r.capacity_modified_on_ms)),
            ),
            J::kv("msdyn_agentstatusid", J::s(&r.status_id)),
            J::kv(
                "owningbusinessunit",
                reference("businessunit", &ids.business_unit_id),
            ),
            J::kv("modifiedon", J::date(at)),
            J::kv("modifiedonbehalfby", J::Null),
            J::kv("msdyn_presencemodifiedby", J::s(&r.modified_by)),
            J::kv(
                "msdyn_currentpresenceid",
                reference("msdyn_presence", &r.presence_id),
            ),
            J::kv("msdyn_presencemodifiedon", J::date(secs(r.modified_on_ms))),
            J::kv(
                "msdyn_presencemodifiedonwithmilliseconds",
                J::date(r.modified_on_ms),
            ),
            J::kv("statecode", option_set(0)),
            J::kv("statuscode", option_set(1)),
            J::kv("msdyn_isagentloggedin", J::Bool(r.logged_in)),
            J::kv("createdby", me()),
            J::kv("timezoneruleversionnumber", J::Int(4)),
            J::kv("msdyn_agentid", reference("systemuser", &r.agent_id)),
            J::kv("ownerid", me()),
            J::kv("msdyn_availableunitscapacity", J::Int(r.capacity)),
            J::kv(
                "msdyn_assignedconversationcount",
                J::Int(r.assigned_conversations),
            ),
            J::kv("msdyn_isblockedbysomeprofile", J::Bool(false)),
            J::kv("owninguser", me()),
            J::kv("modifiedby", me()),
            J::kv("createdon", J::date(secs(r.created_on_ms))),
        ],
        vec![
            J::kv(
                "msdyn_capacitymodifiedon",
                formatted_date(r.capacity_modified_on_ms),
            ),
            J::kv("modifiedon", formatted_date(at)),
            J::kv("msdyn_presencemodifiedon", formatted_date(r.modified_on_ms)),
            J::kv("statecode", J::s("Active")),
            J::kv("statuscode", J::s("Active")),
            J::kv("msdyn_isagentloggedin", yes_no(r.logged_in)),
            J::kv("timezoneruleversionnumber", J::s("4")),
            J::kv("msdyn_availableunitscapacity", J::s(r.capacity.to_string())),
            J::kv(
                "msdyn_assignedconversationcount",
                J::s(r.assigned_conversations.to_string()),
            ),
            J::kv("msdyn_isblockedbysomeprofile", yes_no(false)),
            J::kv("createdon", formatted_date(r.created_on_ms)),
        ],
        None,
        true,
    );
    let core_target = entity(
        &r.status_id,
        vec![
            J::kv("msdyn_agentid", reference("systemuser", &r.agent_id)),
            J::kv(
                "msdyn_currentpresenceid",
                reference("msdyn_presence", &r.presence_id),
            ),
            J::kv("msdyn_availableunitscapacity", J::Int(r.capacity)),
            J::kv(
                "msdyn_assignedconversationcount",
                J::Int(r.assigned_conversations),
            ),
            J::kv(
                "msdyn_capacitymodifiedon",
                J::Date {
                    ms: r.capacity_modified_on_ms,
                    offset: true,
                },
            ),
            J::kv("msdyn_presencemodifiedby", J::s(&r.modified_by)),
            J::kv("msdyn_presencemodifiedon", J::date(r.modified_on_ms)),
            J::kv("msdyn_isblockedbysomeprofile", J::Bool(false)),
            J::kv("msdyn_isagentloggedin", J::Bool(r.logged_in)),
            J::kv("msdyn_agentstatusid", J::s(&r.status_id)),
        ],
        Vec::new(),
        None,
        true,
    );
    let parent = context(
        ids,
        ev,
        Ctx {
            user_agent: "",
            target: core_target,
            in_transaction: true,
            mode: 0,
            operation_created_on: J::date(ev.change.at_ms),
            output: Vec::new(),
            owning_extension: step(&ids.core_step_id, Some("ObjectModel Implementation")),
            parent: J::Null,
            post_images: Vec::new(),
            shared: shared_variables(true),
            stage: 30,
            message: Message::Create,
        },
    );
    context(
        ids,
        ev,
        Ctx {
            user_agent: "",
            target,
            in_transaction: true,
            mode: 0,
            operation_created_on: J::date(ev.change.at_ms),
            output: vec![J::kv("id", J::s(&r.status_id))],
            owning_extension: step(
                &ids.create_step_id,
                Some("presync-sim: Create of msdyn_agentstatus"),
            ),
            parent,
            post_images: Vec::new(),
            shared: shared_variables(true),
            stage: 40,
            message: Message::Create,
        },
    )
}
