//! The gRPC codec of every generated client and server: prost's, except
//! that a request that does not decode (malformed protobuf at any depth, a
//! string that is not UTF-8) is `INVALID_ARGUMENT` with a
//! `google.rpc.BadRequest` field violation naming the field where decoding
//! failed, not prost's `INTERNAL` (which would blame the broker).

use tonic::codec::{BufferSettings, Codec as TonicCodec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// Prost encoding, with decode errors answered as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(ProstCodec::default())
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(self.0.decoder())
    }
}

/// Prost's decoder with its errors mapped by [`decode_error_status`].
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_error_status(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The field path where decoding failed, from the error's location stack
/// (`failed to decode Protobuf message: CaseEvent.summary: PublishRequest.event: …`,
/// innermost first), e.g. `event.summary`; empty when the message itself is
/// malformed at its top level.
pub fn decode_error_field(e: &prost::DecodeError) -> String {
    let text = e.to_string();
    let rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields: Vec<&str> = rest
        .split(": ")
        .map_while(|part| {
            let (message, field) = part.split_once('.')?;
            let ident =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (ident(message) && ident(field)).then_some(field)
        })
        .collect();
    fields.reverse();
    fields.join(".")
}

/// `INVALID_ARGUMENT` with one field violation for a request that did not
/// decode.
pub fn decode_error_status(e: &prost::DecodeError) -> Status {
    let field = decode_error_field(e);
    let description = format!(
        "the request is not a valid protobuf encoding of its message: {}",
        e.to_string().rsplit(": ").next().unwrap_or("malformed")
    );
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field.clone(), description.clone());
    let message = if field.is_empty() {
        description
    } else {
        format!("{field}: {description}")
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn nested_non_utf8_names_the_field() {
        // PublishRequest.event (1) → CaseEvent.summary (5) = 0xFF.
        let inner = [0x2a, 0x01, 0xff];
        let mut outer = vec![0x0a, inner.len() as u8];
        outer.extend_from_slice(&inner);
        let e = crate::v1::PublishRequest::decode(outer.as_slice())
            .err()
            .unwrap_or_else(|| panic!("decoded"));
        assert_eq!(decode_error_field(&e), "event.summary");
        let status = decode_error_status(&e);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_details_bad_request();
        assert!(details.is_some_and(|b| {
            b.field_violations
                .iter()
                .any(|v| v.field == "event.summary")
        }));
    }

    #[test]
    fn truncated_nested_message_names_the_parent_field() {
        // PublishRequest.event claims 10 bytes, carries 2.
        let bytes = [0x0a, 0x0a, 0x0a, 0x00];
        let e = crate::v1::PublishRequest::decode(bytes.as_slice())
            .err()
            .unwrap_or_else(|| panic!("decoded"));
        assert_eq!(decode_error_status(&e).code(), Code::InvalidArgument);
        assert_eq!(decode_error_field(&e), "event");
    }
}
