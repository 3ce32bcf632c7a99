//! An Open Inference Protocol infer body, decoded as the web service does up to the model:
//! must never panic or overflow the stack whatever the shape says (a shape of 7,000 ones once
//! aborted the server), and a batch never has more rows than its leading dimension. The same
//! bytes, read as JSON, are mapped to output tensors as a predictor's answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serving_http::__fuzz::decode_oip;

fuzz_target!(|body: &[u8]| {
    let answer = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    if let Ok(inputs) = decode_oip(body, answer) {
        assert!(!inputs.is_empty(), "an accepted request has at least one input");
        let request: Value = serde_json::from_slice(body).expect("accepted, so JSON");
        let shapes: Vec<u64> = request["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["shape"].as_array()?.first()?.as_u64())
            .collect();
        if inputs.len() > 1 {
            assert!(shapes.iter().all(|n| *n == inputs.len() as u64), "{shapes:?}");
        }
    }
});
