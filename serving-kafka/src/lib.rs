//! The Kafka-stream endpoint of `serving`: [`KafkaStream`].
//!
//! It consumes the input topics, predicts each message (raw bytes in) with a
//! [`serving_core::ModelEndpoint`], and produces to the output topic, exactly once by default. A new endpoint starts at
//! the latest offset; rolling a new model onto a running stream resumes exactly where the old
//! one stopped; replicas are bounded by the input partitions.
//!
//! Its settings are [`KafkaStreamConfig`]: the `kafka_stream` section of an
//! [`EndpointSpec`](serving_core::EndpointSpec), KEY-VALUE pairs, or `SERVING_KAFKA_*`
//! environment variables. This crate owns that section: a new Kafka setting is a field here,
//! never a change to the core.
//!
//! A stream runs an endpoint as the web service does: versions, canary (sticky by message
//! key), shadow, metrics and the prediction log work unchanged, and a rollover switches between
//! two messages of each partition. Its own counters ([`KafkaMetrics`]) go to `/metrics` with
//! [`KafkaStream::with_observability`] and to the admin status under `kafka`; its workers scale
//! on consumer lag ([`desired_workers`]) within the autoscale bounds capped by the input
//! partitions ([`replica_bounds`]); [`JoinedEndpoint`] makes a web side's `/readyz` wait until
//! the stream holds its starting offsets. `examples/kafka_stream.rs` puts it all together.
//!
//! ```no_run
//! use serving_core::{ModelEndpoint, Observability, Result, predictor_fn, shutdown_signal};
//! use serving_kafka::{KafkaStream, KafkaStreamConfig};
//!
//! # #[tokio::main] async fn main() -> Result<()> {
//! let observability = Observability::new();
//! let model = predictor_fn(|amount: f64| -> Result<bool> { Ok(amount > 1000.0) });
//! let endpoint = observability
//!     .instrument(ModelEndpoint::builder("fraud", model))
//!     .build()?;
//! let config = KafkaStreamConfig::new(["127.0.0.1:9092"], ["payments"], "fraud-scores");
//! let summary = KafkaStream::new(endpoint, config)?
//!     .with_observability(&observability)
//!     .run(shutdown_signal())
//!     .await?;
//! println!("{} messages predicted exactly once", summary.committed);
//! # Ok(()) }
//! ```
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
mod metrics;
mod ready;
mod scaling;
mod stream;

pub use config::{
    DEFAULT_TRANSACTION_MESSAGES, DEFAULT_TRANSACTION_MS, DeliveryMode, InputFormat,
    KafkaStreamConfig, KafkaStreamKey, OutputFormat,
};
pub use metrics::KafkaMetrics;
/// The Kafka client this crate is built on, for callers that create topics or read outputs.
pub use rdkafka;
pub use ready::JoinedEndpoint;
pub use scaling::{desired_workers, replica_bounds};
pub use stream::{
    ERROR_HEADER, KafkaMessage, KafkaStream, LATENCY_HEADER, MODEL_VERSION_HEADER,
    REQUEST_ID_HEADER, SOURCE_HEADER, STATUS_HEADER, StreamSummary, input_partitions,
};
