//! The Kafka-stream endpoint of `serving` (planned: only its configuration exists yet).
//!
//! It will consume the input topics, predict each message (raw bytes in) with a
//! [`serving_core::ModelEndpoint`], and produce to the output topic. A new endpoint starts at
//! the latest offset; rolling a new model onto a running stream resumes exactly where the old
//! one stopped; replicas are bounded by the input partitions.
//!
//! Its settings are [`KafkaStreamConfig`]: the `kafka_stream` section of an
//! [`EndpointSpec`](serving_core::EndpointSpec), KEY-VALUE pairs, or `SERVING_KAFKA_*`
//! environment variables. This crate owns that section: a new Kafka setting is a field here,
//! never a change to the core.
//!
//! ```
//! use serving_core::EndpointSpec;
//! use serving_kafka::KafkaStreamConfig;
//!
//! let spec = EndpointSpec::from_yaml(
//!     "name: scorer\nmodel: {name: tree, version: '1'}\nkind:\n  type: kafka_stream\n  brokers: ['127.0.0.1:9092']\n  input_topics: [transactions]\n  output_topic: scores\n",
//! )?;
//! let config = KafkaStreamConfig::from_spec(&spec)?;
//! assert_eq!(config.output_topic, "scores");
//! assert_eq!(config.group_id(&spec.name), "serving-scorer");
//! # Ok::<(), serving_core::Error>(())
//! ```

mod config;

pub use config::{KafkaStreamConfig, KafkaStreamKey};
