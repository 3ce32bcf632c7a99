//! [`EndpointSpec`]: an endpoint's whole specification as one serializable value, so that
//! "rerun with the same settings" is load-and-deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::setting::{Setting, SettingKey, Settings, name_array};
use crate::control::actions::TriggerSpec;
use crate::control::autoscale::AutoscaleBounds;
use crate::control::feedback::FeedbackLoopSpec;
use crate::error::{Error, Result};
use crate::lifecycle::CanaryPolicy;
use crate::model::signature::ModelSignature;
use crate::setting_keys;

/// Everything that defines an endpoint except the model's code, which is referenced by name
/// and version.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointSpec {
    /// The endpoint's name, used in its URL (`/api/v1/endpoints/{name}`): lowercase letters,
    /// digits and dashes.
    pub name: String,
    /// What kind of endpoint it is.
    #[serde(default)]
    pub kind: EndpointKind,
    /// The model it serves.
    pub model: ModelRef,
    /// The name of the preprocess function, when one runs before predict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
    /// Whether the input is Base64 files ("Function accepts file as input").
    #[serde(default)]
    pub files: FileInput,
    /// How callers authenticate.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Server and worker settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Replica bounds.
    #[serde(default)]
    pub autoscale: AutoscaleBounds,
    /// What the prediction log keeps.
    #[serde(default)]
    pub logging: LoggingSpec,
    /// Rules that promote or roll back a canary automatically; manual when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryPolicy>,
    /// The model's named inputs and outputs, for the Open Inference Protocol routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ModelSignature>,
    /// Feedback loops that export its prediction log into datasets, started with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<FeedbackLoopSpec>,
    /// Triggers on the endpoint's metrics, started with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
}

impl EndpointSpec {
    /// A web-service spec with every other setting at its default.
    pub fn new(name: impl Into<String>, model: ModelRef) -> Self {
        EndpointSpec {
            name: name.into(),
            kind: EndpointKind::default(),
            model,
            preprocess: None,
            files: FileInput::default(),
            auth: AuthSpec::default(),
            server: ServerSettings::default(),
            autoscale: AutoscaleBounds::default(),
            logging: LoggingSpec::default(),
            canary: None,
            signature: None,
            feedback: Vec::new(),
            triggers: Vec::new(),
        }
    }

    /// Checks the name, bounds and canary rules.
    pub fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if !name_ok {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "endpoint name `{}` must be 1-63 lowercase letters, digits or dashes, not starting or ending with a dash",
                    self.name
                ),
            });
        }
        if let Some(canary) = &self.canary {
            canary.validate()?;
        }
        for (i, feedback) in self.feedback.iter().enumerate() {
            feedback.validate().map_err(|e| Error::InvalidSpec {
                reason: format!("feedback[{i}]: {e}"),
            })?;
        }
        for trigger in &self.triggers {
            trigger.validate()?;
        }
        self.autoscale.validate()
    }

    /// Parses a spec from JSON and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(text).map_err(|e| Error::InvalidSpec {
            reason: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a spec from YAML and validates it.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let spec: Self = serde_norway::from_str(text).map_err(|e| Error::InvalidSpec {
            reason: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serializes")
    }

    /// The spec as YAML.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a spec always serializes")
    }

    /// The section of the backend whose kind is named `kind` (`kafka_stream`, `batch`), for
    /// that backend's `from_spec`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when the spec is of another kind.
    pub fn section_of(&self, kind: &str) -> Result<&BackendSection> {
        match self.kind.section() {
            Some(section) if self.kind.name() == kind => Ok(section),
            _ => Err(Error::InvalidSpec {
                reason: format!(
                    "endpoint `{}` is a {} endpoint, not {kind}",
                    self.name,
                    self.kind.name()
                ),
            }),
        }
    }
}

/// The three kinds of endpoint, each with the section of the spec its backend owns.
///
/// Serialized with a `type` tag and the section's keys beside it, as before backends owned
/// their sections:
///
/// ```yaml
/// kind:
///   type: kafka_stream
///   brokers: ["127.0.0.1:9092"]
///   input_topics: [in]
///   output_topic: out
/// ```
///
/// The core keeps a Kafka or batch section as it was written ([`BackendSection`]) and never
/// looks inside; the backend crate reads it into its own config type (`serving-kafka`'s
/// `KafkaStreamConfig`, `serving-batch`'s `BatchJobConfig`), refusing unknown keys there. So a
/// new backend setting changes only the backend crate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndpointKind {
    /// A REST API around the predictor.
    #[default]
    WebService,
    /// Predict each message of input topics and produce to an output topic; the section is
    /// `serving-kafka`'s (brokers, topics, …).
    KafkaStream(BackendSection),
    /// Scaled to zero until a batch CSV arrives; the section is `serving-batch`'s.
    Batch(BackendSection),
}

