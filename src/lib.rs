//! `serving` turns a model's `predict` function into production endpoints: a web service, a
//! Kafka stream, or a batch job, with every prediction logged and measured.
//!
//! This crate is the facade: it re-exports [`serving_core`] (the traits, the in-memory
//! implementations, the one [`Error`]) and, behind features, the backend crates.
//!
//! ```no_run
//! use serving::prelude::*;
//!
//! # #[tokio::main] async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let model = predictor_fn(|petal_len: f64, petal_w: f64| -> Result<String> {
//!     Ok(if petal_len < 2.5 && petal_w < 1.0 { "setosa" } else { "versicolor" }.into())
//! });
//! let endpoint = ModelEndpoint::builder("iris", model).build()?;
//! let service = WebService::builder().endpoint(endpoint).build()?;
//! service.serve(serving::http::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! Every prediction can be recorded ([`prediction_log`]), measured and shown
//! (`serving::http::Observability`: `/metrics`, `/dashboard`, charts and logs APIs) and logged
//! as JSON lines ([`logging`]).
//!
//! # Features
//! | Name | Description | Default? |
//! |---|---|---|
//! | `http` | [`http`]: the web-service endpoint (axum) | yes |
//! | `kafka` | `kafka`: the Kafka-stream endpoint (rdkafka) | no |
//! | `batch` | `batch`: the batch endpoint (polars, object_store) | no |
//! | `k8s` | `k8s`: the Kubernetes backend (kube): manifests, server-side apply, the `ServingEndpoint` operator | no |
//!
//! Inside a pod deployed on Kubernetes, [`pod::Pod`] reads the mounted spec and token and
//! serves the endpoint of the spec's kind (`http`).

pub use serving_core::*;

pub mod logging;
#[cfg(feature = "http")]
pub mod pod;

/// The web-service endpoint.
#[cfg(feature = "http")]
pub use serving_http as http;

/// The Kafka-stream endpoint.
#[cfg(feature = "kafka")]
pub use serving_kafka as kafka;

/// The batch endpoint.
#[cfg(feature = "batch")]
pub use serving_batch as batch;

/// The Kubernetes backend.
#[cfg(feature = "k8s")]
pub use serving_k8s as k8s;

/// What reads a Kafka stream's input partitions from its brokers, for a Kubernetes
/// [`Deployer`](serving_k8s::Deployer) (and so the operator) to cap the stream's pods with when
/// its spec does not state `partitions`: `serving-k8s` has no Kafka client of its own.
#[cfg(all(feature = "k8s", feature = "kafka"))]
pub fn kafka_partition_counter() -> serving_k8s::PartitionCounter {
    std::sync::Arc::new(|spec| {
        Box::pin(async move {
            let config = serving_kafka::KafkaStreamConfig::from_spec(&spec)?;
            let partitions = serving_kafka::input_partitions(&config).await?;
            Ok(u32::try_from(partitions).unwrap_or(u32::MAX))
        })
    })
}

/// What most programs that serve a model need.
pub mod prelude {
    pub use serving_core::{
        CanaryPolicy, Context, Endpoint, EndpointSpec, Error, FileInput, Input, Lifecycle,
        ModelEndpoint, ModelRegistry, ModelUpdate, PredictRequest, Predictor, PredictorExt, Result,
        Value, json, log_metric, predictor_fn,
    };
    #[cfg(feature = "http")]
    pub use serving_http::{Observability, Token, WebService, WebServiceConfig};
}
