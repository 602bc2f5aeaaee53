//! The Dataverse webhook body: a lenient parser for the JSON form of `RemoteExecutionContext`
//! (reference §4.4 to §4.7) and the presence change it carries (§3.1, §4.10).
//!
//! Start at [`parse`], which turns raw body bytes into an [`ExecutionContext`], then read
//! [`agent_status`], which decides whether the event is an `msdyn_agentstatus` change, a body
//! stripped by the 256 KB limit that must be read back, or something to acknowledge and ignore.
//! Every field is optional and unknown fields are tolerated; structure the format requires (the
//! key/value arrays, `__type` on attribute objects) is checked, and a [`ParseError`] names the
//! JSON path of the first problem.

use presync_engine::Millis;

use crate::jsontree::{Json, Object, NULL};

/// The logical name of the one table that carries presence.
pub const AGENT_STATUS_ENTITY: &str = "msdyn_agentstatus";

/// Why a webhook body could not be parsed. Every message is one line and says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not UTF-8 (it is always decoded as UTF-8, whatever the Content-Type says).
    #[error("body is not valid UTF-8: invalid byte at offset {offset}")]
    InvalidUtf8 { offset: usize },
    /// The body is not JSON; `reason` is serde_json's message without its position.
    #[error("body is not valid JSON: {reason} at line {line} column {column}")]
    Syntax {
        reason: String,
        line: usize,
        column: usize,
    },
    /// A value has the wrong JSON type or shape, or a required member is missing (`found` is
    /// `"nothing"`). `path` is like `InputParameters[0].value.Attributes[3].value`; empty for
    /// the whole body.
    #[error("{}: expected {expected}, found {found}", if path.is_empty() { "body" } else { path })]
    Structure {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
}

/// One webhook delivery: the JSON form of `Microsoft.Xrm.Sdk.RemoteExecutionContext`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionContext {
    pub message_name: Option<String>,
    pub primary_entity_name: Option<String>,
    pub primary_entity_id: Option<String>,
    pub operation_id: Option<String>,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    /// 0 synchronous, 1 asynchronous.
    pub mode: Option<i64>,
    /// 10, 20, 40; 30 in a `ParentContext`.
    pub stage: Option<i64>,
    pub depth: Option<i64>,
    pub operation_created_on: Option<Millis>,
    pub initiating_user_agent: Option<String>,
    pub initiating_user_id: Option<String>,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub organization_name: Option<String>,
    /// The `sdkmessageprocessingstep` that sent this delivery.
    pub owning_extension: Option<EntityReference>,
    pub input_parameters: Vec<(String, Value)>,
    pub output_parameters: Vec<(String, Value)>,
    pub shared_variables: Vec<(String, Value)>,
    pub pre_entity_images: Vec<(String, Entity)>,
    pub post_entity_images: Vec<(String, Entity)>,
    pub parent_context: Option<Box<ExecutionContext>>,
    /// `"none"` when there is no secondary entity.
    pub secondary_entity_name: Option<String>,
}

impl ExecutionContext {
    /// The input parameter `key` (first match, case-sensitive).
    pub fn input(&self, key: &str) -> Option<&Value> {
        lookup(&self.input_parameters, key)
    }

    /// The post-operation image registered as `key`.
    pub fn post_image(&self, key: &str) -> Option<&Entity> {
        lookup(&self.post_entity_images, key)
    }

    /// The `Target` input parameter, when it is an entity.
    pub fn target(&self) -> Option<&Entity> {
        self.input("Target").and_then(Value::as_entity)
    }
}

/// The value of the first pair whose key is `key`.
pub fn lookup<'a, T>(pairs: &'a [(String, T)], key: &str) -> Option<&'a T> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A row: a `Target`, an image, or an item of an `EntityCollection`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entity {
    pub logical_name: Option<String>,
    pub id: Option<String>,
    pub row_version: Option<String>,
    pub attributes: Vec<(String, Value)>,
    pub formatted_values: Vec<(String, String)>,
    pub key_attributes: Vec<(String, Value)>,
}

