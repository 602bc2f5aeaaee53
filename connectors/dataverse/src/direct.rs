//! The webhook body parsed straight into an [`ExecutionContext`], with no JSON tree in between:
//! the path every well-formed body takes.
//!
//! It reads the body the way [`crate::context`]'s tree conversion reads the tree, member for
//! member, and gives up (`Err`, with no message worth showing) wherever the two could differ:
//! a wrong type anywhere, an object whose `__type` is not its first member or that repeats
//! it, a fractional `RowVersion`, a date where a `Guid` should be. [`crate::context::parse`] then parses the body again
//! through the tree, which either succeeds with the same result or says precisely what is
//! wrong. So this module only has to be right where it succeeds; the tests check that against
//! the tree conversion on the fixtures and on generated bodies.
//!
//! Where a member is repeated, the last one counts, as in the tree (and in serde_json's maps);
//! each occurrence is still checked, and a wrong one anywhere sends the body to the tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::context::{
    classify_array, parse_date, Entity, EntityReference, ExecutionContext, Value,
};
use crate::jsontree::{Json, Key};

/// Why the direct parse gave up; never shown (the tree parse says what is wrong).
#[derive(Debug)]
pub(crate) struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not parsed directly")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

/// The context of `text`, or `Err` when the tree must decide.
pub(crate) fn parse(text: &str) -> Result<ExecutionContext, GiveUp> {
    let mut de = serde_json::Deserializer::from_str(text);
    let ctx = ContextSeed.deserialize(&mut de).map_err(|_| GiveUp)?;
    de.end().map_err(|_| GiveUp)?;
    Ok(ctx)
}

/// A visitor that accepts nothing: each method not overridden is a type the tree refuses.
macro_rules! expecting {
    ($what:literal) => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str($what)
        }
    };
}

/// A member that is a string, or null (absent).
struct OptString;

