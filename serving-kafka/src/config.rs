//! [`KafkaStreamConfig`]: which brokers and topics a Kafka-stream endpoint uses.

use serde::{Deserialize, Serialize};
use serving_core::setting::{Setting, Settings};
use serving_core::{BackendSection, EndpointKind, EndpointSpec, Result, setting_keys};

setting_keys! {
    /// The keys of a [`KafkaStreamConfig`], each named after its field; the aliases are
    /// Kafka's own names (`bootstrap.servers`, `group.id`).
    pub enum KafkaStreamKey {
        /// [`KafkaStreamConfig::brokers`], comma-separated.
        Brokers = "brokers" | "bootstrap.servers",
        /// [`KafkaStreamConfig::input_topics`], comma-separated.
        InputTopics = "input_topics",
        /// [`KafkaStreamConfig::output_topic`].
        OutputTopic = "output_topic",
        /// [`KafkaStreamConfig::group_id`].
        GroupId = "group_id" | "group.id",
        /// [`KafkaStreamConfig::delivery`]: `exactly_once` or `at_least_once`.
        Delivery = "delivery",
        /// [`KafkaStreamConfig::transaction_messages`].
        TransactionMessages = "transaction_messages",
        /// [`KafkaStreamConfig::transaction_ms`].
        TransactionMs = "transaction_ms",
        /// [`KafkaStreamConfig::dead_letter_topic`].
        DeadLetterTopic = "dead_letter_topic",
        /// [`KafkaStreamConfig::instance_id`].
        InstanceId = "instance_id",
        /// [`KafkaStreamConfig::output_format`]: `json` or `bytes`.
        OutputFormat = "output_format",
        /// [`KafkaStreamConfig::input_format`]: `bytes` or `json`.
        InputFormat = "input_format",
    }
}

/// How a message's value reaches the predictor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InputFormat {
    /// The value's bytes, as [`Input::Bytes`](serving_core::Input::Bytes) (a typed predictor
    /// reads JSON from them).
    #[default]
    Bytes,
    /// The value parsed as JSON, as [`Input::Json`](serving_core::Input::Json); a value that
    /// is not JSON is refused before the model (recorded as a 400, dead-lettered with status
    /// `invalid_request`).
    Json,
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bytes" => Ok(InputFormat::Bytes),
            "json" => Ok(InputFormat::Json),
            _ => Err("expected bytes or json".into()),
        }
    }
}

/// How a prediction becomes an output message's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutputFormat {
    /// The prediction as JSON.
    #[default]
    Json,
    /// The prediction's bytes as they are: the predictor returns bytes (`Vec<u8>`, `Bytes`:
    /// a JSON array of integers 0 to 255) or a string (its UTF-8). Any other prediction is
    /// dead-lettered, naming what it was.
    Bytes,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "json" => Ok(OutputFormat::Json),
            "bytes" => Ok(OutputFormat::Bytes),
            _ => Err("expected json or bytes".into()),
        }
    }
}

/// How a stream commits what it consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryMode {
    /// Outputs and input offsets are committed in one Kafka transaction: every input yields
    /// exactly one committed output, whatever crashes.
    #[default]
    ExactlyOnce,
    /// Input offsets are committed once the outputs are acknowledged (for brokers without
    /// transactions): nothing is lost, a crash may duplicate outputs.
    AtLeastOnce,
}

impl DeliveryMode {
    /// `exactly_once` or `at_least_once`, as in settings, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::ExactlyOnce => "exactly_once",
            DeliveryMode::AtLeastOnce => "at_least_once",
        }
    }
}

impl std::fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeliveryMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "exactly_once" => Ok(DeliveryMode::ExactlyOnce),
            "at_least_once" => Ok(DeliveryMode::AtLeastOnce),
            _ => Err("expected exactly_once or at_least_once".into()),
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Messages per transaction (or per offset commit) by default.
pub const DEFAULT_TRANSACTION_MESSAGES: usize = 1000;
/// Milliseconds a transaction stays open at most by default.
pub const DEFAULT_TRANSACTION_MS: u64 = 100;

