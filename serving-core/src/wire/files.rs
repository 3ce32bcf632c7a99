//! "Function accepts file as input": Base64 input decoded before predict.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use bytes::Bytes;
use serde_json::Value;
use tempfile::TempPath;

use crate::config::spec::FileInput;
use crate::endpoint::PredictRequest;
use crate::error::{Error, Result};
use crate::model::input::Input;

/// A decoded input and the temporary files that must live until the prediction ends.
#[derive(Debug)]
pub struct DecodedInput {
    /// The input for the predictor: bytes, files, or the paths of temporary files.
    pub input: Input,
    files: InputFiles,
}

/// Temporary files holding decoded input, removed from disk when dropped: give them to the
/// request ([`PredictRequest::with_resource`]) so that they outlive the predictor, even past a
/// timeout.
#[derive(Debug, Default)]
pub struct InputFiles(Vec<TempPath>);

impl InputFiles {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl DecodedInput {
    /// The input and its temporary files.
    pub fn into_parts(self) -> (Input, InputFiles) {
        (self.input, self.files)
    }

    /// A request for the input that keeps its temporary files until the predictor is done.
    pub fn into_request(self) -> PredictRequest {
        let request = PredictRequest::new(self.input);
        if self.files.is_empty() {
            request
        } else {
            request.with_resource(self.files)
        }
    }
}

/// Decodes `value` (a Base64 string, or a list of them) as `mode` asks; with
/// [`FileInput::Off`], `value` is the input as it is.
pub fn decode_files(value: Value, mode: FileInput) -> Result<DecodedInput> {
    if mode == FileInput::Off {
        return Ok(DecodedInput {
            input: Input::Json(value),
            files: InputFiles::default(),
        });
    }
    let files = match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| decode_one(&item, Some(i)))
            .collect::<Result<Vec<_>>>()?,
        single => {
            let bytes = decode_one(&single, None)?;
            return single_file(bytes, mode);
        }
    };
    match mode {
        FileInput::Off | FileInput::Bytes => Ok(DecodedInput {
            input: Input::Files(files),
            files: InputFiles::default(),
        }),
        FileInput::TempFile => {
            let paths = files
                .iter()
                .map(|b| write_temp(b))
                .collect::<Result<Vec<_>>>()?;
            Ok(DecodedInput {
                input: Input::Json(Value::Array(paths.iter().map(path_value).collect())),
                files: InputFiles(paths),
            })
        }
    }
}

fn single_file(bytes: Bytes, mode: FileInput) -> Result<DecodedInput> {
    match mode {
        FileInput::Off | FileInput::Bytes => Ok(DecodedInput {
            input: Input::Bytes(bytes),
            files: InputFiles::default(),
        }),
        FileInput::TempFile => {
            let path = write_temp(&bytes)?;
            Ok(DecodedInput {
                input: Input::Json(path_value(&path)),
                files: InputFiles(vec![path]),
            })
        }
    }
}

fn decode_one(value: &Value, index: Option<usize>) -> Result<Bytes> {
    let which = index.map_or_else(|| "the file".to_owned(), |i| format!("file {i}"));
    let Value::String(text) = value else {
        return Err(Error::invalid_request(format!(
            "{which} must be a Base64 string, got {}",
            json_kind(value)
        )));
    };
    // Accept data URLs (`data:image/png;base64,...`) and line-wrapped Base64.
    let payload = text
        .split_once(";base64,")
        .map_or(text.as_str(), |(_, rest)| rest);
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let padded = pad(&compact);
    STANDARD
        .decode(&padded)
        .or_else(|standard| URL_SAFE.decode(&padded).map_err(|_| standard))
        .map(Bytes::from)
        .map_err(|e| Error::invalid_request(format!("{which} is not valid Base64: {e}")))
}

fn pad(text: &str) -> String {
    let missing = (4 - text.len() % 4) % 4;
    if missing == 3 {
        // Not a length Base64 can have; let the decoder say so.
        return text.to_owned();
    }
    format!("{text}{}", "=".repeat(missing))
}

fn write_temp(bytes: &[u8]) -> Result<TempPath> {
    let storage = |e: std::io::Error| Error::Storage {
        location: std::env::temp_dir().display().to_string(),
        source: e.into(),
    };
    let mut file = tempfile::Builder::new()
        .prefix("serving-input-")
        .tempfile()
        .map_err(storage)?;
    std::io::Write::write_all(&mut file, bytes).map_err(storage)?;
    Ok(file.into_temp_path())
}

fn path_value(path: &TempPath) -> Value {
    Value::String(path.display().to_string())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_one_or_many() {
        let one = decode_files(json!("aGVsbG8="), FileInput::Bytes).unwrap();
        assert_eq!(one.input, Input::Bytes(Bytes::from_static(b"hello")));
        let many = decode_files(
            json!(["aGk", "data:text/plain;base64,eW8="]),
            FileInput::Bytes,
        )
        .unwrap();
        assert_eq!(
            many.input,
            Input::Files(vec![Bytes::from_static(b"hi"), Bytes::from_static(b"yo")])
        );
    }

    #[test]
    fn temp_files_hold_the_bytes_and_are_removed() {
        let decoded = decode_files(json!("aGVsbG8="), FileInput::TempFile).unwrap();
        assert!(!decoded.files.is_empty());
        let Input::Json(Value::String(path)) = &decoded.input else {
            panic!("{:?}", decoded.input)
        };
        assert_eq!(std::fs::read(path).unwrap(), b"hello");
        let path = path.clone();
        drop(decoded);
        assert!(!std::path::Path::new(&path).exists());
    }

    #[test]
    fn off_keeps_the_value() {
        let decoded = decode_files(json!("aGVsbG8="), FileInput::Off).unwrap();
        assert_eq!(decoded.input, Input::Json(json!("aGVsbG8=")));
        assert!(decoded.into_parts().1.is_empty());
    }

    #[test]
    fn bad_base64_says_why() {
        let err = decode_files(json!("not base64!"), FileInput::Bytes)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not valid Base64"), "{err}");
        let err = decode_files(json!([1]), FileInput::Bytes).err().unwrap();
        assert!(
            err.to_string().contains("file 0 must be a Base64 string"),
            "{err}"
        );
    }
}