impl Entity {
    /// The attribute (column) `key`; `Some(&Value::Null)` when the column is present and null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        lookup(&self.attributes, key)
    }

    /// The display text of column `key` (`"Active"`, `"No"`, a lookup's name).
    pub fn formatted(&self, key: &str) -> Option<&str> {
        lookup(&self.formatted_values, key).map(String::as_str)
    }
}

/// A lookup: the table and id of another row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityReference {
    pub logical_name: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
}

/// A value inside `Attributes`, `InputParameters` and the other key/value arrays (§4.5).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// A string in `/Date(ms)/` form, or a wrapped `DateTime:#System`.
    Date(Millis),
    /// A wrapped `Guid:#System` (plain GUID strings stay [`Value::String`]).
    Guid(String),
    EntityReference(EntityReference),
    OptionSet(i64),
    /// A multi-select choice: a JSON array of OptionSetValue objects.
    OptionSetArray(Vec<i64>),
    Money(f64),
    Entity(Box<Entity>),
    /// An `EntityCollection` object, or a JSON array of entities (activity parties).
    EntityCollection(Vec<Entity>),
    Array(Vec<Value>),
    /// An object whose `__type` this parser does not model, kept as it came.
    Unknown(serde_json::Value),
}

macro_rules! accessors {
    ($($(#[$doc:meta])* $name:ident -> $t:ty { $($pat:pat => $out:expr),+ })*) => {
        impl Value {$(
            $(#[$doc])*
            pub fn $name(&self) -> Option<$t> {
                match self { $($pat => Some($out),)+ _ => None }
            }
        )*}
    };
}

accessors! {
    /// The text of a `String` or a `Guid`.
    as_str -> &str { Value::String(s) | Value::Guid(s) => s.as_str() }
    as_bool -> bool { Value::Bool(b) => *b }
    /// An `Int`, or the number of an `OptionSet`.
    as_i64 -> i64 { Value::Int(i) | Value::OptionSet(i) => *i }
    as_date -> Millis { Value::Date(ms) => *ms }
    as_entity -> &Entity { Value::Entity(e) => &**e }
    as_entity_reference -> &EntityReference { Value::EntityReference(r) => r }
    /// The id a lookup points at: an EntityReference's `Id`, or a GUID given as text.
    referenced_id -> &str {
        Value::EntityReference(EntityReference { id: Some(id), .. }) => id.as_str(),
        Value::String(s) | Value::Guid(s) => s.as_str()
    }
}

/// Parses a webhook body. The bytes are always UTF-8 (a leading BOM is skipped).
pub fn parse(body: &[u8]) -> Result<ExecutionContext, ParseError> {
    let unmarked = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let bom = body.len() - unmarked.len();
    let text = std::str::from_utf8(unmarked).map_err(|e| ParseError::InvalidUtf8 {
        offset: bom + e.valid_up_to(), // in the body as received, BOM included
    })?;
    // Straight into the context, the way every well-formed body Dataverse writes goes; where
    // that gives up, the tree below decides, and says what is wrong if anything is.
    if let Ok(ctx) = crate::direct::parse(text) {
        return Ok(ctx);
    }
    parse_tree(text)
}

/// [`parse`] through a JSON tree: slower, and the judge of every body the direct parse leaves
/// to it; its errors name the JSON path of the first problem.
pub(crate) fn parse_tree(text: &str) -> Result<ExecutionContext, ParseError> {
    let json: Json<'_> = serde_json::from_str(text).map_err(|e| {
        let (line, column, full) = (e.line(), e.column(), e.to_string());
        let position = format!(" at line {line} column {column}");
        let reason = full
            .strip_suffix(&position)
            .unwrap_or(&full)
            .replace(['\r', '\n'], " ");
        ParseError::Syntax {
            reason,
            line,
            column,
        }
    })?;
    let root = Path::Root;
    let obj = json.as_object();
    let obj = obj.ok_or_else(|| unexpected(&root, "a JSON object", &json))?;
    parse_context(obj, &root)
}

/// Where a value sits in the body, rendered only when there is an error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn field(&self, name: &'static str) -> Path<'_> {
        Path::Field(self, name)
    }

    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Field(Path::Root, name) => (*name).to_owned(),
            Path::Field(parent, name) => format!("{}.{name}", parent.render()),
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

