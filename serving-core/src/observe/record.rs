//! [`PredictionRecord`]: what is recorded about every prediction, for every endpoint kind.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{BoxError, Error};

/// One prediction, as recorded in the prediction log and exported by feedback loops.
///
/// Failed predictions are recorded too: `output` is then `None` and `error` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// The request's id.
    pub request_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The model's name.
    pub model: String,
    /// The model version that answered.
    pub model_version: String,
    /// The input, unless input logging is off for the endpoint.
    pub input: Option<Value>,
    /// The output, unless output logging is off or the prediction failed.
    pub output: Option<Value>,
    /// Why the prediction failed.
    pub error: Option<String>,
    /// The outcome as an HTTP status.
    pub status: u16,
    /// When the request arrived.
    pub start_time: SystemTime,
    /// How long the prediction took, in milliseconds.
    pub elapsed_ms: f64,
    /// Custom metrics logged by user code during the prediction.
    pub metrics: BTreeMap<String, f64>,
    /// Parameters (tags) attached by user code.
    pub params: BTreeMap<String, Value>,
}

/// Receives one [`PredictionRecord`] per prediction, failures included.
///
/// # Contract
/// - `record` is called on the request path, once per prediction, from many threads at once:
///   it must not block or fail. A sink that writes elsewhere queues the record; what it does
///   when its queue is full is its documented, counted choice, never unbounded memory.
/// - What a sink keeps or writes, it keeps once per record taken, with the fields as given (a
///   log line may leave out custom metrics and parameters), in any order.
///   `conformance::record_sink` (feature `conformance`) checks this.
/// - [`ready`](RecordSink::ready)`(n)` resolves once a sink that queues has room for `n` more
///   records (at most its queue's size); a producer that would rather wait than lose records (a
///   batch run that logs every row) awaits it before each burst. A sink that never drops is
///   always ready (the default).
pub trait RecordSink: Debug + Send + Sync + 'static {
    /// Takes one record.
    fn record(&self, record: PredictionRecord);

    /// Whether the sink would keep the record of a prediction that failed (`failed`) or
    /// succeeded: asked before the record is made, so that an endpoint makes none a sink would
    /// drop (a batch run keeps only failed rows, up to a bound). A hint, not a promise: a
    /// record it says it keeps may still be dropped when taken. Every record by default.
    fn keeps(&self, failed: bool) -> bool {
        let _ = failed;
        true
    }

    /// Resolves when the sink can take `records` more without dropping any.
    fn ready(&self, records: usize) -> SinkReady<'_> {
        let _ = records;
        Box::pin(std::future::ready(()))
    }
}

/// What [`RecordSink::ready`] returns.
pub type SinkReady<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// A type-erased record sink.
pub type DynRecordSink = dyn RecordSink;

#[deny(clippy::missing_trait_methods)]
impl<S: RecordSink + ?Sized> RecordSink for std::sync::Arc<S> {
    fn record(&self, record: PredictionRecord) {
        (**self).record(record)
    }

    fn keeps(&self, failed: bool) -> bool {
        (**self).keeps(failed)
    }

    fn ready(&self, records: usize) -> SinkReady<'_> {
        (**self).ready(records)
    }
}

#[deny(clippy::missing_trait_methods)]
impl<S: RecordSink + ?Sized> RecordSink for Box<S> {
    fn record(&self, record: PredictionRecord) {
        (**self).record(record)
    }

    fn keeps(&self, failed: bool) -> bool {
        (**self).keeps(failed)
    }

    fn ready(&self, records: usize) -> SinkReady<'_> {
        (**self).ready(records)
    }
}

/// `value` as JSON, with strings (or, for other values, their JSON text) longer than
/// `max_chars` cropped to `max_chars` characters, as the original product crops log values.
pub fn crop(value: &Value, max_chars: usize) -> Value {
    match value {
        // A string of at most `max_chars` bytes has at most that many characters.
        Value::String(text) if text.len() > max_chars && text.chars().count() > max_chars => {
            Value::String(text.chars().take(max_chars).collect())
        }
        Value::String(_) | Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
        composite if json_chars_at_most(composite, max_chars) => composite.clone(),
        composite => Value::String(composite.to_string().chars().take(max_chars).collect()),
    }
}

