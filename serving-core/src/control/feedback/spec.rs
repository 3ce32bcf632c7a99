//! [`FeedbackLoopSpec`]: one feedback loop of an endpoint's spec: which dataset, when, in
//! which format.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// A feedback loop: export the endpoint's prediction log into `dataset`, once or on a
/// schedule, each export one new file in `format`.
///
/// As JSON: `{"dataset": "iris-feedback", "schedule": {"every_secs": 3600}, "format": "csv"}`;
/// `schedule` is `"now"`, `{"every_secs": N}` or `{"cron": "0 * * * *"}`, `format` `csv` (the
/// default) or `jsonl`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FeedbackLoopSpec {
    /// The dataset the exports go to (a folder of the dataset store).
    pub dataset: String,
    /// When to export.
    pub schedule: FeedbackSchedule,
    /// The exports' file format.
    #[serde(default)]
    pub format: ExportFormat,
}

/// When a feedback loop exports.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "snake_case",
    from = "ScheduleForm",
    into = "ScheduleForm"
)]
pub enum FeedbackSchedule {
    /// Once, now.
    Now,
    /// Every N seconds (`{"every_secs": 3600}` for hourly).
    EverySecs(u64),
    /// At the times of a cron expression, in UTC: five fields (minute to weekday), or six with
    /// seconds first.
    Cron(String),
}

/// How a schedule is written, in JSON and YAML alike: `now`, `{every_secs: N}` or
/// `{cron: "…"}` (a derived enum would want YAML tags such as `!every_secs 60`).
#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum ScheduleForm {
    Word(NowWord),
    EverySecs { every_secs: u64 },
    Cron { cron: String },
}

#[derive(Serialize, Deserialize)]
enum NowWord {
    #[serde(rename = "now")]
    Now,
}

impl From<ScheduleForm> for FeedbackSchedule {
    fn from(form: ScheduleForm) -> Self {
        match form {
            ScheduleForm::Word(NowWord::Now) => FeedbackSchedule::Now,
            ScheduleForm::EverySecs { every_secs } => FeedbackSchedule::EverySecs(every_secs),
            ScheduleForm::Cron { cron } => FeedbackSchedule::Cron(cron),
        }
    }
}

impl From<FeedbackSchedule> for ScheduleForm {
    fn from(schedule: FeedbackSchedule) -> Self {
        match schedule {
            FeedbackSchedule::Now => ScheduleForm::Word(NowWord::Now),
            FeedbackSchedule::EverySecs(every_secs) => ScheduleForm::EverySecs { every_secs },
            FeedbackSchedule::Cron(cron) => ScheduleForm::Cron { cron },
        }
    }
}

/// The file format of a feedback export.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// CSV with a header, the prediction log's CSV export format
    /// ([`CSV_COLUMNS`](crate::prediction_log::CSV_COLUMNS)).
    #[default]
    Csv,
    /// JSON lines, one [`PredictionRow`](crate::prediction_log::PredictionRow) per line, as
    /// the prediction log's segments.
    #[serde(alias = "ndjson", alias = "json_lines")]
    Jsonl,
}

impl ExportFormat {
    /// The file extension: `csv` or `jsonl`.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    /// The content type of its files.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

impl FeedbackLoopSpec {
    /// A loop into `dataset` on `schedule`, in CSV.
    pub fn new(dataset: impl Into<String>, schedule: FeedbackSchedule) -> Self {
        FeedbackLoopSpec {
            dataset: dataset.into(),
            schedule,
            format: ExportFormat::Csv,
        }
    }

    /// The same loop in `format`.
    pub fn with_format(mut self, format: ExportFormat) -> Self {
        self.format = format;
        self
    }

