//! [`EndpointSpec`]: an endpoint's whole specification as one serializable value, so that
//! "rerun with the same settings" is load-and-deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscale::AutoscaleBounds;
use crate::error::{Error, Result};
use crate::lifecycle::CanaryPolicy;
use crate::setting::Setting;
use crate::signature::ModelSignature;

/// Everything that defines an endpoint except the model's code, which is referenced by name
/// and version.
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
}

/// The three kinds of endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum EndpointKind {
    /// A REST API around the predictor.
    #[default]
    WebService,
    /// Predict each message of input topics and produce to an output topic.
    KafkaStream {
        /// Bootstrap brokers, `host:port`.
        brokers: Vec<String>,
        /// Topics to consume.
        input_topics: Vec<String>,
        /// Topic to produce predictions to.
        output_topic: String,
    },
    /// Scaled to zero until a batch CSV arrives.
    Batch,
}

/// The model an endpoint serves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl WorkerSettings {
    /// Every key [`WorkerSettings::set`] accepts. `workers` is an alias of `concurrency`.
    pub const KEYS: [&'static str; 8] = [
        "concurrency",
        "workers",
        "threads",
        "timeout",
        "max_body_bytes",
        "queue_depth",
        "max_batch_size",
        "max_batch_wait_ms",
    ];

    /// The prediction timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Sets one KEY-VALUE pair. `bind` cannot be changed this way; an unknown key is an error
    /// that lists the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let setting = Setting { key, value };
        match key {
            "concurrency" | "workers" => self.concurrency = setting.positive()? as usize,
            "threads" => self.threads = setting.positive()? as usize,
            "timeout" => self.timeout_secs = setting.positive()?,
            "max_body_bytes" => self.max_body_bytes = setting.positive()? as usize,
            "queue_depth" => self.queue_depth = setting.whole("0 for no queue")? as usize,
            "max_batch_size" => self.max_batch_size = setting.whole("0 for no batching")? as usize,
            "max_batch_wait_ms" => self.max_batch_wait_ms = setting.whole("0 to never wait")?,
            "bind" => {
                return Err(
                    setting.invalid("the bind address is set by the server, not by settings")
                );
            }
            _ => return Err(setting.unknown(&Self::KEYS)),
        }
        Ok(())
    }

    /// Applies several KEY-VALUE pairs, stopping at the first error.
    pub fn apply<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
        pairs
            .into_iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }
}

#[cfg(test)]
mod tests {
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
        let kafka = EndpointSpec {
            kind: EndpointKind::KafkaStream {
                brokers: vec!["127.0.0.1:9092".into()],
                input_topics: vec!["in".into()],
                output_topic: "out".into(),
            },
            ..spec
        };
        assert_eq!(EndpointSpec::from_yaml(&kafka.to_yaml()).unwrap(), kafka);
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
