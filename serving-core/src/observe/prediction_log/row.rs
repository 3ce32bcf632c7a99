//! [`PredictionRow`]: one prediction as a flat row of scalars, the shape of segment lines and
//! CSV rows.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::observe::record::PredictionRecord;

/// One prediction as stored: every column a scalar, so that segments scan as a table (for
/// example with `polars.scan_ndjson`) and rows export as CSV unchanged.
///
/// `input`, `output`, `metrics` and `params` hold JSON text; `start_time` is RFC 3339 in UTC
/// with microseconds, so it sorts as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    /// The request's id.
    pub request_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The model's name.
    pub model: String,
    /// The model version that answered.
    pub model_version: String,
    /// The outcome as an HTTP status.
    pub status: u16,
    /// When the request arrived, RFC 3339 in UTC.
    pub start_time: String,
    /// How long the prediction took, in milliseconds.
    pub elapsed_ms: f64,
    /// The input as JSON text, unless input logging is off.
    pub input: Option<String>,
    /// The output as JSON text, unless output logging is off or the prediction failed.
    pub output: Option<String>,
    /// Why the prediction failed.
    pub error: Option<String>,
    /// Custom metrics as a JSON object.
    pub metrics: String,
    /// Parameters (tags) as a JSON object.
    pub params: String,
}

impl From<&PredictionRecord> for PredictionRow {
    fn from(record: &PredictionRecord) -> Self {
        PredictionRow {
            request_id: record.request_id.clone(),
            endpoint: record.endpoint.clone(),
            model: record.model.clone(),
            model_version: record.model_version.clone(),
            status: record.status,
            start_time: format_time(record.start_time),
            elapsed_ms: record.elapsed_ms,
            input: record.input.as_ref().map(Value::to_string),
            output: record.output.as_ref().map(Value::to_string),
            error: record.error.clone(),
            metrics: serde_json::to_string(&record.metrics).expect("a map of floats serializes"),
            params: serde_json::to_string(&record.params).expect("a map of values serializes"),
        }
    }
}

/// A [`PredictionRow`] that borrows its record: the same JSON, written without copying the
/// record's text first (every prediction is encoded through it).
#[derive(Serialize)]
pub(super) struct RowRef<'a> {
    request_id: &'a str,
    endpoint: &'a str,
    model: &'a str,
    model_version: &'a str,
    status: u16,
    start_time: TimeText,
    elapsed_ms: f64,
    input: Option<JsonText<'a, Value>>,
    output: Option<JsonText<'a, Value>>,
    error: Option<&'a str>,
    metrics: JsonText<'a, BTreeMap<String, f64>>,
    params: JsonText<'a, BTreeMap<String, Value>>,
}

impl<'a> From<&'a PredictionRecord> for RowRef<'a> {
    fn from(record: &'a PredictionRecord) -> Self {
        RowRef {
            request_id: &record.request_id,
            endpoint: &record.endpoint,
            model: &record.model,
            model_version: &record.model_version,
            status: record.status,
            start_time: TimeText(record.start_time),
            elapsed_ms: record.elapsed_ms,
            input: record.input.as_ref().map(JsonText),
            output: record.output.as_ref().map(JsonText),
            error: record.error.as_deref(),
            metrics: JsonText(&record.metrics),
            params: JsonText(&record.params),
        }
    }
}

thread_local! {
    /// Where [`JsonText`] and [`TimeText`] encode a column before it is written as a string:
    /// reused, so that encoding a row allocates nothing once the buffers have grown.
    static COLUMN: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

/// A value serialized as a string holding its JSON text.
struct JsonText<'a, T>(&'a T);

