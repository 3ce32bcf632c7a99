//! Base64 file input ("function accepts file as input"): arbitrary text must never panic, and
//! any bytes encoded as standard, URL-safe, unpadded, line-wrapped or data-URL Base64 must
//! decode back to exactly those bytes.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use serving_core::{FileInput, Input};
use serving_http::__fuzz::decode_files;

fuzz_target!(|data: &[u8]| {
    // Arbitrary text, alone or as a list of files split at newlines.
    let text = String::from_utf8_lossy(data).into_owned();
    let _ = decode_files(Value::String(text.clone()), FileInput::Bytes);
    let list = text.split('\n').map(|s| Value::String(s.to_owned())).collect();
    let _ = decode_files(Value::Array(list), FileInput::Bytes);

    // Real files in every encoding clients send decode to the same bytes.
    let wrapped = STANDARD
        .encode(data)
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n");
    let encodings = [
        STANDARD.encode(data),
        STANDARD_NO_PAD.encode(data),
        URL_SAFE.encode(data),
        URL_SAFE_NO_PAD.encode(data),
        format!("data:application/octet-stream;base64,{}", STANDARD.encode(data)),
        wrapped,
    ];
    for encoded in encodings {
        match decode_files(json!(encoded), FileInput::Bytes) {
            Ok(Input::Bytes(bytes)) => assert_eq!(&bytes[..], data, "{encoded}"),
            other => panic!("{encoded:?} did not decode to its bytes: {other:?}"),
        }
    }
});
