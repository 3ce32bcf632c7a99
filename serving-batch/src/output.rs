//! The output CSV: an [`OutputSink`] that writes each row with its prediction and error, in
//! input order, to a dataset file that appears only once complete.

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use serving_core::datasets::DatasetWriter;
use serving_core::runner::{OutputSink, Processed};
use serving_core::{OutputFormat, Result};
use std::sync::Arc;

use crate::run::Live;

/// Bytes of CSV gathered before they are handed to the store.
const FLUSH_BYTES: usize = 1 << 20;

/// A row as it travels through the runner: its cells as read (kept for the output) and its
/// typed values (for the `original` format).
#[derive(Debug)]
pub(crate) struct RowMeta {
    pub(crate) cells: Vec<String>,
    pub(crate) values: Option<Value>,
}

/// Where the CSV goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// A dataset file, written atomically.
    Dataset(DatasetWriter),
    /// Memory (the transport suite's harness reads it back).
    #[cfg_attr(not(test), allow(dead_code))]
    Memory(Vec<u8>),
}

/// Writes the output rows of one run.
#[derive(Debug)]
pub(crate) struct CsvOutput {
    csv: csv::Writer<Vec<u8>>,
    target: Target,
    format: OutputFormat,
    width: usize,
    id: Option<usize>,
    live: Arc<Live>,
}

impl CsvOutput {
    pub(crate) fn new(
        target: Target,
        format: OutputFormat,
        names: &[String],
        id: Option<usize>,
        prediction_column: &str,
        live: Arc<Live>,
    ) -> Result<Self> {
        let mut csv = new_writer();
        let header: Vec<&str> = match format {
            OutputFormat::Full => names
                .iter()
                .map(String::as_str)
                .chain([prediction_column, "error"])
                .collect(),
            OutputFormat::Original => vec!["input", "prediction"],
        };
        csv.write_record(&header).map_err(csv_error)?;
        Ok(CsvOutput {
            csv,
            target,
            format,
            width: names.len(),
            id,
            live,
        })
    }

    /// Writes one row: its cells, its prediction (or none) and its error (or none).
    pub(crate) async fn row(
        &mut self,
        mut meta: RowMeta,
        request_id: &str,
        result: std::result::Result<&Value, String>,
    ) -> Result<()> {
        let (prediction, error) = match &result {
            Ok(output) => (cell(output), String::new()),
            Err(error) => (String::new(), error.clone()),
        };
        match self.format {
            OutputFormat::Full => {
                if let Some(id) = self.id
                    && meta.cells.get(id).is_some_and(String::is_empty)
                {
                    // The source gave no id: hand back the one the row was recorded with.
                    meta.cells[id] = request_id.to_owned();
                }
                meta.cells.resize(self.width, String::new());
                self.csv
                    .write_record(
                        meta.cells
                            .iter()
                            .map(String::as_str)
                            .chain([prediction.as_str(), error.as_str()]),
                    )
                    .map_err(csv_error)?;
            }
            OutputFormat::Original => {
                let input = meta
                    .values
                    .map(|values| values.to_string())
                    .unwrap_or_else(|| serde_json::to_string(&meta.cells).unwrap_or_default());
                self.csv
                    .write_record([input.as_str(), prediction.as_str()])
                    .map_err(csv_error)?;
            }
        }
        self.live.count(result.ok());
        if self.csv.get_ref().len() >= FLUSH_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<()> {
        let full = std::mem::replace(&mut self.csv, new_writer());
        let bytes = full
            .into_inner()
            .map_err(|error| csv_error(error.into_error().into()))?;
        match &mut self.target {
            Target::Dataset(writer) => writer.write(Bytes::from(bytes)).await,
            Target::Memory(memory) => {
                memory.extend_from_slice(&bytes);
                Ok(())
            }
        }
    }

    /// Writes what is buffered and answers the target, not yet finished.
    pub(crate) async fn into_target(mut self) -> Result<Target> {
        self.hand_over().await?;
        Ok(self.target)
    }
}

fn new_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(FLUSH_BYTES + 4096))
}

fn cell(output: &Value) -> String {
    match output {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn csv_error(error: csv::Error) -> serving_core::Error {
    serving_core::Error::Storage {
        location: "the output CSV".to_owned(),
        source: Box::new(error),
    }
}

#[async_trait]
impl OutputSink<RowMeta> for CsvOutput {
    async fn write(&mut self, processed: Processed<RowMeta>) -> Result<()> {
        let result = match &processed.result {
            Ok(prediction) => Ok(&prediction.output),
            // The row's own problem, said without the wrapper.
            Err(serving_core::Error::InvalidRequest { reason }) if processed.refused => {
                Err(reason.clone())
            }
            Err(error) => Err(error.to_string()),
        };
        self.row(processed.meta, &processed.request_id, result)
            .await
    }
}
