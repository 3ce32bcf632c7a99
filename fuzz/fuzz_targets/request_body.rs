//! A predict request body, decoded as the web service does: must never panic, and whatever it
//! accepts as JSON must be valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serving_core::{FileInput, Input};
use serving_http::__fuzz::decode_body;

fuzz_target!(|body: &[u8]| {
    if let Ok(Input::Json(value)) = decode_body(body, FileInput::Off) {
        // Accepted input re-serializes and parses back to itself.
        let text = serde_json::to_string(&value).expect("a parsed value serializes");
        let again: serde_json::Value = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(again, value);
    }
    let _ = decode_body(body, FileInput::Bytes);
});