impl<'de> DeserializeSeed<'de> for OptString {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptString {
    type Value = Option<String>;
    expecting!("a string or null");
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Some(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A member that is an integer that fits `i64`, or null.
struct OptInt;

impl<'de> DeserializeSeed<'de> for OptInt {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptInt {
    type Value = Option<i64>;
    expecting!("an integer or null");
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        i64::try_from(n).map(Some).map_err(|_| E::custom(GiveUp))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A member that is a `/Date(ms)/` string, or null.
struct OptDate;

impl<'de> DeserializeSeed<'de> for OptDate {
    type Value = Option<i64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptDate {
    type Value = Option<i64>;
    expecting!("a date or null");
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        parse_date(s).map(Some).ok_or_else(|| E::custom(GiveUp))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The members of a context, an entity or a reference, by name.
fn field(name: &str) -> Field {
    match name {
        "MessageName" => Field::MessageName,
        "PrimaryEntityName" => Field::PrimaryEntityName,
        "PrimaryEntityId" => Field::PrimaryEntityId,
        "OperationId" => Field::OperationId,
        "RequestId" => Field::RequestId,
        "CorrelationId" => Field::CorrelationId,
        "Mode" => Field::Mode,
        "Stage" => Field::Stage,
        "Depth" => Field::Depth,
        "OperationCreatedOn" => Field::OperationCreatedOn,
        "InitiatingUserAgent" => Field::InitiatingUserAgent,
        "InitiatingUserId" => Field::InitiatingUserId,
        "UserId" => Field::UserId,
        "OrganizationId" => Field::OrganizationId,
        "OrganizationName" => Field::OrganizationName,
        "OwningExtension" => Field::OwningExtension,
        "InputParameters" => Field::InputParameters,
        "OutputParameters" => Field::OutputParameters,
        "SharedVariables" => Field::SharedVariables,
        "PreEntityImages" => Field::PreEntityImages,
        "PostEntityImages" => Field::PostEntityImages,
        "ParentContext" => Field::ParentContext,
        "SecondaryEntityName" => Field::SecondaryEntityName,
        "LogicalName" => Field::LogicalName,
        "Id" => Field::Id,
        "Name" => Field::Name,
        "RowVersion" => Field::RowVersion,
        "Attributes" => Field::Attributes,
        "FormattedValues" => Field::FormattedValues,
        "KeyAttributes" => Field::KeyAttributes,
        "Entities" => Field::Entities,
        "Value" => Field::Value,
        "__type" => Field::Type,
        "__value" => Field::WrappedValue,
        "key" => Field::Key,
        "value" => Field::PairValue,
        _ => Field::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MessageName,
    PrimaryEntityName,
    PrimaryEntityId,
    OperationId,
    RequestId,
    CorrelationId,
    Mode,
    Stage,
    Depth,
    OperationCreatedOn,
    InitiatingUserAgent,
    InitiatingUserId,
    UserId,
    OrganizationId,
    OrganizationName,
    OwningExtension,
    InputParameters,
    OutputParameters,
    SharedVariables,
    PreEntityImages,
    PostEntityImages,
    ParentContext,
    SecondaryEntityName,
    LogicalName,
    Id,
    Name,
    RowVersion,
    Attributes,
    FormattedValues,
    KeyAttributes,
    Entities,
    Value,
    Type,
    WrappedValue,
    Key,
    PairValue,
    Other,
}

/// A member name, read without copying it where it has no escapes.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field;
    expecting!("a member name");
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
        Ok(field(s))
    }
}

/// The whole context, or a `ParentContext` (an object, or null for none).
struct ContextSeed;

impl<'de> DeserializeSeed<'de> for ContextSeed {
    type Value = ExecutionContext;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContextSeed {
    type Value = ExecutionContext;
    expecting!("a context object");
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut c = ExecutionContext::default();
        while let Some(f) = map.next_key_seed(FieldSeed)? {
            match f {
                Field::MessageName => c.message_name = map.next_value_seed(OptString)?,
                Field::PrimaryEntityName => {
                    c.primary_entity_name = map.next_value_seed(OptString)?
                }
                Field::PrimaryEntityId => c.primary_entity_id = map.next_value_seed(OptString)?,
                Field::OperationId => c.operation_id = map.next_value_seed(OptString)?,
                Field::RequestId => c.request_id = map.next_value_seed(OptString)?,
                Field::CorrelationId => c.correlation_id = map.next_value_seed(OptString)?,
                Field::Mode => c.mode = map.next_value_seed(OptInt)?,
                Field::Stage => c.stage = map.next_value_seed(OptInt)?,
                Field::Depth => c.depth = map.next_value_seed(OptInt)?,
                Field::OperationCreatedOn => {
                    c.operation_created_on = map.next_value_seed(OptDate)?
                }
                Field::InitiatingUserAgent => {
                    c.initiating_user_agent = map.next_value_seed(OptString)?;
                }
                Field::InitiatingUserId => c.initiating_user_id = map.next_value_seed(OptString)?,
                Field::UserId => c.user_id = map.next_value_seed(OptString)?,
                Field::OrganizationId => c.organization_id = map.next_value_seed(OptString)?,
                Field::OrganizationName => c.organization_name = map.next_value_seed(OptString)?,
                Field::SecondaryEntityName => {
                    c.secondary_entity_name = map.next_value_seed(OptString)?;
                }
                Field::OwningExtension => {
                    c.owning_extension = map.next_value_seed(Nullable(ReferenceSeed))?;
                }
                Field::ParentContext => {
                    c.parent_context = map.next_value_seed(Nullable(ContextSeed))?.map(Box::new);
                }
                Field::InputParameters => {
                    c.input_parameters = map.next_value_seed(pairs(ValueSeed))?
                }
                Field::OutputParameters => {
                    c.output_parameters = map.next_value_seed(pairs(ValueSeed))?;
                }
                Field::SharedVariables => {
                    c.shared_variables = map.next_value_seed(pairs(ValueSeed))?
                }
                Field::PreEntityImages => {
                    c.pre_entity_images = map.next_value_seed(pairs(EntitySeed))?;
                }
                Field::PostEntityImages => {
                    c.post_entity_images = map.next_value_seed(pairs(EntitySeed))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(c)
    }
}

/// An object read by `S`, or null (absent).
struct Nullable<S>(S);

impl<'de, S: Visitor<'de> + DeserializeSeed<'de, Value = <S as Visitor<'de>>::Value>>
    DeserializeSeed<'de> for Nullable<S>
{
    type Value = Option<<S as Visitor<'de>>::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Visitor<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    expecting!("an object or null");
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map).map(Some)
    }
}

/// An `EntityReference` (or an `OwningExtension`): its members are all strings.
#[derive(Clone, Copy)]
struct ReferenceSeed;

impl<'de> DeserializeSeed<'de> for ReferenceSeed {
    type Value = EntityReference;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReferenceSeed {
    type Value = EntityReference;
    expecting!("a reference object");
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        reference_members(&mut map, EntityReference::default())
    }
}

/// The rest of a reference's members into `r`.
fn reference_members<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut r: EntityReference,
) -> Result<EntityReference, A::Error> {
    while let Some(f) = map.next_key_seed(FieldSeed)? {
        match f {
            Field::LogicalName => r.logical_name = map.next_value_seed(OptString)?,
            Field::Id => r.id = map.next_value_seed(OptString)?,
            Field::Name => r.name = map.next_value_seed(OptString)?,
            Field::Type => return Err(de::Error::custom(GiveUp)),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(r)
}

/// An entity object (an image, or an item of a collection): not null, `__type` not checked.
#[derive(Clone, Copy)]
struct EntitySeed;

impl<'de> DeserializeSeed<'de> for EntitySeed {
    type Value = Entity;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntitySeed {
    type Value = Entity;
    expecting!("an entity object");
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        entity_members(&mut map, false)
    }
}

/// The rest of an entity's members. `typed`: its `__type` was read already, and another one
/// is a question for the tree.
fn entity_members<'de, A: MapAccess<'de>>(map: &mut A, typed: bool) -> Result<Entity, A::Error> {
    let mut e = Entity::default();
    while let Some(f) = map.next_key_seed(FieldSeed)? {
        match f {
            Field::LogicalName => e.logical_name = map.next_value_seed(OptString)?,
            Field::Id => e.id = map.next_value_seed(OptString)?,
            Field::RowVersion => e.row_version = map.next_value_seed(RowVersionSeed)?,
            Field::Attributes => e.attributes = map.next_value_seed(pairs(ValueSeed))?,
            Field::FormattedValues => {
                e.formatted_values = map.next_value_seed(pairs(FormattedSeed))?
            }
            Field::KeyAttributes => e.key_attributes = map.next_value_seed(pairs(ValueSeed))?,
            Field::Type if typed => return Err(de::Error::custom(GiveUp)),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(e)
}

/// `RowVersion`: a string, an integer (as its digits), or null.
struct RowVersionSeed;

impl<'de> DeserializeSeed<'de> for RowVersionSeed {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowVersionSeed {
    type Value = Option<String>;
    expecting!("a row version");
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(s.to_owned()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(n.to_string()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A `FormattedValues` value: a string, or null for an empty one.
#[derive(Clone, Copy)]
struct FormattedSeed;

impl<'de> DeserializeSeed<'de> for FormattedSeed {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FormattedSeed {
    type Value = String;
    expecting!("a string or null");
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(s.to_owned())
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(s)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(String::new())
    }
}

/// What the value of a key/value pair is read as, and what a missing value is.
trait Item<'de>: DeserializeSeed<'de> + Copy {
    fn missing(self) -> Result<Self::Value, GiveUp>;
}

impl Item<'_> for ValueSeed {
    fn missing(self) -> Result<Value, GiveUp> {
        Ok(Value::Null)
    }
}

impl Item<'_> for EntitySeed {
    fn missing(self) -> Result<Entity, GiveUp> {
        Err(GiveUp)
    }
}

impl Item<'_> for FormattedSeed {
    fn missing(self) -> Result<String, GiveUp> {
        Ok(String::new())
    }
}

/// A `[{"key": ..., "value": ...}]` array of `item`s; null is empty.
fn pairs<T>(item: T) -> Pairs<T> {
    Pairs(item)
}

struct Pairs<T>(T);

impl<'de, T: Item<'de>> DeserializeSeed<'de> for Pairs<T> {
    type Value = Vec<(String, T::Value)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Item<'de>> Visitor<'de> for Pairs<T> {
    type Value = Vec<(String, T::Value)>;
    expecting!("an array of pairs, or null");
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(pair) = seq.next_element_seed(Pair(self.0))? {
            out.push(pair);
        }
        Ok(out)
    }
}

/// One `{"key": ..., "value": ...}` object.
struct Pair<T>(T);

impl<'de, T: Item<'de>> DeserializeSeed<'de> for Pair<T> {
    type Value = (String, T::Value);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Item<'de>> Visitor<'de> for Pair<T> {
    type Value = (String, T::Value);
    expecting!("a {key, value} object");
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut key, mut value) = (None, None);
        while let Some(f) = map.next_key_seed(FieldSeed)? {
            match f {
                Field::Key => key = map.next_value_seed(OptString)?,
                Field::PairValue => value = Some(map.next_value_seed(self.0)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let key = key.ok_or_else(|| de::Error::custom(GiveUp))?;
        let value = match value {
            Some(v) => v,
            None => self.0.missing().map_err(de::Error::custom)?,
        };
        Ok((key, value))
    }
}

/// Any value of a key/value array.
#[derive(Clone, Copy)]
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;
    expecting!("a value");
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        // As `serde_json::Number::as_i64`, then `as_f64`.
        Ok(i64::try_from(n).map_or(Value::Float(n as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        // serde_json reads no non-finite number; the tree would hold null for one.
        if n.is_finite() {
            Ok(Value::Float(n))
        } else {
            Err(E::custom(GiveUp))
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(parse_date(s).map_or_else(|| Value::String(s.to_owned()), Value::Date))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(classify_array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // The type comes first in every body Dataverse writes; anything else goes to the tree.
        if map.next_key_seed(FieldSeed)? != Some(Field::Type) {
            return Err(de::Error::custom(GiveUp));
        }
        let Some(full_type) = map.next_value_seed(OptString)? else {
            return Err(de::Error::custom(GiveUp));
        };
        let (name, namespace) = full_type.split_once(':').unwrap_or((&full_type, ""));
        match name {
            "Entity" => Ok(Value::Entity(Box::new(entity_members(&mut map, true)?))),
            "EntityReference" => Ok(Value::EntityReference(reference_members(
                &mut map,
                EntityReference::default(),
            )?)),
            "OptionSetValue" => match number_member(&mut map)? {
                Number::Int(n) => Ok(Value::OptionSet(n)),
                _ => Err(de::Error::custom(GiveUp)),
            },
            "Money" => Ok(Value::Money(match number_member(&mut map)? {
                Number::Int(n) => n as f64,
                Number::Float(f) => f,
            })),
            "EntityCollection" => collection_members(&mut map),
            _ if namespace == "#System" => wrapped_members(name, &mut map),
            // A type this parser does not model, kept as the JSON it came as.
            _ => unknown_members(full_type, &mut map),
        }
    }
}

/// An object of a type this parser does not model: all of it, as `serde_json` JSON, made the
/// way the tree makes it ([`Json::to_value`] of each member, the last of a repeated name).
fn unknown_members<'de, A: MapAccess<'de>>(
    full_type: String,
    map: &mut A,
) -> Result<Value, A::Error> {
    let mut members = serde_json::Map::new();
    members.insert("__type".to_owned(), serde_json::Value::String(full_type));
    while let Some(Key(name)) = map.next_key()? {
        if name == "__type" {
            return Err(de::Error::custom(GiveUp));
        }
        let value: Json<'de> = map.next_value()?;
        members.insert(name.into_owned(), value.to_value());
    }
    Ok(Value::Unknown(serde_json::Value::Object(members)))
}

/// A JSON number, as the tree reads it (`as_i64`, else `as_f64`).
enum Number {
    Int(i64),
    Float(f64),
}

struct NumberSeed;

impl<'de> DeserializeSeed<'de> for NumberSeed {
    type Value = Number;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Number, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumberSeed {
    type Value = Number;
    expecting!("a number");
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Number, E> {
        Ok(Number::Int(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Number, E> {
        Ok(i64::try_from(n).map_or(Number::Float(n as f64), Number::Int))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Number, E> {
        Ok(Number::Float(n))
    }
}

/// The `Value` member of an `OptionSetValue` or `Money`: required, a number.
fn number_member<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Number, A::Error> {
    let mut number = None;
    while let Some(f) = map.next_key_seed(FieldSeed)? {
        match f {
            Field::Value => number = Some(map.next_value_seed(NumberSeed)?),
            Field::Type => return Err(de::Error::custom(GiveUp)),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    number.ok_or_else(|| de::Error::custom(GiveUp))
}

/// The `Entities` of an `EntityCollection`: an array of entity objects, or null for none.
fn collection_members<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Value, A::Error> {
    let mut entities = Vec::new();
    while let Some(f) = map.next_key_seed(FieldSeed)? {
        match f {
            Field::Entities => entities = map.next_value_seed(Entities)?,
            Field::Type => return Err(de::Error::custom(GiveUp)),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(Value::EntityCollection(entities))
}

struct Entities;

impl<'de> DeserializeSeed<'de> for Entities {
    type Value = Vec<Entity>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entities {
    type Value = Vec<Entity>;
    expecting!("an array of entities, or null");
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(e) = seq.next_element_seed(EntitySeed)? {
            out.push(e);
        }
        Ok(out)
    }
}

/// A wrapped primitive (`{"__type": "Guid:#System", "__value": ...}`): its `__value`.
fn wrapped_members<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Value, A::Error> {
    let mut inner = None;
    while let Some(f) = map.next_key_seed(FieldSeed)? {
        match f {
            Field::WrappedValue => inner = Some(map.next_value_seed(ValueSeed)?),
            Field::Type => return Err(de::Error::custom(GiveUp)),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    // What the tree makes of each wrapped value; anything else it refuses, or reads in a way
    // only it can tell (a string that looks like a date inside a Guid).
    match (name, inner) {
        ("Guid", Some(Value::String(s))) => Ok(Value::Guid(s)),
        ("DateTime", Some(Value::Date(ms))) => Ok(Value::Date(ms)),
        ("Guid" | "DateTime", _) => Err(de::Error::custom(GiveUp)),
        (
            _,
            Some(
                v @ (Value::Null
                | Value::Bool(_)
                | Value::Int(_)
                | Value::Float(_)
                | Value::String(_)
                | Value::Date(_)),
            ),
        ) => Ok(v),
        _ => Err(de::Error::custom(GiveUp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::parse_tree;
    use proptest::prelude::*;

    /// The direct parse of `text`, checked against the tree: where it succeeds, the tree gives
    /// the same context. Returns whether it succeeded.
    fn agrees(text: &str) -> bool {
        match parse(text) {
            Ok(direct) => {
                assert_eq!(Ok(direct), parse_tree(text), "{text}");
                true
            }
            Err(GiveUp) => false,
        }
    }

    #[test]
    fn every_fixture_parses_directly_as_through_the_tree() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/dataverse");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("readable");
                assert!(agrees(text.trim_start_matches('\u{feff}')), "{path:?}");
                read += 1;
            }
        }
        assert!(read >= 4, "found {read} fixtures");
    }

    #[test]
    fn what_only_the_tree_can_tell_is_left_to_it() {
        for text in [
            // The type after other members, or twice.
            r#"{"InputParameters":[{"key":"Target","value":{"Id":"x","__type":"Entity:a"}}]}"#,
            r#"{"InputParameters":[{"key":"T","value":{"__type":"Entity:a","__type":"Money:a"}}]}"#,
            // Wrong types, and a date inside a Guid.
            r#"{"MessageName":1}"#,
            r#"{"Depth":1.5}"#,
            r#"{"InputParameters":[{"key":"g","value":{"__type":"Guid:#System","__value":"/Date(1)/"}}]}"#,
            r#"{"PostEntityImages":[{"key":"a"}]}"#,
            r#"[]"#,
            r#"{} x"#,
        ] {
            assert!(!agrees(text), "{text}");
        }
        // A repeated member: the last one counts, as in the tree.
        let text = r#"{"MessageName":"Create","Stage":1,"MessageName":"Update","Stage":null}"#;
        assert!(agrees(text));
        let ctx = parse(text).unwrap();
        assert_eq!(
            (ctx.message_name.as_deref(), ctx.stage),
            (Some("Update"), None)
        );
    }

    /// JSON written member by member, so that order and repeated names are as generated.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Int(i64),
        Big(u64),
        Float(f64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn text(&self) -> String {
            match self {
                J::Null => "null".into(),
                J::Bool(b) => b.to_string(),
                J::Int(n) => n.to_string(),
                J::Big(n) => n.to_string(),
                J::Float(f) => format!("{f:e}"),
                J::Str(s) => serde_json::to_string(s).unwrap(),
                J::Arr(items) => {
                    let items: Vec<String> = items.iter().map(J::text).collect();
                    format!("[{}]", items.join(","))
                }
                J::Obj(members) => {
                    let members: Vec<String> = members
                        .iter()
                        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.text()))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
            }
        }
    }

    fn obj(members: Vec<(&str, J)>) -> J {
        J::Obj(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// Any JSON leaf: each is a value of a key/value array, and each is out of place for a
    /// member that must be a string.
    fn leaf() -> BoxedStrategy<J> {
        prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::Int),
            (i64::MAX as u64..=u64::MAX).prop_map(J::Big),
            (-1e6f64..1e6).prop_map(J::Float),
            "[a-zA-Z0-9 ]{0,6}".prop_map(J::Str),
            (-10_000_000_000_000i64..10_000_000_000_000)
                .prop_map(|ms| J::Str(format!("/Date({ms})/"))),
            Just(J::Str("/Date(1722582039000+0000)/".into())),
        ]
        .boxed()
    }

    /// `strategy`, or (unless `clean`) now and then anything else.
    fn mostly(clean: bool, strategy: BoxedStrategy<J>) -> BoxedStrategy<J> {
        if clean {
            strategy
        } else {
            prop_oneof![6 => strategy, 1 => leaf(), 1 => Just(J::Arr(vec![]))].boxed()
        }
    }

    fn string_or_null(clean: bool) -> BoxedStrategy<J> {
        let s = prop_oneof![4 => "[a-z0-9-]{0,8}".prop_map(J::Str), 1 => Just(J::Null)];
        mostly(clean, s.boxed())
    }

    fn integer(clean: bool) -> BoxedStrategy<J> {
        let n = prop_oneof![4 => any::<i32>().prop_map(|n| J::Int(n.into())), 1 => Just(J::Null)];
        mostly(clean, n.boxed())
    }

    /// A date, or (`nullable`) null.
    fn date(clean: bool, nullable: bool) -> BoxedStrategy<J> {
        let d = prop_oneof![
            (0i64..4_000_000_000_000).prop_map(|ms| J::Str(format!("/Date({ms})/"))),
            Just(J::Str("\\/Date(1796283758000+0000)\\/".into())),
            Just(if nullable {
                J::Null
            } else {
                J::Str("/Date(0)/".into())
            }),
        ];
        mostly(clean, d.boxed())
    }

    /// An object with `__type` first (unless not `clean`, now and then elsewhere or twice).
    fn typed(
        clean: bool,
        name: &'static str,
        members: BoxedStrategy<Vec<(String, J)>>,
    ) -> BoxedStrategy<J> {
        let place = if clean {
            Just(0usize).boxed()
        } else {
            prop_oneof![6 => Just(0usize), 1 => 1..4usize, 1 => Just(usize::MAX)].boxed()
        };
        (members, place)
            .prop_map(move |(mut members, at)| {
                let t = ("__type".to_owned(), J::Str(name.to_owned()));
                if at == usize::MAX {
                    members.push(t.clone());
                    members.insert(0, t);
                } else {
                    members.insert(at.min(members.len()), t);
                }
                J::Obj(members)
            })
            .boxed()
    }

    /// Members `names` of `strategy`'s values, each maybe, in order, one maybe repeated.
    fn members(
        names: &'static [&'static str],
        strategy: BoxedStrategy<J>,
    ) -> BoxedStrategy<Vec<(String, J)>> {
        (
            prop::collection::vec((any::<bool>(), strategy.clone()), names.len()),
            prop::option::of((prop::sample::select(names.to_vec()), strategy)),
        )
            .prop_map(move |(picked, again)| {
                let mut out: Vec<(String, J)> = names
                    .iter()
                    .zip(picked)
                    .filter(|(_, (keep, _))| *keep)
                    .map(|(n, (_, v))| ((*n).to_owned(), v))
                    .collect();
                out.extend(again.map(|(n, v)| (n.to_owned(), v)));
                out
            })
            .boxed()
    }

    /// Member `name`, present (unless not `clean`: then now and then absent).
    fn required(
        clean: bool,
        name: &'static str,
        strategy: BoxedStrategy<J>,
    ) -> BoxedStrategy<Vec<(String, J)>> {
        let present = strategy.prop_map(move |v| vec![(name.to_owned(), v)]);
        if clean {
            present.boxed()
        } else {
            prop_oneof![6 => present, 1 => Just(Vec::new())].boxed()
        }
    }

    /// The members of an entity: `__type` aside.
    fn entity_members(clean: bool, depth: u32) -> BoxedStrategy<Vec<(String, J)>> {
        let version = prop_oneof![
            string_or_null(clean),
            any::<u32>().prop_map(|n| J::Int(n.into())),
        ];
        (
            members(&["LogicalName", "Id"], string_or_null(clean)),
            members(&["RowVersion"], version.boxed()),
            members(
                &["Attributes", "KeyAttributes"],
                pairs(clean, value(clean, depth)),
            ),
            members(&["FormattedValues"], pairs(clean, string_or_null(clean))),
            members(&["EntityState", "RelatedEntities"], leaf()),
        )
            .prop_map(|(a, b, c, d, e)| [a, b, c, d, e].concat())
            .boxed()
    }

    /// A value of a key/value array: a leaf, an array, or a typed object of every kind.
    fn value(clean: bool, depth: u32) -> BoxedStrategy<J> {
        if depth == 0 {
            return leaf();
        }
        let inner = value(clean, depth - 1);
        let number = prop_oneof![
            any::<i32>().prop_map(|n| J::Int(n.into())),
            (-1e9f64..1e9).prop_map(J::Float)
        ];
        let option = mostly(clean, any::<i32>().prop_map(|n| J::Int(n.into())).boxed());
        let collection = prop_oneof![
            prop::collection::vec(entity(clean, depth - 1), 0..3).prop_map(J::Arr),
            Just(J::Null),
        ];
        let guid = mostly(clean, "[a-f0-9-]{1,8}".prop_map(J::Str).boxed());
        let primitive = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::Int),
            "[a-z]{0,4}".prop_map(J::Str),
            (0i64..4_000_000_000_000).prop_map(|ms| J::Str(format!("/Date({ms})/"))),
        ];
        prop_oneof![
            3 => leaf(),
            1 => prop::collection::vec(inner.clone(), 0..3).prop_map(J::Arr),
            1 => prop::collection::vec(typed(clean, "OptionSetValue:x", required(clean, "Value", option.clone())), 1..3).prop_map(J::Arr),
            3 => typed(clean, "Entity:http://schemas.microsoft.com/xrm/2011/Contracts", entity_members(clean, depth - 1)),
            3 => typed(clean, "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts", members(&["Id", "LogicalName", "Name", "KeyAttributes"], string_or_null(clean))),
            1 => typed(clean, "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts", required(clean, "Value", option)),
            1 => typed(clean, "Money:http://schemas.microsoft.com/xrm/2011/Contracts", required(clean, "Value", mostly(clean, number.boxed()))),
            1 => typed(clean, "EntityCollection:x", members(&["Entities", "EntityName"], mostly(clean, collection.boxed()))),
            1 => typed(clean, "Guid:#System", required(clean, "__value", guid)),
            1 => typed(clean, "DateTime:#System", required(clean, "__value", date(clean, false))),
            1 => typed(clean, "Int32:#System", required(clean, "__value", mostly(clean, primitive.boxed()))),
            1 => typed(clean, "KeyValuePairOfstringstring:#System.Collections.Generic", members(&["key", "value", "x"], inner)),
        ]
        .boxed()
    }

    /// An entity as an image or an item of a collection: `__type` or none.
    fn entity(clean: bool, depth: u32) -> BoxedStrategy<J> {
        prop_oneof![
            entity_members(clean, depth).prop_map(J::Obj),
            typed(clean, "Entity:x", entity_members(clean, depth)),
        ]
        .boxed()
    }

    /// A key/value array of `item`s: pairs in either order, sometimes (unless `clean`)
    /// without a key or with a key or value twice.
    fn pairs(clean: bool, item: BoxedStrategy<J>) -> BoxedStrategy<J> {
        let pair = if clean {
            prop_oneof![
                ("[a-z_]{1,6}", item.clone())
                    .prop_map(|(k, v)| obj(vec![("key", J::Str(k)), ("value", v)])),
                ("[a-z_]{1,6}", item.clone())
                    .prop_map(|(k, v)| obj(vec![("value", v), ("key", J::Str(k))])),
            ]
            .boxed()
        } else {
            prop_oneof![
                4 => ("[a-z_]{1,6}", item.clone()).prop_map(|(k, v)| obj(vec![("key", J::Str(k)), ("value", v)])),
                1 => ("[a-z_]{1,6}").prop_map(|k| obj(vec![("key", J::Str(k))])),
                1 => item.clone().prop_map(|v| obj(vec![("value", v)])),
                1 => ("[a-z]{1,4}", item.clone(), item).prop_map(|(k, v, w)| {
                    obj(vec![("value", v), ("key", J::Str(k)), ("value", w), ("key", J::Null)])
                }),
                1 => leaf(),
            ]
            .boxed()
        };
        mostly(
            clean,
            prop::collection::vec(pair, 0..4).prop_map(J::Arr).boxed(),
        )
    }

    /// A context: every member the parser reads, sometimes absent, null or repeated, members
    /// it does not read, and (unless `clean`) now and then a member of the wrong type.
    fn context(clean: bool, depth: u32) -> BoxedStrategy<J> {
        let parent = if depth == 0 {
            Just(J::Null).boxed()
        } else {
            mostly(
                clean,
                prop_oneof![2 => context(clean, depth - 1), 1 => Just(J::Null)].boxed(),
            )
        };
        let owning = mostly(
            clean,
            members(&["LogicalName", "Id", "Name"], string_or_null(clean))
                .prop_map(J::Obj)
                .boxed(),
        );
        (
            members(
                &[
                    "MessageName",
                    "PrimaryEntityName",
                    "PrimaryEntityId",
                    "OperationId",
                    "RequestId",
                    "CorrelationId",
                    "InitiatingUserAgent",
                    "InitiatingUserId",
                    "UserId",
                    "OrganizationId",
                    "OrganizationName",
                    "SecondaryEntityName",
                ],
                string_or_null(clean),
            ),
            members(&["Mode", "Stage", "Depth"], integer(clean)),
            members(&["OperationCreatedOn"], date(clean, true)),
            members(&["BusinessUnitId", "IsInTransaction"], leaf()),
            members(
                &["InputParameters", "OutputParameters", "SharedVariables"],
                pairs(clean, value(clean, 3)),
            ),
            members(
                &["PreEntityImages", "PostEntityImages"],
                pairs(clean, entity(clean, 2)),
            ),
            members(&["OwningExtension"], owning),
            members(&["ParentContext"], parent),
            any::<bool>(),
        )
            .prop_map(|(a, b, c, d, e, f, g, h, reversed)| {
                let mut m = [a, b, c, d, e, f, g, h].concat();
                if reversed {
                    m.reverse();
                }
                J::Obj(m)
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A well-formed body parses directly; any body that parses directly parses so through
        /// the tree too.
        #[test]
        fn a_generated_body_parses_directly_as_through_the_tree(
            (clean, body) in any::<bool>().prop_flat_map(|clean| context(clean, 2).prop_map(move |b| (clean, b)))
        ) {
            let text = body.text();
            let direct = agrees(&text);
            prop_assert!(direct || !clean, "a well-formed body was left to the tree: {text}");
        }
    }

    /// The generated bodies are not all left to the tree: the property above is about
    /// something. Well-formed ones (every member its type, `__type` first) parse directly.
    #[test]
    fn well_formed_generated_bodies_parse_directly() {
        let value = obj(vec![
            ("__type", J::Str("EntityReference:x".into())),
            ("Id", J::Str("id".into())),
        ]);
        let target = obj(vec![
            ("__type", J::Str("Entity:x".into())),
            ("RowVersion", J::Int(12)),
            (
                "Attributes",
                J::Arr(vec![
                    obj(vec![("key", J::Str("r".into())), ("value", value)]),
                    obj(vec![
                        ("key", J::Str("n".into())),
                        ("value", J::Big(u64::MAX)),
                    ]),
                    obj(vec![
                        ("key", J::Str("m".into())),
                        (
                            "value",
                            obj(vec![
                                ("__type", J::Str("Money:x".into())),
                                ("Value", J::Float(1.5)),
                            ]),
                        ),
                    ]),
                    obj(vec![
                        ("key", J::Str("o".into())),
                        (
                            "value",
                            J::Arr(vec![obj(vec![
                                ("__type", J::Str("OptionSetValue:x".into())),
                                ("Value", J::Int(3)),
                            ])]),
                        ),
                    ]),
                    obj(vec![
                        ("key", J::Str("g".into())),
                        (
                            "value",
                            obj(vec![
                                ("__type", J::Str("Guid:#System".into())),
                                ("__value", J::Str("abc".into())),
                            ]),
                        ),
                    ]),
                    obj(vec![
                        ("key", J::Str("d".into())),
                        (
                            "value",
                            obj(vec![
                                ("__type", J::Str("DateTime:#System".into())),
                                ("__value", J::Str("/Date(5)/".into())),
                            ]),
                        ),
                    ]),
                    obj(vec![
                        ("key", J::Str("i".into())),
                        (
                            "value",
                            obj(vec![
                                ("__type", J::Str("Int32:#System".into())),
                                ("__value", J::Int(-4)),
                            ]),
                        ),
                    ]),
                    obj(vec![
                        ("key", J::Str("c".into())),
                        (
                            "value",
                            obj(vec![
                                ("__type", J::Str("EntityCollection:x".into())),
                                (
                                    "Entities",
                                    J::Arr(vec![obj(vec![("Id", J::Str("e".into()))])]),
                                ),
                            ]),
                        ),
                    ]),
                ]),
            ),
            (
                "FormattedValues",
                J::Arr(vec![obj(vec![
                    ("key", J::Str("f".into())),
                    ("value", J::Null),
                ])]),
            ),
        ]);
        let body = obj(vec![
            ("MessageName", J::Str("Update".into())),
            ("Depth", J::Int(1)),
            ("Unread", J::Arr(vec![J::Float(2.5), J::Null])),
            (
                "InputParameters",
                J::Arr(vec![obj(vec![
                    ("key", J::Str("Target".into())),
                    ("value", target),
                ])]),
            ),
            ("ParentContext", obj(vec![("Stage", J::Int(30))])),
        ]);
        assert!(agrees(&body.text()), "{}", body.text());
    }
}