type Res<T> = Result<T, ParseError>;

fn structure(path: &Path<'_>, expected: &'static str, found: &'static str) -> ParseError {
    let path = path.render();
    ParseError::Structure {
        path,
        expected,
        found,
    }
}

fn unexpected(path: &Path<'_>, expected: &'static str, found: &Json<'_>) -> ParseError {
    let found = match found {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    };
    structure(path, expected, found)
}

/// Member `name` converted by `conv`: `None` when absent or null, an error when `conv` fails.
fn member<'j, 'a, T>(
    obj: &'j Object<'a>,
    name: &'static str,
    path: &Path<'_>,
    expected: &'static str,
    conv: impl FnOnce(&'j Json<'a>) -> Option<T>,
) -> Res<Option<T>> {
    match obj.get(name).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => conv(v)
            .map(Some)
            .ok_or_else(|| unexpected(&path.field(name), expected, v)),
    }
}

fn string(obj: &Object<'_>, name: &'static str, path: &Path<'_>) -> Res<Option<String>> {
    member(obj, name, path, "a string", |v| {
        v.as_str().map(str::to_owned)
    })
}

fn parse_context(obj: &Object<'_>, path: &Path<'_>) -> Res<ExecutionContext> {
    let s = |name| string(obj, name, path);
    let int = |name| member(obj, name, path, "an integer", Json::as_i64);
    let (owning, parent) = (path.field("OwningExtension"), path.field("ParentContext"));
    let owning_extension = member(obj, "OwningExtension", path, "an object", Json::as_object)?;
    let parent_context = member(
        obj,
        "ParentContext",
        path,
        "an object or null",
        Json::as_object,
    )?;
    let date = |v: &Json<'_>| v.as_str().and_then(parse_date);
    Ok(ExecutionContext {
        message_name: s("MessageName")?,
        primary_entity_name: s("PrimaryEntityName")?,
        primary_entity_id: s("PrimaryEntityId")?,
        operation_id: s("OperationId")?,
        request_id: s("RequestId")?,
        correlation_id: s("CorrelationId")?,
        mode: int("Mode")?,
        stage: int("Stage")?,
        depth: int("Depth")?,
        operation_created_on: member(obj, "OperationCreatedOn", path, "a /Date(ms)/ string", date)?,
        initiating_user_agent: s("InitiatingUserAgent")?,
        initiating_user_id: s("InitiatingUserId")?,
        user_id: s("UserId")?,
        organization_id: s("OrganizationId")?,
        organization_name: s("OrganizationName")?,
        owning_extension: owning_extension
            .map(|o| parse_reference(o, &owning))
            .transpose()?,
        input_parameters: key_values(obj, "InputParameters", path, parse_value)?,
        output_parameters: key_values(obj, "OutputParameters", path, parse_value)?,
        shared_variables: key_values(obj, "SharedVariables", path, parse_value)?,
        pre_entity_images: key_values(obj, "PreEntityImages", path, parse_entity_value)?,
        post_entity_images: key_values(obj, "PostEntityImages", path, parse_entity_value)?,
        parent_context: match parent_context {
            Some(o) => Some(Box::new(parse_context(o, &parent)?)),
            None => None,
        },
        secondary_entity_name: s("SecondaryEntityName")?,
    })
}