/// [`crop`] of a value the caller owns: kept as it is, without a copy, when it is short
/// enough (the input of a byte-payload request, made for its record).
pub fn crop_owned(value: Value, max_chars: usize) -> Value {
    match &value {
        Value::String(text) if text.len() <= max_chars => value,
        Value::Null | Value::Bool(_) | Value::Number(_) => value,
        composite if !composite.is_string() && json_chars_at_most(composite, max_chars) => value,
        _ => crop(&value, max_chars),
    }
}

/// `text` cropped to `max_chars` characters, as [`crop`] crops a string.
pub fn crop_text(text: &str, max_chars: usize) -> &str {
    // A text of at most `max_chars` bytes has at most that many characters.
    if text.len() <= max_chars {
        return text;
    }
    text.char_indices()
        .nth(max_chars)
        .map_or(text, |(end, _)| &text[..end])
}

/// `error` with its texts cropped to `max_chars` characters each, as [`crop`] crops logged
/// values: an error that quotes its input (a 15 MB string that is not a number) must not
/// carry it whole into answers, log lines and the prediction log. Endpoints crop every error
/// with their [`LoggingSpec::max_value_chars`](crate::LoggingSpec::max_value_chars) before
/// anyone sees it.
pub fn crop_error(error: Error, max_chars: usize) -> Error {
    let text = |text: String| {
        let kept = crop_text(&text, max_chars).len();
        if kept == text.len() {
            text
        } else {
            text[..kept].to_owned()
        }
    };
    let source = |source: BoxError| -> BoxError {
        let shown = source.to_string();
        let kept = crop_text(&shown, max_chars).len();
        if kept == shown.len() {
            source
        } else {
            shown[..kept].to_owned().into()
        }
    };
    match error {
        Error::InvalidRequest { reason } => Error::InvalidRequest {
            reason: text(reason),
        },
        Error::InvalidArgument {
            position,
            expected,
            reason,
        } => Error::InvalidArgument {
            position,
            expected,
            reason: text(reason),
        },
        Error::Rejected { reason } => Error::Rejected {
            reason: text(reason),
        },
        Error::Predictor { source: inner } => Error::Predictor {
            source: source(inner),
        },
        Error::Panicked { message } => Error::Panicked {
            message: text(message),
        },
        Error::Conflict { endpoint, reason } => Error::Conflict {
            endpoint,
            reason: text(reason),
        },
        Error::EndpointNotFound { endpoint } => Error::EndpointNotFound {
            endpoint: text(endpoint),
        },
        Error::VersionNotFound { endpoint, version } => Error::VersionNotFound {
            endpoint,
            version: text(version),
        },
        Error::UnsupportedMediaType { content_type } => Error::UnsupportedMediaType {
            content_type: text(content_type),
        },
        Error::Action {
            action,
            source: inner,
        } => Error::Action {
            action,
            source: source(inner),
        },
        Error::Storage {
            location,
            source: inner,
        } => Error::Storage {
            location,
            source: source(inner),
        },
        other => other,
    }
}

/// Whether `value`'s JSON text has at most `limit` characters, found without building the
/// text: this runs on the request path for every recorded input.
fn json_chars_at_most(value: &Value, limit: usize) -> bool {
    if json_chars_bound(value, limit).is_some() {
        return true;
    }
    json_chars_counted(value, limit)
}

