//! [`BatchRuns`]: batch runs submitted, tracked, listed, cancelled and compared, whatever runs
//! them (`serving-batch` with polars), so that a transport (the web service's
//! `/api/v1/endpoints/{name}/batches`) can serve them without depending on the runner.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What a caller asks of a batch run: the original product's Batch Predict arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BatchRequest {
    /// The input CSV (with a header): a path inside `dataset`, or a local path when the
    /// runner allows local input.
    pub input_file: String,
    /// Where the output CSV goes: a relative path inside `dataset`.
    pub output_file: String,
    /// The dataset that holds the output (and the input, when it is a dataset file).
    pub dataset: String,
    /// The output's columns (`full` by default).
    #[serde(default)]
    pub output_format: OutputFormat,
    /// Replace an output that already exists (refused by default).
    #[serde(default)]
    pub overwrite: bool,
}

impl BatchRequest {
    /// A request to predict `input_file` into `output_file` of `dataset`.
    pub fn new(
        input_file: impl Into<String>,
        output_file: impl Into<String>,
        dataset: impl Into<String>,
    ) -> Self {
        BatchRequest {
            input_file: input_file.into(),
            output_file: output_file.into(),
            dataset: dataset.into(),
            output_format: OutputFormat::default(),
            overwrite: false,
        }
    }

    /// Writes the output in `format`.
    pub fn with_format(mut self, format: OutputFormat) -> Self {
        self.output_format = format;
        self
    }

    /// Replaces an existing output when `overwrite`.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

/// The columns of a batch run's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The input's columns, then `prediction`, then `error` (empty for good rows).
    #[default]
    Full,
    /// The original product's two columns: `input` (the row's values as a JSON array) and
    /// `prediction` (empty for failed rows).
    Original,
}

/// Where a batch run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Accepted, not started.
    Queued,
    /// Reading, predicting and writing.
    Running,
    /// Every row was read and its output written; the output is in the dataset.
    Succeeded,
    /// Stopped by an error (named in [`BatchRun::error`]); no output was written.
    Failed,
    /// Stopped on request; no output was written.
    Cancelled,
}

impl BatchStatus {
    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BatchStatus::Succeeded | BatchStatus::Failed | BatchStatus::Cancelled
        )
    }
}

/// Count, mean, min and max of one custom metric logged during a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricSummary {
    /// Samples logged.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl MetricSummary {
    /// The summary of one sample.
    pub fn of(value: f64) -> Self {
        MetricSummary {
            count: 1,
            mean: value,
            min: value,
            max: value,
        }
    }

    /// Adds a sample.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.mean += (value - self.mean) / self.count as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }
}

/// How a run's predictions are distributed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PredictionDistribution {
    /// No prediction yet.
    #[default]
    Empty,
    /// Numeric predictions.
    Numeric {
        /// How many.
        count: u64,
        /// Their mean.
        mean: f64,
        /// The smallest.
        min: f64,
        /// The largest.
        max: f64,
        /// Quantiles by name (`p05`, `p25`, `p50`, `p75`, `p95`), estimated from a bounded
        /// sample of the predictions.
        quantiles: BTreeMap<String, f64>,
    },
    /// Categorical predictions (strings, booleans, anything not a number).
    Categorical {
        /// How many times each value was predicted (its JSON text when not a string), for
        /// the first values seen up to a bound.
        counts: BTreeMap<String, u64>,
        /// Predictions of values past the bound.
        other: u64,
    },
}

/// One batch run, as tracked: stored beside the datasets, so it survives restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct BatchRun {
    /// Its id.
    pub id: String,
    /// The batch endpoint that ran it.
    pub endpoint: String,
    /// The model's name.
    pub model: String,
    /// The model's version.
    pub model_version: String,
    /// What was asked.
    pub request: BatchRequest,
    /// Where it is.
    pub status: BatchStatus,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When it was submitted (RFC 3339).
    pub submitted_at: String,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Rows read from the input so far.
    pub rows_read: u64,
    /// Rows predicted.
    pub rows_predicted: u64,
    /// Rows written with an error (cell that does not parse, failed prediction).
    pub rows_failed: u64,
    /// Rows written per second of the run so far.
    pub rows_per_second: f64,
    /// Seconds from the request to the first prediction: building the model included.
    pub cold_start_seconds: Option<f64>,
    /// The input's size in bytes, when known: with `rows_read`, the progress of a running run.
    pub input_bytes: Option<u64>,
    /// Bytes of the input read so far.
    pub bytes_read: u64,
    /// Custom metrics logged during the run (`log_metric`), by key.
    pub metrics: BTreeMap<String, MetricSummary>,
    /// How the predictions are distributed.
    pub predictions: PredictionDistribution,
    /// The output's location in the store, once written.
    pub output_location: Option<String>,
}

