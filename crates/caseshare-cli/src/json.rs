//! Proto3 JSON (the canonical mapping, as grpcurl and every protobuf
//! runtime use it) for the CLI's input and output, driven by the schema's
//! descriptors.

use caseshare_core::minimise::descriptor_pool;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

/// A JSON conversion failure.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The message type is unknown.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The JSON does not fit the message.
    #[error("{0}")]
    Invalid(String),
}

/// Parses proto3 JSON into message `M` (full name `type_name`).
pub fn from_json<M: Message + Default>(type_name: &str, json: &str) -> Result<M, JsonError> {
    let desc = descriptor_pool()
        .and_then(|p| p.get_message_by_name(type_name))
        .ok_or_else(|| JsonError::UnknownType(type_name.to_string()))?;
    let mut de = serde_json::Deserializer::from_str(json);
    let dynamic = DynamicMessage::deserialize(desc, &mut de)
        .map_err(|e| JsonError::Invalid(e.to_string()))?;
    de.end().map_err(|e| JsonError::Invalid(e.to_string()))?;
    dynamic
        .transcode_to::<M>()
        .map_err(|e| JsonError::Invalid(e.to_string()))
}

/// Renders message `M` (full name `type_name`) as proto3 JSON, leaving out
/// fields at their default values.
pub fn to_json<M: Message>(type_name: &str, msg: &M) -> Result<serde_json::Value, JsonError> {
    render(type_name, msg, true)
}

/// Renders message `M` as proto3 JSON with every field, defaults included
/// (for scripts that read figures which may be zero).
pub fn to_json_with_defaults<M: Message>(
    type_name: &str,
    msg: &M,
) -> Result<serde_json::Value, JsonError> {
    render(type_name, msg, false)
}

fn render<M: Message>(
    type_name: &str,
    msg: &M,
    skip_defaults: bool,
) -> Result<serde_json::Value, JsonError> {
    let desc = descriptor_pool()
        .and_then(|p| p.get_message_by_name(type_name))
        .ok_or_else(|| JsonError::UnknownType(type_name.to_string()))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| JsonError::Invalid(e.to_string()))?;
    let options = SerializeOptions::new().skip_default_fields(skip_defaults);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| JsonError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use caseshare_proto::v1 as pb;

    #[test]
    fn case_event_round_trips_through_json() {
        let json = r#"{
          "eventId": "evt-1",
          "child": {"nhsNumber": "9434765919"},
          "purpose": "EARLY_HELP",
          "occurredAt": "2026-11-02T09:00:00Z",
          "educationAttendanceConcern": {"period": "2026-autumn-1", "attendancePercent": 81.5, "unauthorisedSessions": 9}
        }"#;
        let e: pb::CaseEvent = from_json("caseshare.v1.CaseEvent", json).unwrap();
        assert_eq!(e.purpose, pb::Purpose::EarlyHelp as i32);
        let back = to_json("caseshare.v1.CaseEvent", &e).unwrap();
        assert_eq!(
            back["educationAttendanceConcern"]["unauthorisedSessions"],
            9
        );
        assert_eq!(back["purpose"], "EARLY_HELP");
        assert!(from_json::<pb::CaseEvent>("caseshare.v1.CaseEvent", r#"{"nope": 1}"#).is_err());
        assert!(
            from_json::<pb::CaseEvent>("caseshare.v1.CaseEvent", r#"{"eventId": "a"} trailing"#)
                .is_err()
        );
    }
}
