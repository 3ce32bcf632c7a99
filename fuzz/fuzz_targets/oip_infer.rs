//! An Open Inference Protocol infer body, decoded as `POST /v2/models/{name}/infer` does: must
//! never panic or overflow the stack (a 7,000-dimension shape once did), whatever the shape
//! claims; what it accepts obeys the shape limits and the batch rule, and round-trips as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serving_http::__fuzz::decode_infer_body;

/// The most dimensions a shape may have (`serving_http`'s documented limit).
const MAX_RANK: usize = 32;

fuzz_target!(|body: &[u8]| {
    let Ok(predictions) = decode_infer_body(body) else {
        return;
    };
    assert!(!predictions.is_empty(), "an accepted request predicts something");
    let request: Value = serde_json::from_slice(body).expect("accepted bodies are JSON");
    let inputs = request["inputs"].as_array().expect("accepted bodies have inputs");
    for input in inputs {
        let shape: Vec<u64> = serde_json::from_value(input["shape"].clone()).expect("a shape");
        assert!(shape.len() <= MAX_RANK, "rank {} accepted", shape.len());
        let elements = shape.iter().try_fold(1u64, |p, &d| p.checked_mul(d));
        assert!(
            elements.is_some_and(|e| e <= body.len() as u64),
            "{shape:?} accepted from a {}-byte body",
            body.len()
        );
        if inputs.len() == 1 && shape.len() >= 2 {
            assert_eq!(predictions.len() as u64, shape[0], "one prediction per row");
        }
    }
    for prediction in predictions {
        let text = serde_json::to_string(&prediction).expect("an input serializes");
        let again: Value = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(again, prediction);
    }
});
