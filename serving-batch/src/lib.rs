//! The batch endpoint of `serving`: CSV in, predictions out to a dataset, every run tracked
//! and comparable.
//!
//! A batch endpoint sits at zero replicas until a run arrives. A run ([`BatchRequest`]: an
//! `input_file`, an `output_file` and a `dataset`) builds the endpoint's model (from the
//! [`ModelRegistry`](serving_core::ModelRegistry) factory, or a [`ChunkPredictor`] factory),
//! scales the endpoint 0 → 1, reads the input CSV in chunks of
//! [`BatchJobConfig::chunk_rows`] rows (memory stays bounded whatever the file's size),
//! predicts every row, writes the output CSV to the dataset, drops the model and scales back
//! to 0.
//!
//! - **Rows are arguments.** Each row's values, in column order, are the predictor's
//!   positional arguments (the original script's `input_params`), typed by column: a column
//!   of numbers reaches an `f64` argument, `true`/`false` a `bool`, anything else a `String`
//!   ([`BatchJobConfig::row_input`] `object` passes one object keyed by column name). With
//!   the spec's `files` on, Base64 cells are decoded before predict, as the web service does.
//! - **Output.** The input's columns, then `prediction`, then `error` (empty for good rows);
//!   [`OutputFormat::Original`] writes the original script's `input,prediction`. A row whose
//!   cell does not parse, whose cell count is wrong, or whose prediction fails (a panic
//!   included) is written with its error and counted; the run goes on.
//! - **Two paths, declared.** Any [`Predictor`](serving_core::Predictor) runs row-wise
//!   through the endpoint's
//!   [`ModelEndpoint::predict_chunk`](serving_core::ModelEndpoint::predict_chunk): each row
//!   its own prediction (outcome, record, metrics, canary routing), one task per chunk
//!   rather than per row, chunks on all cores (up to the endpoint's concurrency), output in
//!   input order; it passes the transport suite. A [`ChunkPredictor`] is called once per
//!   chunk with a polars `DataFrame`, in input order, while chunks are parsed and written on
//!   all cores; each row counts as a request in the service's metrics.
//! - **Logged.** Failed rows (up to [`BatchJobConfig::failed_rows_logged`]) are recorded in
//!   the prediction log on both paths; [`BatchJobConfig::log_every_row`] records every row
//!   (the benchmark reports what it costs).
//! - **Atomic output.** The output appears in the dataset only once complete (one write, or a
//!   multipart upload completed at the end); a run that fails, is cancelled or crashes leaves
//!   nothing, and running it again completes it. An existing output is kept unless the
//!   request asks to overwrite it.
//! - **Tracked.** Each run's [`BatchRun`] record (status, rows read, predicted and failed,
//!   rows/s, cold start, custom metrics, the distribution of predictions) is stored under
//!   `<datasets root>/.serving/batch-runs/<endpoint>/<id>.json` and survives restarts;
//!   [`BatchService`] implements [`BatchRuns`] (submit, list, get, cancel, compare), which the
//!   web service serves over REST.
//!
//! ```
//! use std::sync::Arc;
//! use serving_batch::{BatchJobConfig, BatchService};
//! use serving_core::datasets::{Datasets, Overwrite};
//! use serving_core::{
//!     predictor_fn, BatchRequest, BatchStatus, Bytes, EndpointSpec, ModelRef, ModelRegistry,
//!     Result,
//! };
//!
//! # #[tokio::main] async fn main() -> Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let datasets = Datasets::local(dir.path())?; // or Datasets::from_env()
//! datasets
//!     .dataset("flowers")?
//!     .put("in.csv", Bytes::from("a,b\n1,2\n3,4.5\n"), Overwrite::Refuse)
//!     .await?;
//!
//! let registry = Arc::new(ModelRegistry::new());
//! registry.register("adder", "1", || {
//!     Ok(predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) }))
//! });
//! let mut spec = EndpointSpec::new("nightly", ModelRef::new("adder", "1"));
//! spec.kind = BatchJobConfig::default().into();
//! let service = BatchService::builder(datasets.clone())
//!     .registry(registry)
//!     .endpoint(spec)?
//!     .build()?;
//!
//! let run = service
//!     .run("nightly", BatchRequest::new("in.csv", "out/predictions.csv", "flowers"))
//!     .await?;
//! assert_eq!(run.status, BatchStatus::Succeeded);
//! assert_eq!((run.rows_predicted, run.rows_failed), (2, 0));
//! let output = datasets.dataset("flowers")?.get("out/predictions.csv").await?;
//! assert_eq!(output, "a,b,prediction,error\n1,2,3.0,\n3,4.5,7.5,\n");
//! # Ok(()) }
//! ```
//!
//! Its settings are [`BatchJobConfig`]: the `batch` section of an
//! [`EndpointSpec`](serving_core::EndpointSpec), KEY-VALUE pairs, or `SERVING_BATCH_*`
//! environment variables. This crate owns that section: a new batch setting is a field here,
//! never a change to the core.
//!
//! ```
//! use serving_core::EndpointSpec;
//! use serving_batch::BatchJobConfig;
//!
//! let spec = EndpointSpec::from_yaml(
//!     "name: nightly\nmodel: {name: tree, version: '1'}\nkind: {type: batch, chunk_rows: 500}\n",
//! )?;
//! let config = BatchJobConfig::from_spec(&spec)?;
//! assert_eq!(config.chunk_rows, 500);
//! assert_eq!(config.prediction_column, "prediction");
//! # Ok::<(), serving_core::Error>(())
//! ```

mod chunk;
mod config;
mod output;
mod records;
mod rows;
mod run;
mod service;
mod source;
mod stats;
mod store;
mod workers;

pub use chunk::{ChunkPredictor, DynChunkPredictor, polars_error, sum_columns};
pub use config::{BatchJobConfig, BatchJobKey, RowInput};
/// The polars crate the [`ChunkPredictor`] chunks come from, to build and read them with the
/// same version.
pub use polars;
pub use service::{BatchService, BatchServiceBuilder};
pub use serving_core::{BatchRequest, BatchRun, BatchRuns, BatchStatus, OutputFormat};

#[cfg(test)]
mod tests;
