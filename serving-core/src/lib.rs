//! The core of `serving`: the traits every endpoint kind is built on, their always-on
//! in-memory implementations, and the one [`Error`] type.
//!
//! | Trait | What it is | In-memory implementation |
//! |---|---|---|
//! | [`Predictor`] | the user's predict function | [`predictor_fn`] over any typed function |
//! | [`Endpoint`] | a running endpoint: routes, records and measures requests | [`ModelEndpoint`] |
//! | — | model versions: update, canary, promote, rollback, shadow ([`Lifecycle`]) | per [`ModelEndpoint`] |
//! | [`MetricSink`] | where request measurements and custom metrics go | [`InMemoryMetrics`], [`ChartMetrics`] |
//! | [`MetricHistory`] | reads back the custom metrics a sink kept (canary rules, triggers) | [`InMemoryMetrics`] |
//! | [`RecordSink`] | where every prediction's record goes | [`InMemoryRecords`], [`prediction_log::PredictionLog`], [`TracingRecords`] |
//! | [`Autoscaler`] | how many replicas run | [`InMemoryAutoscaler`] |
//! | [`Trigger`] | watch a metric, fire an action | [`CallbackTrigger`] |
//! | [`FeedbackSink`] | where feedback loops export endpoint data | [`InMemoryFeedback`] |
//!
//! The [`prediction_log`] module keeps every prediction in segments on an object store (the
//! local filesystem by default) and reads them back by time range, model, version and status,
//! or as CSV.
//!
//! The [`runner`] module is the one path from a stream or a batch to `predict` (bounded,
//! back-pressured, ordered, drained on shutdown) and writes down what every transport owes
//! the endpoint, in [`runner::Runner`]'s `# Contract`.
//!
//! The [`setting`] module is how every settings type, here and in the backend crates, is set
//! from KEY-VALUE pairs and the environment: typed keys with aliases, an environment prefix,
//! errors that name the key and list the valid ones. Each backend owns its section of an
//! [`EndpointSpec`] ([`BackendSection`]), so adding a backend setting never touches the core.
//!
//! Backend crates (`serving-http`, `serving-kafka`, `serving-batch`, `serving-k8s`) implement
//! these traits for one technology each; the `serving` crate re-exports them behind features.
//!
//! ```
//! use serving_core::{predictor_fn, Endpoint, ModelEndpoint, PredictRequest, Result};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let sum = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
//! let endpoint = ModelEndpoint::builder("adder", sum).build()?;
//! let prediction = endpoint.predict(PredictRequest::new(json!([1.5, 2.0]))).await?;
//! assert_eq!(prediction.output, json!(3.5));
//! # Ok(()) }
//! ```
//!
//! # Features
//! | Name | Description | Default? |
//! |---|---|---|
//! | `conformance` | exports [`conformance`], the suites every trait implementation must pass | no |
//! | `openapi` | derives `utoipa::ToSchema` on the types the web service's API carries (for its OpenAPI document) | no |
//! | `prometheus` | [`observe::PrometheusMetrics`], the Prometheus exposition (`prometheus-client`) | no (`serving-http` turns it on) |
//!
//! # Shared by every transport
//! What a web service, a Kafka worker and a batch runner do alike lives here, not in a
//! transport crate, so that none needs another's dependencies (axum): [`Outcome`], how a
//! request ended, that every sink reads and each transport maps at its edge (an HTTP status in
//! `serving-http`); [`observe`], the sinks' wiring ([`Observability`]), Prometheus, the drain
//! sequence ([`Drain`]) and [`shutdown_signal`]; and [`wire`], the original product's request
//! format (`{"input_params": ...}`, Base64 files).

mod admission;
mod autoscale;
mod batching;
mod charts;
mod context;
mod endpoint;
mod environment;
mod error;
mod feedback;
mod function;
mod input;
mod lifecycle;
mod metrics;
pub mod observe;
mod outcome;
mod pool;
pub mod prediction_log;
mod predictor;
mod preprocess;
mod record;
mod record_sinks;
pub mod runner;
pub mod setting;
mod signature;
mod spec;
mod trigger;
pub mod wire;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use autoscale::{AutoscaleBounds, Autoscaler, DynAutoscaler, InMemoryAutoscaler};
pub use batching::{BATCH_SIZE_METRIC, BatchConfig, Batched};
pub use charts::{ChartMetrics, Charts, MetricChart, MetricPoint, RequestPoint, VersionChart};
pub use context::{Context, ContextParts, Logged, Resources, log_metric, log_param};
pub use endpoint::{
    Arrival, DynEndpoint, Endpoint, ModelEndpoint, ModelEndpointBuilder, PredictRequest,
    Prediction, Refused, new_request_id,
};
pub use error::{BoxError, Error, Result};
pub use feedback::{
    DynFeedbackSink, ExportReceipt, FeedbackExport, FeedbackSink, InMemoryFeedback,
};
pub use function::{
    ADAPTIVE_FAST, ADAPTIVE_PROBE_CALLS, ADAPTIVE_SLOW, FnPredictor, IntoOutput, PredictFn,
    predictor_fn,
};
pub use input::{Arg, Input};
pub use lifecycle::{
    CanaryDecision, CanaryEvaluation, CanaryMetric, CanaryPolicy, CanaryRule, CanaryStatus,
    Lifecycle, LifecycleAction, LifecycleEvent, LifecycleStatus, ModelRegistry, ModelUpdate,
    ModelVersion, RequestStats, RuleOutcome, ShadowComparison, ShadowStatus, Verdict, VersionState,
    VersionTraffic, outputs_agree,
};
pub use metrics::{
    DynMetricHistory, DynMetricSink, FanOut, InMemoryMetrics, MetricHistory, MetricSample,
    MetricSink, RequestEvent,
};
pub use observe::{Drain, Observability, shutdown_signal};
#[cfg(feature = "prometheus")]
pub use observe::{METRICS_CONTENT_TYPE, PrometheusMetrics};
pub use outcome::Outcome;
pub use pool::BlockingPool;
pub use predictor::{Capabilities, DynPredictor, Predictor, PredictorExt};
pub use preprocess::Preprocessed;
pub use record::{DynRecordSink, PredictionRecord, RecordSink, crop, crop_error, crop_text};
pub use record_sinks::{InMemoryRecords, PREDICTION_TARGET, RecordFanOut, TracingRecords};
pub use setting::{Setting, SettingKey, Settings};
pub use signature::{ModelSignature, TensorSpec};
pub use spec::{
    AuthSpec, BackendSection, EndpointKind, EndpointSpec, FileInput, LoggingSpec, ModelRef,
    ServerSettings, WorkerKey, WorkerSettings,
};
pub use trigger::{Alert, CallbackTrigger, Comparison, DynTrigger, Severity, Trigger, TriggerRule};

/// Re-exported so users need not depend on them to write predictors.
pub use {bytes::Bytes, serde_json::Value, serde_json::json};