impl EndpointKind {
    /// The `type` tag: `web_service`, `kafka_stream` or `batch`.
    pub fn name(&self) -> &'static str {
        match self {
            EndpointKind::WebService => "web_service",
            EndpointKind::KafkaStream(_) => "kafka_stream",
            EndpointKind::Batch(_) => "batch",
        }
    }

    /// The backend's section, for the kinds that have one.
    pub fn section(&self) -> Option<&BackendSection> {
        match self {
            EndpointKind::WebService => None,
            EndpointKind::KafkaStream(section) | EndpointKind::Batch(section) => Some(section),
        }
    }
}

/// One backend's section of an [`EndpointSpec`]: its keys and values as written, kept opaque
/// by the core and read by the backend into its own config type with [`BackendSection::parse`].
///
/// A backend's config type is `#[serde(default, deny_unknown_fields)]`, so an unknown key is
/// an error naming it and listing the valid ones, raised when the backend reads its section
/// (not when the core loads the spec).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendSection(serde_json::Map<String, serde_json::Value>);

impl BackendSection {
    /// An empty section: every backend setting at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// The section of a backend's config value.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when `config` does not serialize as a map of keys, or holds the
    /// key `type` (the kind's tag).
    pub fn from_config<T: Serialize>(config: &T) -> Result<Self> {
        match serde_json::to_value(config) {
            Ok(serde_json::Value::Object(map)) => Self::try_from(map),
            Ok(other) => Err(Error::InvalidSpec {
                reason: format!("a backend section is a map of settings, not `{other}`"),
            }),
            Err(e) => Err(Error::InvalidSpec {
                reason: e.to_string(),
            }),
        }
    }

    /// Reads the section into a backend's config type; `kind` names the section in errors.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] with serde's message, which for an unknown key names it and
    /// lists the valid ones.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<T> {
        serde_json::from_value(serde_json::Value::Object(self.0.clone())).map_err(|e| {
            Error::InvalidSpec {
                reason: format!("{kind} section: {e}"),
            }
        })
    }

    /// The value of one key.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys and values.
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for BackendSection {
    type Error = Error;

    /// Refuses the key `type`, which would clash with the kind's tag.
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        if map.contains_key("type") {
            return Err(Error::InvalidSpec {
                reason: "a backend section cannot hold the key `type`: it is the kind's tag"
                    .to_owned(),
            });
        }
        Ok(BackendSection(map))
    }
}

/// The model an endpoint serves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The model's name.
    pub name: String,
    /// Its version.
    pub version: String,
}

impl ModelRef {
    /// A model name and version.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        ModelRef {
            name: name.into(),
            version: version.into(),
        }
    }
}

/// "Function accepts file as input": the input is Base64 (a string or a list of them), decoded
/// before predict.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileInput {
    /// Input is used as sent.
    #[default]
    Off,
    /// Each file reaches the predictor as bytes.
    Bytes,
    /// Each file is written to a temporary file whose path reaches the predictor; the file is
    /// removed after the prediction.
    TempFile,
}

/// How callers authenticate.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSpec {
    /// Whether a token is required at all.
    pub required: bool,
    /// The environment variable that holds the token; when unset, a random token is generated
    /// at start-up. The token itself never appears in a spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            required: true,
            token_env: None,
        }
    }
}

/// What the prediction log keeps for each prediction.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSpec {
    /// Record inputs.
    pub log_input: bool,
    /// Record outputs.
    pub log_output: bool,
    /// Longer inputs and outputs are cropped to this many characters (1000 as in the original
    /// product).
    pub max_value_chars: usize,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        LoggingSpec {
            log_input: true,
            log_output: true,
            max_value_chars: 1000,
        }
    }
}