/// A `[{"key": ..., "value": ...}]` array; absent or null is empty. A missing `value` is null.
fn key_values<T>(
    obj: &Object<'_>,
    name: &'static str,
    path: &Path<'_>,
    item: fn(&Json<'_>, &Path<'_>) -> Res<T>,
) -> Res<Vec<(String, T)>> {
    let here = path.field(name);
    let items = member(
        obj,
        name,
        path,
        "an array of {key, value} objects",
        Json::as_array,
    )?;
    let mut out = Vec::new();
    for (i, entry) in items.into_iter().flatten().enumerate() {
        let at = Path::Index(&here, i);
        let pair = entry
            .as_object()
            .ok_or_else(|| unexpected(&at, "a {key, value} object", entry))?;
        let Some(key) = member(pair, "key", &at, "a string", Json::as_str)? else {
            return Err(structure(&at.field("key"), "a string", "nothing"));
        };
        let value = item(pair.get("value").unwrap_or(&NULL), &at.field("value"))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn parse_entity_value(v: &Json<'_>, path: &Path<'_>) -> Res<Entity> {
    let obj = v
        .as_object()
        .ok_or_else(|| unexpected(path, "an Entity object", v))?;
    parse_entity(obj, path)
}

fn parse_formatted(v: &Json<'_>, path: &Path<'_>) -> Res<String> {
    match v {
        Json::String(s) => Ok(s.to_string()),
        Json::Null => Ok(String::new()),
        other => Err(unexpected(path, "a string", other)),
    }
}

/// An entity object; its `__type`, if any, is not checked (images often have none).
fn parse_entity(obj: &Object<'_>, path: &Path<'_>) -> Res<Entity> {
    let row_version = |v: &Json<'_>| match v {
        Json::String(s) => Some(s.to_string()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(Entity {
        logical_name: string(obj, "LogicalName", path)?,
        id: string(obj, "Id", path)?,
        row_version: member(obj, "RowVersion", path, "a string", row_version)?,
        attributes: key_values(obj, "Attributes", path, parse_value)?,
        formatted_values: key_values(obj, "FormattedValues", path, parse_formatted)?,
        key_attributes: key_values(obj, "KeyAttributes", path, parse_value)?,
    })
}

fn parse_reference(obj: &Object<'_>, path: &Path<'_>) -> Res<EntityReference> {
    Ok(EntityReference {
        logical_name: string(obj, "LogicalName", path)?,
        id: string(obj, "Id", path)?,
        name: string(obj, "Name", path)?,
    })
}

/// Any value of a key/value array.
fn parse_value(v: &Json<'_>, path: &Path<'_>) -> Res<Value> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => parse_date(s).map_or_else(|| Value::String(s.to_string()), Value::Date),
        Json::Array(items) => {
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                values.push(parse_value(item, &Path::Index(path, i))?);
            }
            classify_array(values)
        }
        Json::Object(obj) => parse_typed(obj, v, path)?,
    })
}

/// A non-empty array of option sets is a multi-select; one of entities, a collection.
pub(crate) fn classify_array(values: Vec<Value>) -> Value {
    let options: Option<Vec<i64>> = values
        .iter()
        .map(|v| {
            if let Value::OptionSet(o) = v {
                Some(*o)
            } else {
                None
            }
        })
        .collect();
    match options {
        Some(options) if !options.is_empty() => Value::OptionSetArray(options),
        _ if !values.is_empty() && values.iter().all(|v| matches!(v, Value::Entity(_))) => {
            let entities = values.into_iter().filter_map(|v| match v {
                Value::Entity(e) => Some(*e),
                _ => None,
            });
            Value::EntityCollection(entities.collect())
        }
        _ => Value::Array(values),
    }
}

/// An object: dispatched on the part of `__type` before the first `:`.
fn parse_typed(obj: &Object<'_>, whole: &Json<'_>, path: &Path<'_>) -> Res<Value> {
    let Some(full_type) = member(obj, "__type", path, "a string", Json::as_str)? else {
        let (expected, found) = ("an object with __type", "an object without __type");
        return Err(structure(path, expected, found));
    };
    let (name, namespace) = full_type.split_once(':').unwrap_or((full_type, ""));
    let value_path = path.field("Value");
    let number = || match obj.get("Value") {
        Some(Json::Number(n)) => Ok(n),
        Some(other) => Err(unexpected(&value_path, "a number", other)),
        None => Err(structure(&value_path, "a number", "nothing")),
    };
    let not_integer = || structure(&value_path, "an integer", "a fraction or a huge number");
    Ok(match name {
        "Entity" => Value::Entity(Box::new(parse_entity(obj, path)?)),
        "EntityReference" => Value::EntityReference(parse_reference(obj, path)?),
        "OptionSetValue" => Value::OptionSet(number()?.as_i64().ok_or_else(not_integer)?),
        "Money" => Value::Money(number()?.as_f64().unwrap_or(f64::NAN)),
        "EntityCollection" => {
            let here = path.field("Entities");
            let items = member(obj, "Entities", path, "an array", Json::as_array)?;
            let entities = items.into_iter().flatten().enumerate();
            let entities = entities.map(|(i, e)| parse_entity_value(e, &Path::Index(&here, i)));
            Value::EntityCollection(entities.collect::<Res<_>>()?)
        }
        _ if namespace == "#System" => parse_wrapped(name, obj, path)?,
        _ => Value::Unknown(whole.to_value()),
    })
}

