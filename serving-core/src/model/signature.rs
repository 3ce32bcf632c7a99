//! [`ModelSignature`]: the named, typed tensors a model takes and returns, as the Open
//! Inference Protocol's model metadata describes them.

use serde::{Deserialize, Serialize};

/// What a model takes and returns, declared in its spec. Optional: without it, Open Inference
/// Protocol requests pass their tensors in request order and outputs get inferred types.
///
/// With it, OIP input tensors are passed to the predictor in the declared order (matched by
/// name), and outputs take the declared names and data types.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSignature {
    /// The model's framework or backend, reported as OIP `platform`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// The inputs, in the order of the predictor's positional arguments.
    pub inputs: Vec<TensorSpec>,
    /// The outputs.
    pub outputs: Vec<TensorSpec>,
}

/// One named tensor: its OIP data type (`FP32`, `INT64`, `BYTES`, …) and shape, `-1` for a
/// dimension of any size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its element type, as the Open Inference Protocol spells it.
    pub datatype: String,
    /// Its shape; `-1` marks a variable dimension.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// A tensor named `name` of `datatype` and `shape`.
    pub fn new(name: impl Into<String>, datatype: impl Into<String>, shape: Vec<i64>) -> Self {
        TensorSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        }
    }
}