impl<T: Serialize> Serialize for JsonText<'_, T> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        // Encoded whole first: streaming it through `collect_str` cost more in `fmt` calls
        // than the copy. A value holds no row, so the buffer is never borrowed twice.
        COLUMN.with_borrow_mut(|(json, _)| {
            json.clear();
            serde_json::to_writer(&mut *json, self.0).map_err(serde::ser::Error::custom)?;
            let text = std::str::from_utf8(json).map_err(serde::ser::Error::custom)?;
            serializer.serialize_str(text)
        })
    }
}

/// A time serialized as [`format_time`] writes it.
struct TimeText(SystemTime);

impl Serialize for TimeText {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        COLUMN.with_borrow_mut(|(_, text)| {
            text.clear();
            write_time(self.0, text);
            serializer.serialize_str(text)
        })
    }
}

impl TryFrom<PredictionRow> for PredictionRecord {
    type Error = Error;

    fn try_from(row: PredictionRow) -> Result<Self> {
        let json = |column: &str, text: &str| {
            serde_json::from_str::<Value>(text).map_err(|e| {
                Error::invalid_request(format!(
                    "column `{column}` of prediction {} is not JSON: {e}",
                    row.request_id
                ))
            })
        };
        // Values nested deeper than serde_json reads (128) were recorded, as any value, by
        // their JSON text: they are shown as that text rather than hidden.
        let value = |text: &str| {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        };
        let input = row.input.as_deref().map(value);
        let output = row.output.as_deref().map(value);
        let metrics: BTreeMap<String, f64> = serde_json::from_value(json("metrics", &row.metrics)?)
            .map_err(|e| Error::invalid_request(format!("column `metrics`: {e}")))?;
        let params: BTreeMap<String, Value> = serde_json::from_value(json("params", &row.params)?)
            .map_err(|e| Error::invalid_request(format!("column `params`: {e}")))?;
        Ok(PredictionRecord {
            start_time: parse_time(&row.start_time)?,
            request_id: row.request_id,
            endpoint: row.endpoint,
            model: row.model,
            model_version: row.model_version,
            input,
            output,
            error: row.error,
            status: row.status,
            elapsed_ms: row.elapsed_ms,
            metrics,
            params,
        })
    }
}

/// `time` as RFC 3339 in UTC with microseconds, for example `2026-05-01T12:00:00.123456Z`.
pub fn format_time(time: SystemTime) -> String {
    let mut text = String::with_capacity(27);
    write_time(time, &mut text);
    text
}

/// Appends `time` as [`format_time`] writes it.
fn write_time(time: SystemTime, text: &mut String) {
    // Every prediction is stamped, and the text up to the second changes once a second: it is
    // formatted by chrono once per second and thread, and the microseconds are appended.
    thread_local! {
        static LAST_SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let micros = micros(time);
    if micros <= 0 || micros == i64::MAX {
        text.push_str(&DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Micros, true));
        return;
    }
    let (second, fraction) = (micros / 1_000_000, micros % 1_000_000);
    LAST_SECOND.with_borrow_mut(|(last, prefix)| {
        if *last != second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second.unsigned_abs());
            *prefix = DateTime::<Utc>::from(whole).to_rfc3339_opts(SecondsFormat::Secs, true);
            prefix.pop(); // the `Z`
            *last = second;
        }
        text.push_str(prefix);
        text.push('.');
        for place in [100_000, 10_000, 1_000, 100, 10, 1] {
            text.push(char::from(b'0' + (fraction / place % 10) as u8));
        }
        text.push('Z');
    })
}

/// Parses a time given as RFC 3339 (`2026-05-01T12:00:00Z`) or as seconds since the Unix
/// epoch (`1777636800`, `1777636800.5`), as the original SDK's `start_time`/`end_time`.
///
/// # Errors
/// [`Error::InvalidRequest`] for other text, and for times outside the years 1970 to 9999
/// (which no prediction has, and which some clocks and calendars cannot represent).
pub fn parse_time(text: &str) -> Result<SystemTime> {
    /// 9999-12-31T23:59:59Z, the latest time RFC 3339 can write.
    const LATEST: f64 = 253_402_300_799.0;
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && (0.0..=LATEST).contains(&seconds) {
            return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds));
        }
        return Err(Error::invalid_request(format!(
            "`{text}` is out of range: times are between 1970 and 9999"
        )));
    }
    DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|e| {
            Error::invalid_request(format!(
                "`{text}` is neither RFC 3339 nor seconds since the epoch: {e}"
            ))
        })
}

