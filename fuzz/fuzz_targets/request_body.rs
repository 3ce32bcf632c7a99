//! A predict request body, decoded as the web service does: must never panic, must mean the
//! same as parsing the whole body and then unwrapping `input_params` (the one-pass parser is
//! checked against that simple reference), and what it accepts must round-trip as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serving_core::{FileInput, Input};
use serving_http::__fuzz::decode_body;

/// The body's input, the simple way.
fn reference(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(mut object) if object.contains_key("input_params") => {
            object.remove("input_params")?
        }
        other => other,
    })
}

fuzz_target!(|body: &[u8]| {
    let decoded = decode_body(body, FileInput::Off);
    match (&decoded, reference(body)) {
        (Ok(Input::Json(value)), Some(expected)) => assert_eq!(value, &expected),
        (Err(_), None) => {}
        (got, expected) => panic!("decoded {got:?}, the reference says {expected:?}"),
    }
    if let Ok(Input::Json(value)) = decoded {
        // Accepted input re-serializes and parses back to itself.
        let text = serde_json::to_string(&value).expect("a parsed value serializes");
        let again: Value = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(again, value);
    }
    let _ = decode_body(body, FileInput::Bytes);
});