/// Server settings: environment KEY-VALUE pairs (the original "Flask config") and worker
/// settings (the original "Gunicorn config").
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// KEY-VALUE settings (the original "Flask config"): readable through
    /// [`Context::setting`](crate::Context::setting) in every prediction, and exported to the
    /// process environment by [`ServerSettings::export_env`] when called at start-up.
    pub env: BTreeMap<String, String>,
    /// Concurrency, threads and timeout.
    pub workers: WorkerSettings,
}

/// Worker settings, settable as KEY-VALUE pairs with [`WorkerSettings::set`].
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WorkerSettings {
    /// Requests served at once (`concurrency`); more wait in the queue.
    pub concurrency: usize,
    /// Requests that may wait for a slot when `concurrency` are running (`queue_depth`);
    /// beyond it, requests are shed at once with 503 and `Retry-After`. 0, the default, sheds
    /// as soon as `concurrency` requests run. Waiting counts toward the timeout.
    pub queue_depth: usize,
    /// Threads that run blocking predictors (`threads`); defaults to the number of cores.
    pub threads: usize,
    /// Seconds before a prediction times out (`timeout`), 1800 by default as in the original.
    pub timeout_secs: u64,
    /// Largest accepted request body in bytes (`max_body_bytes`).
    pub max_body_bytes: usize,
    /// Most inputs grouped into one `predict_batch` call (`max_batch_size`); 0 or 1, the
    /// default, turns batching off. Only for predictors that declare a batch method.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in milliseconds
    /// (`max_batch_wait_ms`), 5 by default.
    pub max_batch_wait_ms: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 1024,
            queue_depth: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            timeout_secs: 1800,
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_size: 0,
            max_batch_wait_ms: 5,
        }
    }
}

setting_keys! {
    /// The keys of [`WorkerSettings`]: `concurrency` (alias `workers`), `threads`, `timeout`
    /// (seconds), `max_body_bytes`, `queue_depth`, `max_batch_size`, `max_batch_wait_ms`.
    pub enum WorkerKey {
        /// [`WorkerSettings::concurrency`]; `workers` as in the original Gunicorn config.
        Concurrency = "concurrency" | "workers",
        /// [`WorkerSettings::threads`].
        Threads = "threads",
        /// [`WorkerSettings::timeout_secs`], in seconds.
        Timeout = "timeout",
        /// [`WorkerSettings::max_body_bytes`].
        MaxBodyBytes = "max_body_bytes",
        /// [`WorkerSettings::queue_depth`].
        QueueDepth = "queue_depth",
        /// [`WorkerSettings::max_batch_size`].
        MaxBatchSize = "max_batch_size",
        /// [`WorkerSettings::max_batch_wait_ms`].
        MaxBatchWaitMs = "max_batch_wait_ms",
    }
}

impl WorkerSettings {
    /// Every key [`WorkerSettings::set`] accepts ([`WorkerKey`]'s names). `workers` is an
    /// alias of `concurrency`.
    pub const KEYS: [&'static str; 8] = name_array(WorkerKey::NAMES);

    /// The prediction timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Sets one KEY-VALUE pair. `bind` cannot be changed this way; an unknown key is an error
    /// that lists the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        Settings::set(self, key, value)
    }

    /// Applies several KEY-VALUE pairs, stopping at the first error.
    pub fn apply<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
        Settings::apply(self, pairs)
    }
}

impl Settings for WorkerSettings {
    type Key = WorkerKey;
    const ENV_PREFIX: &'static str = "SERVING_WORKERS_";

    fn set_key(&mut self, key: WorkerKey, value: &Setting<'_>) -> Result<()> {
        match key {
            WorkerKey::Concurrency => self.concurrency = value.positive()? as usize,
            WorkerKey::Threads => self.threads = value.positive()? as usize,
            WorkerKey::Timeout => self.timeout_secs = value.positive()?,
            WorkerKey::MaxBodyBytes => self.max_body_bytes = value.positive()? as usize,
            WorkerKey::QueueDepth => self.queue_depth = value.whole("0 for no queue")? as usize,
            WorkerKey::MaxBatchSize => {
                self.max_batch_size = value.whole("0 for no batching")? as usize;
            }
            WorkerKey::MaxBatchWaitMs => self.max_batch_wait_ms = value.whole("0 to never wait")?,
        }
        Ok(())
    }