/// Microseconds since the Unix epoch (0 before it).
pub(crate) fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, at: SystemTime) -> PredictionRecord {
        PredictionRecord {
            request_id: id.into(),
            endpoint: "iris".into(),
            model: "tree".into(),
            model_version: "2".into(),
            input: Some(json!([1.5, "a,\"b\"\n"])),
            output: None,
            error: Some("input rejected: no".into()),
            status: 422,
            start_time: at,
            elapsed_ms: 1.25,
            metrics: BTreeMap::from([("confidence".into(), 0.5)]),
            params: BTreeMap::from([("tag".into(), json!({"k": 1}))]),
        }
    }

    #[test]
    fn borrowed_rows_encode_exactly_as_rows() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_777_636_800_123_456);
        let mut unicode = record("r\u{e9}2", at);
        unicode.output = Some(json!({"label": "caf\u{e9} \u{1f600}", "p": [0.1, 1e300]}));
        for original in [record("r1", at), unicode] {
            let borrowed = serde_json::to_string(&RowRef::from(&original)).unwrap();
            let owned = serde_json::to_string(&PredictionRow::from(&original)).unwrap();
            assert_eq!(borrowed, owned);
        }
    }

    #[test]
    fn rows_round_trip_to_records() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_777_636_800_123_456);
        let original = record("r1", at);
        let row = PredictionRow::from(&original);
        assert_eq!(row.start_time, "2026-05-01T12:00:00.123456Z");
        assert_eq!(row.input.as_deref(), Some(r#"[1.5,"a,\"b\"\n"]"#));
        assert_eq!(PredictionRecord::try_from(row).unwrap(), original);
    }

    #[test]
    fn values_too_deep_to_read_back_are_shown_as_their_text() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_777_636_800_123_456);
        let mut deep = record("r1", at);
        let mut value = json!(1);
        for _ in 0..200 {
            value = json!([value]);
        }
        deep.input = Some(value);
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let line = serde_json::to_string(&RowRef::from(&deep)).unwrap();
        let row: PredictionRow = serde_json::from_str(&line).unwrap();
        let back = PredictionRecord::try_from(row).unwrap();
        assert_eq!(back.input, Some(Value::String(text)));
    }

    #[test]
    fn times_parse_as_rfc3339_or_epoch_seconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_636_800);
        assert_eq!(parse_time("1777636800").unwrap(), at);
        assert_eq!(parse_time("2026-05-01T12:00:00Z").unwrap(), at);
        assert_eq!(parse_time("2026-05-01T14:00:00+02:00").unwrap(), at);
        assert!(parse_time("yesterday").is_err());
        for out_of_range in ["1e300", "-1", "inf", "NaN", "253402300800"] {
            let error = parse_time(out_of_range).unwrap_err().to_string();
            assert!(error.contains("out of range"), "{out_of_range}: {error}");
        }
        assert_eq!(micros(at), 1_777_636_800_000_000);
    }

    #[test]
    fn times_format_as_chrono_does() {
        let chrono =
            |t: SystemTime| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Micros, true);
        let base = SystemTime::UNIX_EPOCH + Duration::from_micros(1_777_636_799_000_000);
        for offset_us in [0, 1, 999_999, 1_000_000, 1_000_007, 86_400_123_456, 0] {
            let at = base + Duration::from_micros(offset_us);
            assert_eq!(format_time(at), chrono(at));
        }
        for at in [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        ] {
            assert_eq!(format_time(at), chrono(at));
        }
    }
}