    /// Reads a loop from JSON, each error naming the field that is wrong (`dataset`,
    /// `schedule`, `schedule.every_secs`, `schedule.cron`, `format`), and validates it.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] whose reason starts with the field's name.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(mut fields) = value else {
            return Err(Error::invalid_request(
                "a feedback loop is an object: {\"dataset\", \"schedule\", \"format\"}",
            ));
        };
        const FIELDS: [&str; 3] = ["dataset", "schedule", "format"];
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Error::invalid_request(format!(
                "`{unknown}`: unknown field; valid fields are: {}",
                FIELDS.join(", ")
            )));
        }
        let dataset = match fields.remove("dataset") {
            Some(Value::String(name)) => name,
            Some(other) => return Err(field("dataset", format!("must be a name, not `{other}`"))),
            None => return Err(field("dataset", "is required")),
        };
        let schedule = match fields.remove("schedule") {
            None => return Err(field("schedule", "is required")),
            Some(value) => FeedbackSchedule::from_value(value)?,
        };
        let format = match fields.remove("format") {
            None | Some(Value::Null) => ExportFormat::Csv,
            Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
                field(
                    "format",
                    format!(
                        "unknown format {value}; valid formats are: csv, jsonl (Parquet is not \
                         offered: the core holds no Arrow writer)"
                    ),
                )
            })?,
        };
        let spec = FeedbackLoopSpec {
            dataset,
            schedule,
            format,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the dataset's name and the schedule.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the field: an invalid dataset name, `every_secs` 0, a
    /// cron expression that does not parse.
    pub fn validate(&self) -> Result<()> {
        check_dataset_name(&self.dataset)?;
        self.schedule.validate()
    }
}

/// An error about one field of a feedback loop.
fn field(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid_request(format!("`{name}` {reason}"))
}

/// A dataset's name, as the dataset store takes them.
pub(crate) fn check_dataset_name(name: &str) -> Result<()> {
    crate::datasets::check_dataset_name(name).map_err(|e| match e {
        Error::InvalidRequest { reason } => field("dataset", reason),
        other => other,
    })
}

impl FeedbackSchedule {
    fn from_value(value: Value) -> Result<Self> {
        match value {
            Value::String(text) if text == "now" => Ok(FeedbackSchedule::Now),
            Value::Object(map) if map.len() == 1 => {
                let (key, value) = map.into_iter().next().expect("one entry");
                let schedule = match key.as_str() {
                    "every_secs" => {
                        FeedbackSchedule::EverySecs(value.as_u64().ok_or_else(|| {
                            field(
                                "schedule.every_secs",
                                format!("must be a whole number of seconds, not `{value}`"),
                            )
                        })?)
                    }
                    "cron" => match value {
                        Value::String(expression) => FeedbackSchedule::Cron(expression),
                        other => {
                            return Err(field(
                                "schedule.cron",
                                format!("must be a cron expression, not `{other}`"),
                            ));
                        }
                    },
                    other => {
                        return Err(field(
                            "schedule",
                            format!(
                                "has no `{other}`: it is \"now\", {{\"every_secs\": N}} or {{\"cron\": \"…\"}}"
                            ),
                        ));
                    }
                };
                schedule.validate()?;
                Ok(schedule)
            }
            other => Err(field(
                "schedule",
                format!(
                    "must be \"now\", {{\"every_secs\": N}} or {{\"cron\": \"…\"}}, not `{other}`"
                ),
            )),
        }
    }

    /// Checks `every_secs` (above zero) and the cron expression.
    pub fn validate(&self) -> Result<()> {
        match self {
            FeedbackSchedule::Now => Ok(()),
            FeedbackSchedule::EverySecs(0) => {
                Err(field("schedule.every_secs", "must be greater than zero"))
            }
            FeedbackSchedule::EverySecs(_) => Ok(()),
            FeedbackSchedule::Cron(expression) => parse_cron(expression).map(|_| ()),
        }
    }

    /// Whether it exports more than once.
    pub fn is_recurring(&self) -> bool {
        !matches!(self, FeedbackSchedule::Now)
    }

    /// The first export time strictly after `after`; `None` for `Now` (it exports once, at
    /// once) and for a cron expression that never matches again.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            FeedbackSchedule::Now => None,
            FeedbackSchedule::EverySecs(secs) => after.checked_add(Duration::from_secs(*secs)),
            FeedbackSchedule::Cron(expression) => {
                let cron = parse_cron(expression).ok()?;
                // Whole seconds: croner keeps the fraction of the time it starts from.
                let whole = after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()))?;
                let after = chrono::DateTime::<chrono::Utc>::from(whole);
                cron.find_next_occurrence(&after, false)
                    .ok()
                    .map(SystemTime::from)
                    .filter(|next| *next > whole)
            }
        }
    }
}

