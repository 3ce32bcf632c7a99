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
//! | [`Trigger`] | watch a metric, fire an action (run by the endpoint: [`Lifecycle::add_trigger`]) | [`CallbackTrigger`]; `WebhookTrigger`, `EmailTrigger` with their features |
//! | [`FeedbackSink`] | where feedback loops export endpoint data | [`InMemoryFeedback`], [`DatasetFeedback`] |
//!
//! The [`prediction_log`] module keeps every prediction in segments on an object store (the
//! local filesystem by default) and reads them back by time range, model, version and status,
//! or as CSV.
//!
//! The [`datasets`] module maps dataset names to folders on an object store (the local
//! filesystem by default, S3 with the `s3` feature): batch runs and feedback loops read and
//! write files there, atomically.
//!
//! The [`batch_runs`] module holds what batch runs are to every transport: [`BatchRun`], its
//! [`BatchRequest`], and the [`BatchRuns`] trait (submit, list, get, cancel, compare) that
//! `serving-batch` implements and `serving-http` serves.
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
//! | `s3` | [`datasets::Datasets`] on S3 and S3-compatible stores (`s3://` URLs; object_store's `aws`) | no (`serving`'s `batch` feature turns it on) |
//! | `prometheus` | [`observe::PrometheusMetrics`], the Prometheus exposition (`prometheus-client`) | no (`serving-http` turns it on) |
//! | `email` | the email action of triggers, `EmailTrigger` (`lettre`, SMTP without TLS) | no (the `serving` facade's `http` turns it on) |
//! | `email-tls` | `smtps://` servers for the email action (rustls) | no |
//! | `webhook` | the webhook action of triggers, `WebhookTrigger` (`reqwest`, HMAC-SHA256 signature) | no (the `serving` facade's `http` turns it on) |
//! | `webhook-tls` | `https://` URLs for the webhook action (rustls) | no |
//!
//! # Shared by every transport
//! What a web service, a Kafka worker and a batch runner do alike lives here, not in a
//! transport crate, so that none needs another's dependencies (axum): [`Outcome`], how a
//! request ended, that every sink reads and each transport maps at its edge (an HTTP status in
//! `serving-http`); [`observe`], the sinks' wiring ([`Observability`]), Prometheus, the drain
//! sequence ([`Drain`]) and [`shutdown_signal`]; and [`wire`], the original product's request
//! format (`{"input_params": ...}`, Base64 files).

// The folders are the architecture: what a model is (`model`), how a request reaches it
// (`endpoint`, with the shared runner), how versions change under traffic (`lifecycle`), how it
// is seen (`observe`), what acts on it (`control`: scaling, triggers, feedback), how it is
// configured (`config`), and the wire format every transport reads (`wire`).
pub mod batch_runs;
mod config;
mod control;
pub mod datasets;
mod endpoint;
mod error;
mod lifecycle;
mod model;
pub mod observe;
mod outcome;
mod sync;
pub mod wire;

pub use config::setting;
pub use endpoint::runner;
pub use observe::prediction_log;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use batch_runs::{
    BatchComparison, BatchRequest, BatchRun, BatchRuns, BatchStatus, DynBatchRuns, MetricSummary,
    OutputFormat, PredictionDiff, PredictionDistribution,
};
pub use config::setting::{Setting, SettingKey, Settings};
pub use config::spec::{
    AuthSpec, BackendSection, EndpointKind, EndpointSpec, FileInput, LoggingSpec, ModelRef,
    ServerSettings, WorkerKey, WorkerSettings,
};
#[cfg(feature = "email")]
pub use control::actions::EmailTrigger;
pub use control::actions::{ActionKey, ActionSettings, ActionSpec, TriggerSpec};
#[cfg(feature = "webhook")]
pub use control::actions::{SIGNATURE_HEADER, WebhookTrigger};
pub use control::autoscale::{AutoscaleBounds, Autoscaler, DynAutoscaler, InMemoryAutoscaler};
pub use control::feedback::{
    DatasetFeedback, ExportFormat, ExportSummary, FeedbackLoopSpec, FeedbackLoopStatus,
    FeedbackLoops, FeedbackSchedule, LoopState,
};
pub use control::feedback::{
    DynFeedbackSink, ExportReceipt, FeedbackExport, FeedbackSink, InMemoryFeedback,
};
pub use control::trigger::{
    Alert, CallbackTrigger, Comparison, DynTrigger, Severity, Trigger, TriggerMetric, TriggerRule,
};
pub use control::triggers::{ALERTS_KEPT, AlertRecord, TriggerState, TriggerStatus};
pub use endpoint::{
    Arrival, DynEndpoint, Endpoint, ModelEndpoint, ModelEndpointBuilder, PredictRequest,
    Prediction, Refused, new_request_id,
};
pub use error::{BoxError, Error, Result};
pub use lifecycle::{
    CanaryDecision, CanaryEvaluation, CanaryMetric, CanaryPolicy, CanaryRule, CanaryStatus,
    Lifecycle, LifecycleAction, LifecycleEvent, LifecycleStatus, ModelRegistry, ModelUpdate,
    ModelVersion, RequestStats, RuleOutcome, ShadowComparison, ShadowStatus, Verdict, VersionState,
    VersionTraffic, outputs_agree,
};
pub use model::batching::{BATCH_SIZE_METRIC, BatchConfig, Batched};
pub use model::context::{Context, ContextParts, Logged, Resources, log_metric, log_param};
pub use model::function::{
    ADAPTIVE_FAST, ADAPTIVE_PROBE_CALLS, ADAPTIVE_SLOW, FnPredictor, IntoOutput, PredictFn,
    predictor_fn,
};
pub use model::input::{Arg, Input};
pub use model::pool::BlockingPool;
pub use model::predictor::{Capabilities, DynPredictor, Predictor, PredictorExt};
pub use model::preprocess::Preprocessed;
pub use model::signature::{ModelSignature, TensorSpec};
pub use observe::charts::{
    ChartMetrics, Charts, MetricChart, MetricPoint, RequestPoint, VersionChart,
};
pub use observe::metrics::{
    DynMetricHistory, DynMetricSink, FanOut, InMemoryMetrics, MetricHistory, MetricSample,
    MetricSink, RequestEvent,
};
pub use observe::record::{
    DynRecordSink, PredictionRecord, RecordSink, SinkReady, crop, crop_error, crop_text,
};
pub use observe::record_sinks::{InMemoryRecords, PREDICTION_TARGET, RecordFanOut, TracingRecords};
pub use observe::{Drain, Observability, shutdown_signal};
#[cfg(feature = "prometheus")]
pub use observe::{METRICS_CONTENT_TYPE, PrometheusMetrics};
pub use outcome::Outcome;

/// Re-exported so users need not depend on them to write predictors.
pub use {bytes::Bytes, serde_json::Value, serde_json::json};
