//! The canonical proto3 JSON mapping of SPM messages, driven by the descriptor set
//! (used by the HTTP webhook, the CLI and tests).

use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};

/// Why a JSON document does not map onto a message.
#[derive(Debug)]
pub struct JsonError(pub String);

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

/// Parses `json` (proto3 JSON mapping; unknown fields are an error) into `T`.
pub fn from_json<T>(json: &[u8]) -> Result<T, JsonError>
where
    T: prost::Message + Default + ReflectName,
{
    let desc = crate::descriptor_pool()
        .get_message_by_name(T::FULL_NAME)
        .ok_or_else(|| JsonError(format!("unknown message {}", T::FULL_NAME)))?;
    let mut de = serde_json::Deserializer::from_slice(json);
    let msg = DynamicMessage::deserialize_with_options(desc, &mut de, &DeserializeOptions::new())
        .map_err(|e| JsonError(e.to_string()))?;
    de.end().map_err(|e| JsonError(e.to_string()))?;
    msg.transcode_to::<T>()
        .map_err(|e| JsonError(e.to_string()))
}

/// Renders `msg` in the proto3 JSON mapping (field names in lowerCamelCase, enums as names).
pub fn to_json<T>(msg: &T) -> serde_json::Value
where
    T: prost::Message + ReflectName,
{
    let desc = crate::descriptor_pool()
        .get_message_by_name(T::FULL_NAME)
        .expect("message is in the descriptor pool");
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(msg)
        .expect("a prost message transcodes to its own descriptor");
    let opts = SerializeOptions::new().skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .expect("dynamic message serializes")
}

/// The fully-qualified protobuf name of a generated message.
pub trait ReflectName {
    const FULL_NAME: &'static str;
}

macro_rules! names {
    ($($ty:path => $name:literal),* $(,)?) => {
        $(impl ReflectName for $ty { const FULL_NAME: &'static str = $name; })*
    };
}

names! {
    crate::ingest::v1::CrmEvent => "spm.ingest.v1.CrmEvent",
    crate::ingest::v1::SubmitEventsRequest => "spm.ingest.v1.SubmitEventsRequest",
    crate::ingest::v1::SubmitEventsResponse => "spm.ingest.v1.SubmitEventsResponse",
    crate::ingest::v1::EventAck => "spm.ingest.v1.EventAck",
    crate::events::v1::EventEnvelope => "spm.events.v1.EventEnvelope",
}
