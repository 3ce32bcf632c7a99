//! The output CSV: the header, then each chunk's rows (written on the chunk's thread) in
//! input order, to a dataset file that appears only once complete.

use bytes::Bytes;
use serde_json::Value;
use serving_core::datasets::DatasetWriter;
use serving_core::{OutputFormat, Result};

/// Bytes of CSV gathered before they are handed to the store.
const FLUSH_BYTES: usize = 1 << 20;

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
    buffer: Vec<u8>,
    target: Target,
}

impl CsvOutput {
    pub(crate) fn new(
        target: Target,
        format: OutputFormat,
        names: &[String],
        prediction_column: &str,
    ) -> Result<Self> {
        let header: Vec<&str> = match format {
            OutputFormat::Full => names
                .iter()
                .map(String::as_str)
                .chain([prediction_column, "error"])
                .collect(),
            OutputFormat::Original => vec!["input", "prediction"],
        };
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::with_capacity(FLUSH_BYTES + 4096));
        csv.write_record(&header).map_err(csv_error)?;
        let buffer = csv
            .into_inner()
            .map_err(|error| csv_error(error.into_error().into()))?;
        Ok(CsvOutput { buffer, target })
    }

    /// Appends rows already written as CSV (a chunk's, written on another thread); the rows
    /// are counted by whoever wrote them.
    pub(crate) async fn append(&mut self, rows: &[u8]) -> Result<()> {
        self.buffer.extend_from_slice(rows);
        if self.buffer.len() >= FLUSH_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<()> {
        let bytes = std::mem::replace(&mut self.buffer, Vec::with_capacity(FLUSH_BYTES + 4096));
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

/// A prediction as its output cell: text as is, anything else as JSON.
pub(crate) fn text_of(output: &Value) -> String {
    match output {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn csv_error(error: csv::Error) -> serving_core::Error {
    serving_core::Error::Storage {
        location: "the output CSV".to_owned(),
        source: Box::new(error),
    }
}
