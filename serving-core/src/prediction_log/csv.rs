//! CSV export of predictions: one [`PredictionRow`] per line, with a header.

use std::io;

use super::row::PredictionRow;
use crate::error::{Error, Result};
use crate::record::PredictionRecord;

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
        writer
            .serialize(PredictionRow::from(record))
            .map_err(csv_error)?;
    }
    writer.flush().map_err(|e| csv_error(e.into()))
}

/// Reads CSV written by [`write_csv`] back into rows.
pub fn read_csv(input: impl io::Read) -> Result<Vec<PredictionRow>> {
    csv::Reader::from_reader(input)
        .deserialize()
        .collect::<Result<Vec<PredictionRow>, _>>()
        .map_err(csv_error)
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

        let mut empty = Vec::new();
        write_csv([], &mut empty).unwrap();
        assert_eq!(
            String::from_utf8(empty).unwrap().trim(),
            CSV_COLUMNS.join(",")
        );
    }
}
