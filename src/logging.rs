//! Structured logs: one JSON object per line on stdout, with the original product's field
//! names, for Kibana, Elasticsearch or any log shipper.
//!
//! ```no_run
//! serving::logging::init_json().expect("no other global subscriber");
//! ```
//!
//! Every `tracing` event becomes one line. Fixed keys: `event_time` (seconds since the
//! epoch), `level`, `target`, `message`; then the event's fields and those of the spans it
//! happened in. Fields keep the original product's names where they apply:
//!
//! | Line | Fields |
//! |---|---|
//! | a prediction ([`TracingRecords`](crate::TracingRecords), target `serving::prediction`) | `model`, `model_version`, `endpoint`, `request_id`, `status`, `input`, `output`, `start_time`, `elapsed_time` (ms), `error_message` |
//! | [`Context::log_metric`](crate::Context::log_metric) | `cnvrg_metric_name`, `y`, and `<name>: y` as the original wrote it |
//! | [`Context::log_param`](crate::Context::log_param) | `cnvrg_tag_name`, `value`, and `<tag>: value` |
//! | [`Context::log`](crate::Context::log) | `message`, `endpoint`, `model_version`, `request_id` |
//! | a failed prediction | `error_message` (an `error` field is renamed to it) |
//!
//! Extra fixed fields (the original's `job_id`, `project`, `owner`, …) are added with
//! [`JsonLogs::field`]. Which events are written follows `RUST_LOG` (`info` when unset).
//! Tokens are never logged: [`Token`](crate::http::Token)'s `Debug` is redacted and no
//! route logs headers.

use std::fmt;
use std::io;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::{Error, Result};

/// Installs [`JsonLogs::new`] as the global subscriber, writing to stdout.
pub fn init_json() -> Result<()> {
    JsonLogs::new().init()
}

/// Builds the JSON-lines subscriber.
#[derive(Debug, Clone, Default)]
pub struct JsonLogs {
    fields: Map<String, Value>,
    filter: Option<String>,
}

impl JsonLogs {
    /// JSON lines with no extra fields, filtered by `RUST_LOG` (`info` when unset).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fixed field to every line, such as the original product's `job_id`, `job_type`,
    /// `owner` or `project`.
    pub fn field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Uses these `EnvFilter` directives (for example `info,serving=debug`) instead of
    /// `RUST_LOG`.
    pub fn filter(mut self, directives: impl Into<String>) -> Self {
        self.filter = Some(directives.into());
        self
    }

    /// The line format alone, to use in a subscriber of your own.
    pub fn format(&self) -> JsonLineFormat {
        JsonLineFormat {
            fields: self.fields.clone(),
        }
    }

    /// A subscriber that writes lines to `writer`.
    pub fn subscriber<W>(self, writer: W) -> Result<impl Subscriber + Send + Sync + 'static>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = match &self.filter {
            Some(directives) => EnvFilter::try_new(directives),
            None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
        }
        .map_err(|e| Error::InvalidSetting {
            key: "log filter".to_owned(),
            value: self.filter.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Ok(tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(self.format())
            .with_writer(writer)
            .with_env_filter(filter)
            .finish())
    }

    /// Installs the subscriber globally, writing to stdout.
    pub fn init(self) -> Result<()> {
        let subscriber = self.subscriber(io::stdout)?;
        tracing::subscriber::set_global_default(subscriber).map_err(|e| Error::Action {
            action: "installing the JSON log subscriber".to_owned(),
            source: Box::new(e),
        })
    }
}

/// Formats each event as one JSON object; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct JsonLineFormat {
    fields: Map<String, Value>,
}

impl<S, N> FormatEvent<S, N> for JsonLineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0);
        line.insert("event_time".into(), now.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        line.extend(self.fields.clone());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str(&fields.fields) {
                    line.extend(fields);
                }
            }
        }
        let mut visitor = Fields(&mut line);
        event.record(&mut visitor);
        original_names(&mut line);
        serde_json::to_writer(WriteAdapter(&mut writer), &line).map_err(|_| fmt::Error)?;
        writeln!(writer)
    }
}

/// The original product's spellings: `error_message`, and `{name: y}` / `{tag: value}` beside
/// `cnvrg_metric_name` / `cnvrg_tag_name`.
fn original_names(line: &mut Map<String, Value>) {
    if !line.contains_key("error_message") {
        if let Some(error) = line.remove("error") {
            line.insert("error_message".into(), error);
        }
    }
    if let (Some(Value::String(name)), Some(y)) = (line.get("cnvrg_metric_name"), line.get("y")) {
        let (name, y) = (name.clone(), y.clone());
        line.entry(name).or_insert(y);
    }
    if let (Some(Value::String(tag)), Some(value)) = (line.get("cnvrg_tag_name"), line.get("value"))
    {
        let tag = tag.clone();
        let value = match value {
            Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| value.clone()),
            other => other.clone(),
        };
        line.entry(tag).or_insert(value);
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

struct WriteAdapter<'a, 'b>(&'a mut Writer<'b>);

impl io::Write for WriteAdapter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(io::Error::other)?;
        self.0.write_str(text).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use serving_core::{PredictionRecord, RecordSink, TracingRecords};

    /// Collects lines written by the subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Lines {
        fn json(&self) -> Vec<Map<String, Value>> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).expect("every line is one JSON object"))
                .collect()
        }
    }

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn lines_use_the_original_field_names() {
        let lines = Lines::default();
        let subscriber = JsonLogs::new()
            .field("project", "iris")
            .filter("info")
            .subscriber(lines.clone())
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("batch", job_id = "job-7");
            let _entered = span.enter();
            tracing::info!(cnvrg_metric_name = "accuracy", y = 0.75, "metric");
            tracing::info!(cnvrg_tag_name = "optimizer", value = %serde_json::json!("adam"), "param");
            tracing::error!(error = "boom", "prediction failed");
            tracing::debug!("filtered out");
            TracingRecords.record(PredictionRecord {
                request_id: "r1".into(),
                endpoint: "iris".into(),
                model: "tree".into(),
                model_version: "2".into(),
                input: Some(serde_json::json!([1, 2])),
                output: Some(serde_json::json!("setosa")),
                error: None,
                status: 200,
                start_time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_777_636_800),
                elapsed_ms: 1.5,
                metrics: Default::default(),
                params: Default::default(),
            });
        });
        let lines = lines.json();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let metric = &lines[0];
        assert_eq!(metric["accuracy"], 0.75);
        assert_eq!(metric["cnvrg_metric_name"], "accuracy");
        assert_eq!(metric["project"], "iris");
        assert_eq!(metric["job_id"], "job-7");
        assert!(metric["event_time"].as_f64().unwrap() > 1.7e9);
        assert_eq!(lines[1]["optimizer"], "adam");
        assert_eq!(lines[2]["error_message"], "boom");
        assert_eq!(lines[2]["level"], "ERROR");
        let prediction = &lines[3];
        assert_eq!(prediction["target"], serving_core::PREDICTION_TARGET);
        assert_eq!(prediction["model"], "tree");
        assert_eq!(prediction["input"], "[1,2]");
        assert_eq!(prediction["output"], "\"setosa\"");
        assert_eq!(prediction["start_time"], 1_777_636_800.0);
        assert_eq!(prediction["elapsed_time"], 1.5);
    }
}