/// A cron expression of five fields, or six with seconds first.
fn parse_cron(expression: &str) -> Result<croner::Cron> {
    use croner::parser::{CronParser, Seconds};
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|e| {
            field(
                "schedule.cron",
                format!("`{expression}` does not parse: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn loops_read_from_json_and_round_trip() {
        let spec = FeedbackLoopSpec::from_value(
            json!({"dataset": "iris-feedback", "schedule": {"every_secs": 60}}),
        )
        .unwrap();
        assert_eq!(
            spec,
            FeedbackLoopSpec::new("iris-feedback", FeedbackSchedule::EverySecs(60))
        );
        for text in [
            r#"{"dataset":"d","schedule":"now","format":"jsonl"}"#,
            r#"{"dataset":"d","schedule":{"cron":"*/5 * * * *"},"format":"csv"}"#,
            r#"{"dataset":"d","schedule":{"every_secs":5},"format":"csv"}"#,
        ] {
            let spec = FeedbackLoopSpec::from_value(serde_json::from_str(text).unwrap()).unwrap();
            assert_eq!(serde_json::to_string(&spec).unwrap(), text);
            assert_eq!(
                serde_json::from_str::<FeedbackLoopSpec>(text).unwrap(),
                spec
            );
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        for (body, named) in [
            (json!({"schedule": "now"}), "`dataset` is required"),
            (
                json!({"dataset": 3, "schedule": "now"}),
                "`dataset` must be a name",
            ),
            (
                json!({"dataset": "../x", "schedule": "now"}),
                "`dataset` invalid dataset name `../x`",
            ),
            (json!({"dataset": "d"}), "`schedule` is required"),
            (
                json!({"dataset": "d", "schedule": "later"}),
                "`schedule` must be",
            ),
            (
                json!({"dataset": "d", "schedule": {"every_secs": 0}}),
                "`schedule.every_secs` must be greater than zero",
            ),
            (
                json!({"dataset": "d", "schedule": {"every_secs": -1}}),
                "`schedule.every_secs` must be a whole number",
            ),
            (
                json!({"dataset": "d", "schedule": {"every_secs": "5"}}),
                "`schedule.every_secs` must be a whole number",
            ),
            (
                json!({"dataset": "d", "schedule": {"cron": "every day"}}),
                "`schedule.cron` `every day` does not parse",
            ),
            (
                json!({"dataset": "d", "schedule": {"cron": "61 * * * *"}}),
                "`schedule.cron`",
            ),
            (
                json!({"dataset": "d", "schedule": {"hourly": true}}),
                "`schedule` has no `hourly`",
            ),
            (
                json!({"dataset": "d", "schedule": "now", "format": "xml"}),
                "`format` unknown format \"xml\"",
            ),
            (
                json!({"dataset": "d", "schedule": "now", "format": "parquet"}),
                "`format` unknown format \"parquet\"",
            ),
            (
                json!({"dataset": "d", "schedule": "now", "colour": 1}),
                "`colour`: unknown field",
            ),
            (json!([1]), "a feedback loop is an object"),
        ] {
            let error = FeedbackLoopSpec::from_value(body.clone()).unwrap_err();
            assert!(
                matches!(error, Error::InvalidRequest { .. }),
                "{body}: {error}"
            );
            assert!(error.to_string().contains(named), "{body}: {error}");
        }
    }

    #[test]
    fn schedules_give_their_next_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_007);
        assert_eq!(FeedbackSchedule::Now.next_after(at), None);
        assert_eq!(
            FeedbackSchedule::EverySecs(10).next_after(at),
            Some(at + Duration::from_secs(10))
        );
        let minute = FeedbackSchedule::Cron("* * * * *".into());
        assert_eq!(
            minute.next_after(at),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_060))
        );
        let fraction = at + Duration::from_millis(300);
        assert_eq!(
            FeedbackSchedule::Cron("* * * * * *".into()).next_after(fraction),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_008))
        );
        let seconds = FeedbackSchedule::Cron("*/5 * * * * *".into());
        assert_eq!(
            seconds.next_after(at),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_010))
        );
        assert!(seconds.is_recurring() && !FeedbackSchedule::Now.is_recurring());
    }
}