/// An upper bound of `value`'s JSON length in characters, if it is at most `limit`: cheap,
/// so small inputs (a few numbers) are never serialized just to be measured.
fn json_chars_bound(value: &Value, limit: usize) -> Option<usize> {
    let bound = match value {
        Value::Null | Value::Bool(_) => 5,
        // The longest number serde_json writes, `-1.7976931348623157e308`, has 24 characters.
        Value::Number(_) => 24,
        // An escaped character is at most six (`\u001f`); a UTF-8 byte is at most one char.
        Value::String(text) => text.len().checked_mul(6)?.checked_add(2)?,
        Value::Array(items) => items.iter().try_fold(items.len() + 2, |sum, item| {
            sum.checked_add(json_chars_bound(item, limit)?)
        })?,
        Value::Object(entries) => {
            entries
                .iter()
                .try_fold(entries.len() * 2 + 2, |sum, (key, item)| {
                    sum.checked_add(key.len().checked_mul(6)? + 2)?
                        .checked_add(json_chars_bound(item, limit)?)
                })?
        }
    };
    (bound <= limit).then_some(bound)
}

fn json_chars_counted(value: &Value, limit: usize) -> bool {
    struct CountChars {
        chars: usize,
        limit: usize,
    }
    impl std::io::Write for CountChars {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // serde_json writes UTF-8: every byte that is not a continuation byte starts a char.
            self.chars += buf.iter().filter(|&&b| (b as i8) >= -0x40).count();
            if self.chars > self.limit {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut CountChars { chars: 0, limit }, value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crops_error_texts_like_values() {
        assert_eq!(crop_text("abcdef", 3), "abc");
        assert_eq!(crop_text("éééé", 3), "ééé");
        assert_eq!(crop_text("abc", 3), "abc");
        let huge = "x".repeat(100_000);
        let rejected = crop_error(Error::rejected(huge.clone()), 10);
        assert_eq!(rejected.to_string(), "input rejected: xxxxxxxxxx");
        let argument = crop_error(
            Error::InvalidArgument {
                position: 1,
                expected: "a number",
                reason: format!("invalid type: string \"{huge}\""),
            },
            20,
        );
        assert_eq!(argument.status(), 422);
        assert!(argument.to_string().len() < 60, "{argument}");
        let predictor = crop_error(Error::from_predictor(huge.clone()), 5);
        assert_eq!(predictor.to_string(), "predictor failed: xxxxx");
        let short = crop_error(Error::rejected("no"), 10);
        assert_eq!(short.to_string(), "input rejected: no");
        assert!(matches!(
            crop_error(Error::Unauthorized, 1),
            Error::Unauthorized
        ));
    }

    #[test]
    fn an_owned_value_is_cropped_as_a_borrowed_one() {
        let values = [
            json!("short"),
            json!("a string longer than ten"),
            json!("ééééééééééééé"),
            json!(null),
            json!(12.5),
            json!([1, 2]),
            json!([1, 2, 3, 4, 5, 6, 7, 8]),
            json!({"k": "v"}),
        ];
        for value in values {
            assert_eq!(crop_owned(value.clone(), 10), crop(&value, 10), "{value}");
        }
    }

    #[test]
    fn crops_long_values_only() {
        assert_eq!(crop(&json!("abcdef"), 3), json!("abc"));
        assert_eq!(crop(&json!([1, 2]), 10), json!([1, 2]));
        assert_eq!(crop(&json!([1, 2, 3]), 4), json!("[1,2"));
        assert_eq!(crop(&json!([1, 2, 3]), 7), json!([1, 2, 3]));
        assert_eq!(crop(&json!(["é", "ü"]), 9), json!(["é", "ü"]));
        assert_eq!(crop(&json!(["é", "ü"]), 8), json!("[\"é\",\"ü\""));
        assert_eq!(crop(&json!("ééé"), 3), json!("ééé"));
        assert_eq!(crop(&json!("éééé"), 3), json!("ééé"));
        let long = json!({"values": [1.5, -2.25e300, 3], "text": "a\u{1}b"});
        let text = long.to_string();
        let n = text.chars().count();
        assert_eq!(crop(&long, n), long);
        assert_eq!(
            crop(&long, n - 1),
            json!(text.chars().take(n - 1).collect::<String>())
        );
    }
}