/// The `kafka_stream` section of an endpoint's spec, settable as KEY-VALUE pairs
/// ([`Settings`], keys [`KafkaStreamKey`]) or from `SERVING_KAFKA_<KEY>` environment variables
/// (`SERVING_KAFKA_BROKERS`, `SERVING_KAFKA_BOOTSTRAP_SERVERS`, …).
///
/// In a spec, keys are the field names; an unknown one is an error that names it and lists the
/// valid ones. [`KafkaStreamConfig::validate`] says what a runnable stream needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaStreamConfig {
    /// Bootstrap brokers, `host:port` (`brokers`, alias `bootstrap.servers`).
    pub brokers: Vec<String>,
    /// Topics to consume (`input_topics`).
    pub input_topics: Vec<String>,
    /// Topic to produce predictions to (`output_topic`).
    pub output_topic: String,
    /// Consumer group (`group_id`, alias `group.id`); `serving-<endpoint name>` when unset, so
    /// a new model rolled onto the same endpoint resumes at the group's committed offsets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// [`DeliveryMode`] (`delivery`), exactly once by default.
    #[serde(skip_serializing_if = "is_default")]
    pub delivery: DeliveryMode,
    /// Messages per transaction at most (`transaction_messages`); `0` means
    /// [`DEFAULT_TRANSACTION_MESSAGES`].
    #[serde(skip_serializing_if = "is_default")]
    pub transaction_messages: usize,
    /// Milliseconds a transaction stays open at most (`transaction_ms`); `0` means
    /// [`DEFAULT_TRANSACTION_MS`].
    #[serde(skip_serializing_if = "is_default")]
    pub transaction_ms: u64,
    /// Where messages the model could not predict go (`dead_letter_topic`);
    /// `<output_topic>.dlq` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Names this process among the group's (`instance_id`), for its stable
    /// `transactional.id` (`<group>-<instance>`): a restarted instance fences its dead
    /// predecessor's open transaction. `0` when unset; give each concurrent process its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// librdkafka properties passed through to the consumer and producer (security protocol,
    /// SASL, TLS, client id): any KEY-VALUE pair whose key holds a dot and is not one of
    /// [`KafkaStreamKey`]'s.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
    /// [`OutputFormat`] of the output values (`output_format`): JSON by default, or the
    /// predictor's raw bytes.
    #[serde(skip_serializing_if = "is_default")]
    pub output_format: OutputFormat,
    /// [`InputFormat`] of the input values (`input_format`): the raw bytes by default, or
    /// JSON, refusing a value that is not.
    #[serde(skip_serializing_if = "is_default")]
    pub input_format: InputFormat,
}

impl KafkaStreamConfig {
    /// The spec's `type` tag of this section.
    pub const KIND: &'static str = "kafka_stream";

