//! The batch endpoint of `serving` (planned: only its configuration exists yet).
//!
//! It will sit at zero replicas until a batch arrives, read an input CSV, write an output CSV
//! with a `prediction` column beside the input, upload it to a dataset through `object_store`,
//! and record each batch run so runs can be listed and compared.
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

mod config;

pub use config::{BatchJobConfig, BatchJobKey};
