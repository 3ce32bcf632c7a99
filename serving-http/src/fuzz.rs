//! Entry points for the fuzz targets in `fuzz/`: the request decoding of the predict route,
//! without a socket. Not part of the public API.

use serde_json::Value;
use serving_core::{FileInput, Input};

/// Decodes a predict request body exactly as `POST /api/v1/endpoints/{name}` does: JSON,
/// `input_params` unwrapped, then Base64 files decoded when `files` asks for it. The error is
/// the message the caller would see.
pub fn decode_body(body: &[u8], files: FileInput) -> Result<Input, String> {
    let input = crate::service::parse_input(body).map_err(|e| format!("{e:?}"))?;
    decode_files(input, files)
}

/// Decodes Base64 file input (a string or a list of strings) as the predict route does.
pub fn decode_files(input: Value, files: FileInput) -> Result<Input, String> {
    serving_core::wire::decode_files(input, files)
        .map(|decoded| decoded.input)
        .map_err(|e| e.to_string())
}

/// Decodes an Open Inference Protocol infer body as `POST /v2/models/{name}/infer` does, up to
/// the model: the request, its tensors' shapes bounded, then one input or one per batch row.
/// `answer` is then mapped to output tensors as a predictor's answer would be.
pub fn decode_oip(body: &[u8], answer: Value) -> Result<Vec<Input>, String> {
    let inputs = crate::oip::decode_for_fuzz(body).map_err(|e| e.to_string())?;
    crate::oip::outputs_for_fuzz(answer);
    Ok(inputs)
}