    /// As the provided method, except that `bind` (a Gunicorn setting) is refused with why
    /// rather than as unknown.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if key == "bind" {
            return Err(Setting::new(key, value)
                .invalid("the bind address is set by the server, not by settings"));
        }
        self.set_key(key.parse()?, &Setting::new(key, value))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> EndpointSpec {
        let mut spec = EndpointSpec::new("iris", ModelRef::new("iris-tree", "1"));
        spec.preprocess = Some("scale".into());
        spec.files = FileInput::TempFile;
        spec.server
            .env
            .insert("FLASK_ENV".into(), "production".into());
        spec.server.workers.set("threads", "4").unwrap();
        spec.autoscale = AutoscaleBounds::new(1, 3).unwrap();
        spec
    }

    #[test]
    fn round_trips_through_json_and_yaml() {
        let spec = sample();
        assert_eq!(EndpointSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
        let section = json!({
            "brokers": ["127.0.0.1:9092"],
            "input_topics": ["in"],
            "output_topic": "out",
        });
        let kafka = EndpointSpec {
            kind: EndpointKind::KafkaStream(BackendSection::from_config(&section).unwrap()),
            ..spec
        };
        assert_eq!(EndpointSpec::from_yaml(&kafka.to_yaml()).unwrap(), kafka);
        assert_eq!(EndpointSpec::from_json(&kafka.to_json()).unwrap(), kafka);
    }

    #[test]
    fn kinds_keep_their_serialized_form() {
        // The form written before backends owned their sections loads unchanged.
        let saved = "name: s\nmodel: {name: m, version: '1'}\nkind:\n  type: kafka_stream\n  brokers: ['127.0.0.1:9092']\n  input_topics: [in]\n  output_topic: out\n";
        let spec = EndpointSpec::from_yaml(saved).unwrap();
        assert_eq!(spec.kind.name(), "kafka_stream");
        let section = spec.kind.section().unwrap();
        assert_eq!(section.get("output_topic"), Some(&json!("out")));
        let json = serde_json::to_value(&spec.kind).unwrap();
        assert_eq!(
            json,
            json!({"type": "kafka_stream", "brokers": ["127.0.0.1:9092"], "input_topics": ["in"], "output_topic": "out"})
        );
        for (kind, text) in [
            (EndpointKind::WebService, r#"{"type":"web_service"}"#),
            (
                EndpointKind::Batch(BackendSection::new()),
                r#"{"type":"batch"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), text);
            assert_eq!(serde_json::from_str::<EndpointKind>(text).unwrap(), kind);
        }
        assert!(serde_json::from_str::<EndpointKind>(r#"{"type":"ftp"}"#).is_err());
        assert!(BackendSection::from_config(&json!({"type": "x"})).is_err());
        assert!(BackendSection::from_config(&json!([1])).is_err());
    }

    #[test]
    fn a_backend_reads_its_section_into_its_own_type() {
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Topics {
            output_topic: String,
        }
        let section = BackendSection::from_config(&json!({"output_topic": "out"})).unwrap();
        assert_eq!(
            section.parse::<Topics>("kafka_stream").unwrap(),
            Topics {
                output_topic: "out".into()
            }
        );
        let typo = BackendSection::from_config(&json!({"output_topics": "out"})).unwrap();
        let error = typo
            .parse::<Topics>("kafka_stream")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "kafka_stream section: unknown field `output_topics`, expected `output_topic`"
            ),
            "{error}"
        );
    }

    #[test]
    fn feedback_loops_are_part_of_the_spec() {
        use crate::control::feedback::{ExportFormat, FeedbackSchedule};
        let older = "name: iris\nmodel: {name: tree, version: '2'}\n";
        assert!(EndpointSpec::from_yaml(older).unwrap().feedback.is_empty());
        let mut spec = sample();
        spec.feedback = vec![
            FeedbackLoopSpec::new("iris-feedback", FeedbackSchedule::EverySecs(3600)),
            FeedbackLoopSpec::new("nightly", FeedbackSchedule::Cron("0 2 * * *".into()))
                .with_format(ExportFormat::Jsonl),
        ];
        assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
        assert_eq!(EndpointSpec::from_json(&spec.to_json()).unwrap(), spec);
        let written = "name: iris\nmodel: {name: tree, version: '2'}\nfeedback:\n  - {dataset: fb, schedule: {every_secs: 60}}\n  - {dataset: fb, schedule: now, format: jsonl}\n  - {dataset: fb, schedule: {cron: '0 * * * *'}}\n";
        let read = EndpointSpec::from_yaml(written).unwrap();
        assert_eq!(read.feedback[0].schedule, FeedbackSchedule::EverySecs(60));
        assert_eq!(read.feedback[1].format, ExportFormat::Jsonl);
        assert_eq!(
            read.feedback[2].schedule,
            FeedbackSchedule::Cron("0 * * * *".into())
        );
        assert_eq!(EndpointSpec::from_yaml(&read.to_yaml()).unwrap(), read);
        spec.feedback[0].schedule = FeedbackSchedule::EverySecs(0);
        let error = EndpointSpec::from_json(&spec.to_json())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "feedback[0]: invalid request: `schedule.every_secs` must be greater than zero"
            ),
            "{error}"
        );
    }

    #[test]
    fn triggers_are_part_of_the_spec_and_older_specs_still_load() {
        let yaml = "name: iris\nmodel: {name: tree, version: '2'}\ntriggers:\n  - title: long petals\n    metric: petal_length_cm\n    comparison: greater_than\n    threshold: 6\n    every_secs: 10\n    action: {type: webhook, url: 'http://127.0.0.1:9000/hook', secret: s3cret}\n";
        let spec = EndpointSpec::from_yaml(yaml).unwrap();
        assert_eq!(spec.triggers.len(), 1);
        let trigger = &spec.triggers[0];
        assert_eq!(
            (trigger.rule.min_events, trigger.rule.cooldown_secs),
            (1, None)
        );
        assert_eq!(trigger.action.kind(), "webhook");
        assert_eq!(EndpointSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
        // A spec saved before triggers existed has none, and one without triggers saves none.
        let old =
            EndpointSpec::from_yaml("name: iris\nmodel: {name: tree, version: '2'}\n").unwrap();
        assert!(old.triggers.is_empty());
        assert!(!old.to_json().contains("triggers"));
        let bad = yaml.replace("every_secs: 10", "every_secs: 0");
        let error = EndpointSpec::from_yaml(&bad).unwrap_err().to_string();
        assert!(error.contains("`every_secs`"), "{error}");
    }

    #[test]
    fn minimal_yaml_takes_defaults() {
        let spec =
            EndpointSpec::from_yaml("name: iris\nmodel: {name: tree, version: '2'}\n").unwrap();
        assert_eq!(spec.kind, EndpointKind::WebService);
        assert_eq!(spec.server.workers.timeout_secs, 1800);
        assert_eq!(spec.logging.max_value_chars, 1000);
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        assert!(
            EndpointSpec::from_yaml("name: iris\nmodel: {name: t, version: '1'}\ncolour: red\n")
                .is_err()
        );
        assert!(
            EndpointSpec::from_json(r#"{"name":"Bad Name","model":{"name":"t","version":"1"}}"#)
                .is_err()
        );
    }

    #[test]
    fn worker_settings_through_the_shared_helper() {
        assert_eq!(WorkerSettings::KEYS, WorkerKey::NAMES);
        let workers = WorkerSettings::default()
            .with_config(WorkerKey::Concurrency, "3")
            .unwrap();
        assert_eq!(workers.concurrency, 3);
        let workers = WorkerSettings::from_lookup(|var| {
            (var == "SERVING_WORKERS_WORKERS").then(|| "5".to_owned())
        })
        .unwrap();
        assert_eq!(workers.concurrency, 5, "an alias's variable");
        let error = WorkerSettings::default()
            .set("workers", "none")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value `none` for setting `workers`: expected a whole number greater than zero"
        );
    }

    #[test]
    fn worker_settings_are_key_value() {
        let mut workers = WorkerSettings::default();
        workers
            .apply([("timeout", "30"), ("workers", "8")])
            .unwrap();
        assert_eq!(workers.timeout(), Duration::from_secs(30));
        assert_eq!(workers.concurrency, 8);
        let unknown = workers.set("reload", "1").unwrap_err().to_string();
        assert!(
            unknown.contains("valid settings are: concurrency, workers, threads, timeout"),
            "{unknown}"
        );
        assert!(matches!(
            workers.set("bind", "0.0.0.0:1"),
            Err(Error::InvalidSetting { .. })
        ));
        assert!(matches!(
            workers.set("threads", "0"),
            Err(Error::InvalidSetting { .. })
        ));
    }
}