/// A wrapped primitive such as `{"__type": "Guid:#System", "__value": "..."}`.
fn parse_wrapped(name: &str, obj: &Object<'_>, path: &Path<'_>) -> Res<Value> {
    let here = path.field("__value");
    let Some(inner) = obj.get("__value") else {
        return Err(structure(&here, "the wrapped value", "nothing"));
    };
    match (name, inner) {
        ("Guid", Json::String(s)) => Ok(Value::Guid(s.to_string())),
        ("Guid", other) => Err(unexpected(&here, "a GUID string", other)),
        ("DateTime", v) => {
            let date = v.as_str().and_then(parse_date);
            date.map(Value::Date)
                .ok_or_else(|| unexpected(&here, "a /Date(ms)/ string", v))
        }
        (_, v @ (Json::Object(_) | Json::Array(_))) => Err(unexpected(&here, "a primitive", v)),
        (_, other) => parse_value(other, &here),
    }
}

/// Parses a WCF date, `/Date(ms)/` or `/Date(ms±hhmm)/`, with plain or escaped (`\/`) slashes.
///
/// The number is always UTC milliseconds; an offset only marks the value as local time and is
/// ignored (§4.6).
pub fn parse_date(s: &str) -> Option<Millis> {
    let rest = s.strip_prefix("\\/").or_else(|| s.strip_prefix('/'))?;
    let rest = rest.strip_prefix("Date(")?;
    let inner = rest
        .strip_suffix(")\\/")
        .or_else(|| rest.strip_suffix(")/"))?;
    let digits_start = usize::from(inner.starts_with('-'));
    let digits_end = inner[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(inner.len(), |i| i + digits_start);
    let (number, offset) = inner.split_at(digits_end);
    if !offset.is_empty() {
        let hhmm = offset.strip_prefix(['+', '-'])?;
        if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    // An empty or sign-only number fails here, as does one that overflows i64.
    number.parse().ok()
}

pub use presync_engine::time::to_rfc3339_millis;

/// What a webhook delivery means for presence.
#[derive(Debug, Clone, PartialEq)]
pub enum Derived {
    /// An `msdyn_agentstatus` Create or Update with the columns presync needs.
    Change(AgentStatusChange),
    /// The body was stripped by the 256 KB limit (`x-ms-dynamics-msg-size-exceeded`): read the
    /// row `entity`/`id` back through the Web API.
    ReadBack {
        entity: String,
        id: String,
        event: String,
        delivery_key: String,
    },
    /// Nothing presync acts on; acknowledge it and say why.
    Ignored { reason: String, entity: String },
}

/// One agent's presence as an `msdyn_agentstatus` event states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatusChange {
    /// `"Create"` or `"Update"`.
    pub event: String,
    pub agent_status_id: String,
    /// The `systemuserid` of `msdyn_agentid`.
    pub agent_id: String,
    /// The `msdyn_presence` id of `msdyn_currentpresenceid`.
    pub presence_id: Option<String>,
    /// `msdyn_presencemodifiedonwithmilliseconds`, else `msdyn_presencemodifiedon`.
    pub source_modified_at: Option<Millis>,
    /// `msdyn_presencemodifiedby`: text such as `AGENT` or `SYSTEM`.
    pub modified_by: Option<String>,
    pub logged_in: Option<bool>,
    pub row_version: Option<String>,
    /// `msdyn_availableunitscapacity`: capacity units left.
    pub capacity: Option<i64>,
    /// `msdyn_assignedconversationcount` (a newer column): conversations assigned.
    pub conversations: Option<i64>,
    /// Equal for redeliveries of one event, different for different changes (§4.10).
    pub delivery_key: String,
}

/// Derives the presence change a parsed delivery carries.
///
/// Columns come from the `Target`, else from any post image that has them; pre images are never
/// used. `size_exceeded` is whether the `x-ms-dynamics-msg-size-exceeded` header was present.
pub fn agent_status(ctx: &ExecutionContext, size_exceeded: bool) -> Derived {
    let entity = ctx.primary_entity_name.clone().unwrap_or_default();
    let ignored = |reason: String| Derived::Ignored {
        reason,
        entity: entity.clone(),
    };
    if entity != AGENT_STATUS_ENTITY {
        return ignored(match ctx.primary_entity_name {
            None => "no PrimaryEntityName in the body".to_owned(),
            Some(_) => {
                format!("entity {entity} carries no presence (only {AGENT_STATUS_ENTITY} does)")
            }
        });
    }
    let event = match ctx.message_name.as_deref() {
        Some(m @ ("Create" | "Update")) => m.to_owned(),
        Some(other) => return ignored(format!("message {other} is not Create or Update")),
        None => return ignored("no MessageName in the body".to_owned()),
    };
    let target = ctx.target();
    let images = &ctx.post_entity_images;
    let column = |key: &str| {
        target
            .and_then(|t| t.get(key))
            .or_else(|| images.iter().find_map(|(_, image)| image.get(key)))
    };
    let agent_status_id = ctx
        .primary_entity_id
        .as_deref()
        .or_else(|| target.and_then(|t| t.id.as_deref()))
        .or_else(|| column("msdyn_agentstatusid").and_then(Value::as_str));
    let Some(agent_status_id) = agent_status_id.map(str::to_owned) else {
        return ignored("no PrimaryEntityId in the body".to_owned());
    };
    let row_version = target.and_then(|t| t.row_version.clone()).or_else(|| {
        images
            .iter()
            .find_map(|(_, image)| image.row_version.clone())
    });
    let delivery_key = delivery_key(ctx, &agent_status_id, row_version.as_deref());
    let read_back = || Derived::ReadBack {
        entity: entity.clone(),
        id: agent_status_id.clone(),
        event: event.clone(),
        delivery_key: delivery_key.clone(),
    };
    // A body stripped by the size limit is read back; one that merely lacks the data is not.
    let incomplete = |reason: &str| match size_exceeded {
        true => read_back(),
        false => ignored(reason.to_owned()),
    };
    if target.is_none() {
        return incomplete("no Target in the body");
    }
    let Some(agent_id) = column("msdyn_agentid").and_then(Value::referenced_id) else {
        return incomplete("no msdyn_agentid in the Target or the post images");
    };
    let source_modified_at = column("msdyn_presencemodifiedonwithmilliseconds")
        .and_then(Value::as_date)
        .or_else(|| column("msdyn_presencemodifiedon").and_then(Value::as_date));
    Derived::Change(AgentStatusChange {
        event,
        agent_status_id,
        agent_id: agent_id.to_owned(),
        presence_id: column("msdyn_currentpresenceid")
            .and_then(Value::referenced_id)
            .map(str::to_owned),
        source_modified_at,
        modified_by: column("msdyn_presencemodifiedby")
            .and_then(Value::as_str)
            .map(str::to_owned),
        logged_in: column("msdyn_isagentloggedin").and_then(Value::as_bool),
        row_version,
        capacity: column("msdyn_availableunitscapacity").and_then(Value::as_i64),
        conversations: column("msdyn_assignedconversationcount").and_then(Value::as_i64),
        delivery_key,
    })
}

/// `dataverse:{operation}:{primary entity id}:{row version}`, `-` for what is absent.
fn delivery_key(ctx: &ExecutionContext, id: &str, row_version: Option<&str>) -> String {
    let operation = [&ctx.operation_id, &ctx.request_id, &ctx.correlation_id]
        .into_iter()
        .find_map(|o| o.as_deref())
        .unwrap_or("-");
    format!("dataverse:{operation}:{id}:{}", row_version.unwrap_or("-"))
}
