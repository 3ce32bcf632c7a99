//! The original product's request format, read the same way by every transport: the
//! `{"input_params": ...}` wrapper ([`parse_body`]) and Base64 file input ([`decode_files`]).
//!
//! A web request, a Kafka message and a batch row carry the same bodies; these functions turn
//! one into the [`Input`](crate::Input) a predictor takes, with the errors a caller sees.

mod body;
mod files;

pub use body::Unwrapped;
pub use files::{DecodedInput, InputFiles, decode_files};

use serde_json::Value;

use crate::error::{Error, Result};

/// The input a body carries: `input_params` when the body is an object with that key, else
/// the body itself (the original product's clients send both shapes). An empty body or one
/// that is not JSON is an [`Error::InvalidRequest`].
pub fn parse_body(body: &[u8]) -> Result<Value> {
    if body.is_empty() {
        return Err(Error::invalid_request(
            "the request body is empty; send {\"input_params\": ...}",
        ));
    }
    serde_json::from_slice::<Unwrapped>(body)
        .map(|unwrapped| unwrapped.0)
        .map_err(|e| Error::invalid_request(format!("the request body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_wire_shapes() {
        assert_eq!(
            parse_body(br#"{"input_params": [1, 2]}"#).unwrap(),
            json!([1, 2])
        );
        assert_eq!(parse_body(br#"[1, 2]"#).unwrap(), json!([1, 2]));
        assert_eq!(
            parse_body(br#"{"text": "hi"}"#).unwrap(),
            json!({"text": "hi"})
        );
        assert!(parse_body(b"{").is_err());
        assert!(parse_body(b"").is_err());
    }

    #[test]
    fn floats_reach_the_model_exactly_as_sent() {
        // Found by fuzzing: without serde_json's `float_roundtrip`, this parses one unit off.
        let sent = b"33333333333333333333333533133366686633533133366686666";
        let value = parse_body(sent).unwrap();
        assert_eq!(value, json!(3.333333333333333e52));
        assert_eq!(
            value.to_string().parse::<f64>().unwrap(),
            3.333333333333333e52
        );
    }
}