    /// A stream from `input_topics` to `output_topic` through `brokers`; the rest at defaults.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        input_topics: impl IntoIterator<Item = impl Into<String>>,
        output_topic: impl Into<String>,
    ) -> Self {
        KafkaStreamConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            input_topics: input_topics.into_iter().map(Into::into).collect(),
            output_topic: output_topic.into(),
            ..Self::default()
        }
    }

    /// The section of a `kafka_stream` spec, read and validated.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`](serving_core::Error::InvalidSpec) when the spec is of another kind or its section holds an unknown
    /// key (named, with the valid ones) or a value of the wrong type; what
    /// [`KafkaStreamConfig::validate`] refuses.
    pub fn from_spec(spec: &EndpointSpec) -> Result<Self> {
        Self::from_section(spec.section_of(Self::KIND)?)
    }

    /// The config from a `kafka_stream` section, validated.
    ///
    /// # Errors
    /// As [`KafkaStreamConfig::from_spec`].
    pub fn from_section(section: &BackendSection) -> Result<Self> {
        let config: Self = section.parse(Self::KIND)?;
        config.validate()?;
        Ok(config)
    }

    /// The endpoint kind that holds this config, for [`EndpointSpec::kind`].
    pub fn to_kind(&self) -> EndpointKind {
        EndpointKind::KafkaStream(
            BackendSection::from_config(self).expect("a Kafka config is a map without `type`"),
        )
    }

    /// Checks that the stream can run: at least one broker and input topic, an output topic,
    /// and the output not among the inputs (each prediction would be predicted again).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`](serving_core::Error::InvalidSetting) naming the key.
    pub fn validate(&self) -> Result<()> {
        let refuse =
            |key: &str, value: String, reason: &str| Err(Setting::new(key, &value).invalid(reason));
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return refuse(
                "brokers",
                self.brokers.join(","),
                "expected host:port brokers",
            );
        }
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return refuse(
                "input_topics",
                self.input_topics.join(","),
                "expected topics",
            );
        }
        if self.output_topic.trim().is_empty() {
            return refuse(
                "output_topic",
                self.output_topic.clone(),
                "expected a topic",
            );
        }
        if self.input_topics.contains(&self.output_topic) {
            return refuse(
                "output_topic",
                self.output_topic.clone(),
                "is also an input topic, so every prediction would be consumed again",
            );
        }
        if self.group_id.as_ref().is_some_and(|g| g.trim().is_empty()) {
            return refuse("group_id", String::new(), "expected a group name");
        }
        Ok(())
    }

    /// The consumer group of endpoint `endpoint`: [`KafkaStreamConfig::group_id`] or
    /// `serving-<endpoint>`.
    pub fn group_id(&self, endpoint: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("serving-{endpoint}"))
    }

    /// The dead-letter topic: [`KafkaStreamConfig::dead_letter_topic`] or `<output>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.output_topic))
    }

    /// Messages per transaction, the default when unset.
    pub fn transaction_messages(&self) -> usize {
        match self.transaction_messages {
            0 => DEFAULT_TRANSACTION_MESSAGES,
            n => n,
        }
    }

    /// How long a transaction stays open at most, the default when unset.
    pub fn transaction_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(match self.transaction_ms {
            0 => DEFAULT_TRANSACTION_MS,
            n => n,
        })
    }

    /// The producer's `transactional.id`: `<group>-<instance>`.
    pub fn transactional_id(&self, endpoint: &str) -> String {
        format!(
            "{}-{}",
            self.group_id(endpoint),
            self.instance_id.as_deref().unwrap_or("0")
        )
    }
}

impl From<KafkaStreamConfig> for EndpointKind {
    fn from(config: KafkaStreamConfig) -> Self {
        config.to_kind()
    }
}

impl Settings for KafkaStreamConfig {
    type Key = KafkaStreamKey;
    const ENV_PREFIX: &'static str = "SERVING_KAFKA_";