impl BatchRun {
    /// A queued run of `request` on `endpoint`.
    pub fn queued(
        id: impl Into<String>,
        endpoint: impl Into<String>,
        model: impl Into<String>,
        model_version: impl Into<String>,
        request: BatchRequest,
    ) -> Self {
        BatchRun {
            id: id.into(),
            endpoint: endpoint.into(),
            model: model.into(),
            model_version: model_version.into(),
            request,
            status: BatchStatus::Queued,
            error: None,
            submitted_at: crate::prediction_log::format_time(std::time::SystemTime::now()),
            started_at: None,
            finished_at: None,
            rows_read: 0,
            rows_predicted: 0,
            rows_failed: 0,
            rows_per_second: 0.0,
            cold_start_seconds: None,
            input_bytes: None,
            bytes_read: 0,
            metrics: BTreeMap::new(),
            predictions: PredictionDistribution::Empty,
            output_location: None,
        }
    }

    /// The fraction of the input read, from 0 to 1, when its size is known.
    pub fn progress(&self) -> Option<f64> {
        if self.status == BatchStatus::Succeeded {
            return Some(1.0);
        }
        let total = self.input_bytes.filter(|&total| total > 0)?;
        Some((self.bytes_read as f64 / total as f64).min(1.0))
    }
}

/// How many predictions differ between two runs over the same input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct PredictionDiff {
    /// The first run's id.
    pub a: String,
    /// The second run's id.
    pub b: String,
    /// Rows compared (both outputs, row by row).
    pub rows: u64,
    /// Rows whose predictions differ (a failed row differs from a predicted one).
    pub differing: u64,
}

impl PredictionDiff {
    /// `differing` of `rows` predictions differ between runs `a` and `b`.
    pub fn new(a: impl Into<String>, b: impl Into<String>, rows: u64, differing: u64) -> Self {
        PredictionDiff {
            a: a.into(),
            b: b.into(),
            rows,
            differing,
        }
    }
}

/// Runs side by side: their figures, and for each pair over the same input, how many
/// predictions differ (what a team checks before promoting a model version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct BatchComparison {
    /// The runs, in the order asked.
    pub runs: Vec<BatchRun>,
    /// One entry per pair of succeeded runs over the same input file.
    pub differences: Vec<PredictionDiff>,
}

impl BatchComparison {
    /// `runs` side by side, with the `differences` of the pairs over the same input.
    pub fn new(runs: Vec<BatchRun>, differences: Vec<PredictionDiff>) -> Self {
        BatchComparison { runs, differences }
    }
}

/// Batch runs of the endpoints one runner serves.
///
/// # Contract
/// - `submit` checks what it can at once (the endpoint exists, the dataset name and output
///   path are valid, the output does not exist unless `overwrite`) and answers the run's id
///   once its record is stored; the run then goes on in the background.
/// - Records survive a restart of the runner; a run that was running when the runner stopped
///   is reported as failed, never as running forever.
/// - `list` answers newest first; `get` of a running run shows its progress.
/// - `cancel` stops a queued or running run (no output is written) and answers its record;
///   cancelling a finished run changes nothing.
/// - An unknown endpoint is [`Error::EndpointNotFound`](crate::Error::EndpointNotFound), an
///   unknown run [`Error::BatchRunNotFound`](crate::Error::BatchRunNotFound).
#[async_trait]
pub trait BatchRuns: Debug + Send + Sync + 'static {
    /// Starts a run on `endpoint` and answers its id.
    async fn submit(&self, endpoint: &str, request: BatchRequest) -> Result<String>;

    /// The endpoint's runs, newest first.
    async fn list(&self, endpoint: &str) -> Result<Vec<BatchRun>>;

    /// One run, with its progress while it runs.
    async fn get(&self, endpoint: &str, id: &str) -> Result<BatchRun>;

    /// Cancels a run.
    async fn cancel(&self, endpoint: &str, id: &str) -> Result<BatchRun>;

    /// Runs side by side.
    async fn compare(&self, endpoint: &str, ids: &[String]) -> Result<BatchComparison>;
}

/// A shared [`BatchRuns`].
pub type DynBatchRuns = dyn BatchRuns;
