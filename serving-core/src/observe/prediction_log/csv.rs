//! CSV export of predictions: one [`PredictionRow`] per line, with a header.
//!
//! Every cell that a spreadsheet would read as a formula (one starting with `=`, `+`, `-`,
//! `@`, a tab or a carriage return) is written with a leading `'`, as OWASP recommends
//! against CSV injection; so is a cell that starts with `'`, so that [`read_csv`] gives every
//! value back exactly by removing one leading `'`.

use std::borrow::Cow;
use std::io;

use super::row::PredictionRow;
use crate::error::{Error, Result};
use crate::observe::record::PredictionRecord;

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 12] = [
    "request_id",
    "endpoint",
    "model",
    "model_version",
    "status",
    "start_time",
    "elapsed_ms",
    "input",
    "output",
    "error",
    "metrics",
    "params",
];

/// Writes `records` as CSV with a header line ([`CSV_COLUMNS`]); JSON columns are quoted as
/// CSV requires, so rows parse back with any CSV reader (see [`read_csv`]).
pub fn write_csv<'a>(
    records: impl IntoIterator<Item = &'a PredictionRecord>,
    out: impl io::Write,
) -> Result<()> {
    // Headers are written by hand so that an empty export still names its columns.
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    writer.write_record(CSV_COLUMNS).map_err(csv_error)?;
    for record in records {
        write_row(&mut writer, record)?;
    }
    writer.flush().map_err(|e| csv_error(e.into()))
}

/// Writes one record as a CSV line, every cell neutralised.
pub(crate) fn write_row<W: io::Write>(
    writer: &mut csv::Writer<W>,
    record: &PredictionRecord,
) -> Result<()> {
    let row = PredictionRow::from(record);
    let (status, elapsed) = (row.status.to_string(), row.elapsed_ms.to_string());
    fn optional(text: &Option<String>) -> Cow<'_, str> {
        text.as_deref().map_or(Cow::Borrowed(""), neutralise)
    }
    writer
        .write_record(
            [
                neutralise(&row.request_id),
                neutralise(&row.endpoint),
                neutralise(&row.model),
                neutralise(&row.model_version),
                Cow::Borrowed(status.as_str()),
                neutralise(&row.start_time),
                neutralise(&elapsed),
                optional(&row.input),
                optional(&row.output),
                optional(&row.error),
                neutralise(&row.metrics),
                neutralise(&row.params),
            ]
            .iter()
            .map(|cell| cell.as_bytes()),
        )
        .map_err(csv_error)
}

/// Rows of a CSV export gathered into chunks for a channel: the sink of
/// [`PredictionLog::query_csv`](super::PredictionLog::query_csv).
pub(super) struct CsvChunks {
    writer: csv::Writer<Vec<u8>>,
    chunks: tokio::sync::mpsc::Sender<Result<bytes::Bytes>>,
}

/// About how many bytes a chunk holds.
const CHUNK_BYTES: usize = 64 << 10;

impl CsvChunks {
    /// A sink whose first chunk starts with the header.
    pub(super) fn new(chunks: tokio::sync::mpsc::Sender<Result<bytes::Bytes>>) -> Self {
        let mut writer = Self::writer();
        writer
            .write_record(CSV_COLUMNS)
            .expect("writing to memory succeeds");
        CsvChunks { writer, chunks }
    }

    fn writer() -> csv::Writer<Vec<u8>> {
        csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::with_capacity(CHUNK_BYTES + 4096))
    }

    /// Adds a record; sends a chunk once it is full. Called on the query's blocking thread,
    /// so waiting for the receiver to take a chunk blocks only the query.
    pub(super) fn push(&mut self, record: PredictionRecord) -> Result<()> {
        write_row(&mut self.writer, &record)?;
        if self.writer.get_ref().len() < CHUNK_BYTES {
            return Ok(());
        }
        let chunk = self.take()?;
        futures::executor::block_on(self.chunks.send(Ok(chunk)))
            .map_err(|_| Error::invalid_request("the CSV export's receiver is gone"))
    }

    /// Sends what is left.
    pub(super) async fn finish(mut self) {
        let last = self.take();
        let _ = self.chunks.send(last).await;
    }

    fn take(&mut self) -> Result<bytes::Bytes> {
        let full = std::mem::replace(&mut self.writer, Self::writer());
        let bytes = full
            .into_inner()
            .map_err(|e| csv_error(e.into_error().into()))?;
        Ok(bytes.into())
    }
}

/// `cell` with a leading `'` when a spreadsheet would read it as a formula, or when it starts
/// with `'` itself (so the quote is always the one added).
pub(crate) fn neutralise(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r' | b'\'') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// Reads CSV written by [`write_csv`] back into rows, removing the `'` that neutralised a cell.
pub fn read_csv(input: impl io::Read) -> Result<Vec<PredictionRow>> {
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers().map_err(csv_error)?.clone();
    reader
        .records()
        .map(|record| {
            let record = record.map_err(csv_error)?;
            let restored: csv::StringRecord = record
                .iter()
                .map(|cell| cell.strip_prefix('\'').unwrap_or(cell))
                .collect();
            restored
                .deserialize::<PredictionRow>(Some(&headers))
                .map_err(csv_error)
        })
        .collect()
}

fn csv_error(error: csv::Error) -> Error {
    Error::Storage {
        location: "CSV".to_owned(),
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    #[test]
    fn csv_round_trips_awkward_values() {
        let record = PredictionRecord {
            request_id: "r1".into(),
            endpoint: "iris".into(),
            model: "tree".into(),
            model_version: "2".into(),
            input: Some(json!(["a,b", "quote \" and\nnewline"])),
            output: Some(json!({"label": "setosa"})),
            error: None,
            status: 200,
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_636_800),
            elapsed_ms: 2.5,
            metrics: BTreeMap::from([("confidence".into(), 0.9)]),
            params: BTreeMap::new(),
        };
        let mut out = Vec::new();
        write_csv([&record, &record], &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(&CSV_COLUMNS.join(",")), "{text}");
        let rows = read_csv(out.as_slice()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(PredictionRecord::try_from(rows[0].clone()).unwrap(), record);

        let mut hostile = record.clone();
        hostile.request_id = "=HYPERLINK(\"http://evil\")".into();
        hostile.model_version = "'quoted".into();
        hostile.output = Some(json!(-1.5));
        hostile.error = Some("+cmd|' /C calc'!A0".into());
        hostile.params = BTreeMap::from([("k".into(), json!("@SUM(1)"))]);
        let mut out = Vec::new();
        write_csv([&hostile], &mut out).unwrap();
        let mut raw = csv::Reader::from_reader(out.as_slice());
        let cells: Vec<String> = raw
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        for cell in &cells {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell}"
            );
        }
        assert_eq!(cells[0], "'=HYPERLINK(\"http://evil\")");
        assert_eq!(cells[8], "'-1.5");
        let back = read_csv(out.as_slice()).unwrap();
        assert_eq!(
            PredictionRecord::try_from(back[0].clone()).unwrap(),
            hostile
        );

        let mut empty = Vec::new();
        write_csv([], &mut empty).unwrap();
        assert_eq!(
            String::from_utf8(empty).unwrap().trim(),
            CSV_COLUMNS.join(",")
        );
    }
}