    /// A key of [`KafkaStreamKey`], or a librdkafka property (a key with a dot) passed
    /// through; any other key is refused, named, with the valid ones.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key.parse::<KafkaStreamKey>() {
            Ok(typed) => self.set_key(typed, &Setting::new(key, value)),
            Err(_) if key.contains('.') && !key.starts_with("serving.") => {
                self.properties.insert(key.to_owned(), value.to_owned());
                Ok(())
            }
            Err(unknown) => Err(unknown),
        }
    }

    fn set_key(&mut self, key: KafkaStreamKey, value: &Setting<'_>) -> Result<()> {
        match key {
            KafkaStreamKey::Brokers => self.brokers = value.list()?,
            KafkaStreamKey::InputTopics => self.input_topics = value.list()?,
            KafkaStreamKey::OutputTopic => {
                self.output_topic = value.non_empty("expected a topic")?.to_owned();
            }
            KafkaStreamKey::GroupId => {
                self.group_id = Some(value.non_empty("expected a group name")?.to_owned());
            }
            KafkaStreamKey::Delivery => self.delivery = value.parse()?,
            KafkaStreamKey::TransactionMessages => {
                self.transaction_messages =
                    usize::try_from(value.positive()?).map_err(|_| value.invalid("too large"))?;
            }
            KafkaStreamKey::TransactionMs => self.transaction_ms = value.positive()?,
            KafkaStreamKey::DeadLetterTopic => {
                self.dead_letter_topic = Some(value.non_empty("expected a topic")?.to_owned());
            }
            KafkaStreamKey::InstanceId => {
                self.instance_id = Some(value.non_empty("expected an instance name")?.to_owned());
            }
            KafkaStreamKey::OutputFormat => self.output_format = value.parse()?,
            KafkaStreamKey::InputFormat => self.input_format = value.parse()?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use serving_core::{Error, ModelRef};

    use super::*;

    const SAVED: &str = "name: scorer\nmodel: {name: tree, version: '1'}\nkind:\n  type: kafka_stream\n  brokers: ['127.0.0.1:9092', '127.0.0.1:9093']\n  input_topics: [transactions]\n  output_topic: scores\n";

    #[test]
    fn a_spec_with_a_kafka_section_round_trips() {
        let spec = EndpointSpec::from_yaml(SAVED).unwrap();
        let config = KafkaStreamConfig::from_spec(&spec).unwrap();
        assert_eq!(
            config,
            KafkaStreamConfig::new(
                ["127.0.0.1:9092", "127.0.0.1:9093"],
                ["transactions"],
                "scores"
            )
        );
        assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
        assert_eq!(EndpointSpec::from_json(&spec.to_json()).unwrap(), spec);

        // Built from the typed config, the spec serializes as the saved one did.
        let mut built = EndpointSpec::new("scorer", ModelRef::new("tree", "1"));
        built.kind = config.clone().into();
        assert_eq!(built, spec);
        let mut with_group = config;
        with_group.group_id = Some("fraud".into());
        built.kind = with_group.to_kind();
        let reread = EndpointSpec::from_yaml(&built.to_yaml()).unwrap();
        assert_eq!(KafkaStreamConfig::from_spec(&reread).unwrap(), with_group);
        assert_eq!(with_group.group_id("scorer"), "fraud");
    }

    #[test]
    fn an_unknown_key_in_the_section_is_named() {
        let typo = SAVED.replace("output_topic:", "output_topics:");
        // The core loads the spec without knowing Kafka's keys ...
        let spec = EndpointSpec::from_yaml(&typo).unwrap();
        // ... and the backend refuses it, naming the key and listing the valid ones.
        let error = KafkaStreamConfig::from_spec(&spec).unwrap_err().to_string();
        assert!(error.contains("unknown field `output_topics`"), "{error}");
        assert!(
            error.contains("`brokers`, `input_topics`, `output_topic`, `group_id`, `delivery`"),
            "{error}"
        );
        let section = BackendSection::from_config(&json!({"brokers": "a:1"})).unwrap();
        let error = KafkaStreamConfig::from_section(&section).unwrap_err();
        assert!(error.to_string().contains("expected a sequence"), "{error}");
    }

    #[test]
    fn a_stream_needs_brokers_and_topics() {
        let web = EndpointSpec::new("web", ModelRef::new("tree", "1"));
        let error = KafkaStreamConfig::from_spec(&web).unwrap_err().to_string();
        assert!(
            error.contains("is a web_service endpoint, not kafka_stream"),
            "{error}"
        );
        let empty = EndpointKind::KafkaStream(BackendSection::new());
        let error = KafkaStreamConfig::from_section(empty.section().unwrap()).unwrap_err();
        assert!(matches!(&error, Error::InvalidSetting { key, .. } if key == "brokers"));
        let looping = KafkaStreamConfig::new(["b:1"], ["in", "out"], "out");
        let error = looping.validate().unwrap_err().to_string();
        assert!(error.contains("`output_topic`"), "{error}");
    }

    #[test]
    fn key_value_pairs_with_kafka_aliases_and_the_environment() {
        let mut config = KafkaStreamConfig::default();
        config
            .apply([
                ("bootstrap.servers", "a:9092, b:9092"),
                ("input_topics", "in"),
                ("output_topic", "out"),
                ("group.id", "g"),
            ])
            .unwrap();
        assert_eq!(config.brokers, ["a:9092", "b:9092"]);
        assert_eq!(config.group_id.as_deref(), Some("g"));
        config.validate().unwrap();

        let unknown = config.set("topic", "x").unwrap_err().to_string();
        assert!(
            unknown.contains(
                "`topic`; valid settings are: brokers, bootstrap.servers, input_topics, output_topic, group_id, group.id, delivery"
            ),
            "{unknown}"
        );
        let bad = config.set("brokers", "a:1,,b:2").unwrap_err().to_string();
        assert!(
            bad.contains("`a:1,,b:2`") && bad.contains("`brokers`"),
            "{bad}"
        );

        let config = KafkaStreamConfig::from_lookup(|var| match var {
            "SERVING_KAFKA_BOOTSTRAP_SERVERS" => Some("k:9092".into()),
            "SERVING_KAFKA_INPUT_TOPICS" => Some("a,b".into()),
            "SERVING_KAFKA_OUTPUT_TOPIC" => Some("c".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config, KafkaStreamConfig::new(["k:9092"], ["a", "b"], "c"));
    }

    #[test]
    fn delivery_transactions_dead_letters_and_passthrough_properties() {
        let mut config = KafkaStreamConfig::new(["b:1"], ["in"], "out");
        assert_eq!(config.delivery, DeliveryMode::ExactlyOnce);
        assert_eq!(config.dead_letter_topic(), "out.dlq");
        assert_eq!(config.transaction_messages(), DEFAULT_TRANSACTION_MESSAGES);
        assert_eq!(config.transactional_id("scorer"), "serving-scorer-0");
        config
            .apply([
                ("delivery", "at_least_once"),
                ("transaction_messages", "50"),
                ("transaction_ms", "20"),
                ("security.protocol", "PLAINTEXT"),
                ("client.id", "me"),
                ("instance_id", "b"),
            ])
            .unwrap();
        assert_eq!(config.delivery, DeliveryMode::AtLeastOnce);
        assert_eq!(config.transaction_messages(), 50);
        assert_eq!(config.transaction_time().as_millis(), 20);
        assert_eq!(config.properties["security.protocol"], "PLAINTEXT");
        assert_eq!(config.transactional_id("scorer"), "serving-scorer-b");
        let error = config.set("delivery", "twice").unwrap_err().to_string();
        assert!(error.contains("exactly_once or at_least_once"), "{error}");
        // A serving key with a typo is named, not passed to librdkafka.
        let error = config.set("transaction_size", "5").unwrap_err().to_string();
        assert!(error.contains("`transaction_size`"), "{error}");
        let spec = EndpointSpec::from_yaml(&SAVED.replace(
            "output_topic: scores\n",
            "output_topic: scores\n  delivery: at_least_once\n  properties: {client.id: x}\n",
        ))
        .unwrap();
        let read = KafkaStreamConfig::from_spec(&spec).unwrap();
        assert_eq!(read.delivery, DeliveryMode::AtLeastOnce);
        assert_eq!(read.properties["client.id"], "x");
    }

    #[test]
    fn input_and_output_formats() {
        let mut config = KafkaStreamConfig::new(["b:1"], ["in"], "out");
        assert_eq!(
            (config.input_format, config.output_format),
            (InputFormat::Bytes, OutputFormat::Json)
        );
        config
            .apply([("input_format", "json"), ("output_format", "bytes")])
            .unwrap();
        assert_eq!(
            (config.input_format, config.output_format),
            (InputFormat::Json, OutputFormat::Bytes)
        );
        let error = config.set("output_format", "avro").unwrap_err().to_string();
        assert!(error.contains("expected json or bytes"), "{error}");
        let spec = EndpointSpec::from_yaml(&SAVED.replace(
            "output_topic: scores\n",
            "output_topic: scores\n  output_format: bytes\n",
        ))
        .unwrap();
        assert_eq!(
            KafkaStreamConfig::from_spec(&spec).unwrap().output_format,
            OutputFormat::Bytes
        );
    }
}
