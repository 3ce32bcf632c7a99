//! [`PredictionRecord`]: what is recorded about every prediction, for every endpoint kind.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One prediction, as recorded in the prediction log and exported by feedback loops.
///
/// Failed predictions are recorded too: `output` is then `None` and `error` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// The request's id.
    pub request_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The model's name.
    pub model: String,
    /// The model version that answered.
    pub model_version: String,
    /// The input, unless input logging is off for the endpoint.
    pub input: Option<Value>,
    /// The output, unless output logging is off or the prediction failed.
    pub output: Option<Value>,
    /// Why the prediction failed.
    pub error: Option<String>,
    /// The outcome as an HTTP status.
    pub status: u16,
    /// When the request arrived.
    pub start_time: SystemTime,
    /// How long the prediction took, in milliseconds.
    pub elapsed_ms: f64,
    /// Custom metrics logged by user code during the prediction.
    pub metrics: BTreeMap<String, f64>,
    /// Parameters (tags) attached by user code.
    pub params: BTreeMap<String, Value>,
}

/// Receives one [`PredictionRecord`] per prediction, failures included.
///
/// # Contract
/// - `record` is called on the request path, once per prediction: it must not block or fail.
///   A sink that writes elsewhere queues the record; what it does when its queue is full is its
///   documented, counted choice, never unbounded memory.
pub trait RecordSink: Debug + Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: PredictionRecord);
}

/// A type-erased record sink.
pub type DynRecordSink = dyn RecordSink;

/// `value` as JSON, with strings (or, for other values, their JSON text) longer than
/// `max_chars` cropped to `max_chars` characters, as the original product crops log values.
pub fn crop(value: &Value, max_chars: usize) -> Value {
    match value {
        Value::String(text) if text.chars().count() > max_chars => {
            Value::String(text.chars().take(max_chars).collect())
        }
        Value::String(_) | Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
        composite => {
            let text = composite.to_string();
            if text.chars().count() > max_chars {
                Value::String(text.chars().take(max_chars).collect())
            } else {
                composite.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crops_long_values_only() {
        assert_eq!(crop(&json!("abcdef"), 3), json!("abc"));
        assert_eq!(crop(&json!([1, 2]), 10), json!([1, 2]));
        assert_eq!(crop(&json!([1, 2, 3]), 4), json!("[1,2"));
    }
}
