//! [`PredictionRecord`]: what is recorded about every prediction, for every endpoint kind.

use std::collections::BTreeMap;
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
