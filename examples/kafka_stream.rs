//! Serves the quickstart's iris classifier on a Kafka stream: every message of the input
//! topics is predicted, exactly once, onto the output topic.
//!
//! ```text
//! scripts/components/kafka start                      # a local broker on 127.0.0.1:9092
//! SERVING_INPUT_TOPICS=iris-in SERVING_OUTPUT_TOPIC=iris-out \
//!   cargo run --release --features kafka --example kafka_stream
//! ```
//!
//! | Variable | Meaning | Default |
//! |---|---|---|
//! | `SERVING_KAFKA_BROKERS` | bootstrap brokers, comma-separated | `127.0.0.1:9092` |
//! | `SERVING_INPUT_TOPICS` | topics to consume, comma-separated | `iris-in` |
//! | `SERVING_OUTPUT_TOPIC` | topic to produce the predictions to | `iris-out` |
//! | `SERVING_KAFKA_GROUP` | consumer group | `serving-iris` |
//! | `SERVING_KAFKA_DELIVERY` | `exactly_once` or `at_least_once` | `exactly_once` |
//! | `SERVING_ADDR` | the web side: `/healthz`, `/readyz`, `/metrics`, dashboard, admin API | `127.0.0.1:8080` |
//! | `SERVING_ADMIN_TOKEN` | the admin API's bearer token | generated, printed |
//!
//! Each input value is the four measurements, `[5.1, 3.5, 1.4, 0.2]` (or
//! `{"input_params": [5.1, 3.5, 1.4, 0.2]}`); each output value is `{"prediction": "setosa"}`.
//! Two versions of the model are registered, `1` (5 neighbours) and `2` (9 neighbours), so a
//! rollover can be driven over the admin API while the stream runs:
//!
//! ```text
//! curl -X POST localhost:8080/api/v1/admin/endpoints/iris/update \
//!   -H "Authorization: Bearer $SERVING_ADMIN_TOKEN" -d '{"version": "2", "canary_percent": 50}'
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it gracefully: the messages in flight finish, the last
//! transaction commits and the stream leaves its group.

#[path = "models/iris.rs"]
#[allow(dead_code)] // the quickstart's endpoint builder is not used here
mod iris;

use std::future::Future;
use std::sync::Arc;

use serving::http::{Observability, Token, WebService, shutdown_signal};
use serving::kafka::{DeliveryMode, JoinedEndpoint, KafkaStream, KafkaStreamConfig};
use serving::prediction_log::PredictionLogBuilder;
use serving::prelude::*;
use serving::{InMemoryAutoscaler, ModelRef};
use tokio::net::TcpListener;

/// The endpoint's name.
pub const ENDPOINT: &str = "iris";
/// The registered model's name.
pub const MODEL: &str = "iris-knn";

/// What the example reads from its environment.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `SERVING_KAFKA_BROKERS`.
    pub brokers: String,
    /// `SERVING_INPUT_TOPICS`.
    pub input_topics: Vec<String>,
    /// `SERVING_OUTPUT_TOPIC`.
    pub output_topic: String,
    /// `SERVING_KAFKA_GROUP`.
    pub group: String,
    /// `SERVING_KAFKA_DELIVERY`.
    pub delivery: DeliveryMode,
    /// `SERVING_ADMIN_TOKEN`; generated when unset.
    pub admin_token: Option<String>,
}

impl StreamSettings {
    /// From the environment, with the defaults of the table above.
    pub fn from_env() -> std::result::Result<Self, Box<dyn std::error::Error>> {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Ok(StreamSettings {
            brokers: var("SERVING_KAFKA_BROKERS", "127.0.0.1:9092"),
            input_topics: var("SERVING_INPUT_TOPICS", "iris-in")
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            output_topic: var("SERVING_OUTPUT_TOPIC", "iris-out"),
            group: var("SERVING_KAFKA_GROUP", &format!("serving-{ENDPOINT}")),
            delivery: var("SERVING_KAFKA_DELIVERY", "exactly_once")
                .parse()
                .map_err(|e| format!("SERVING_KAFKA_DELIVERY: {e}"))?,
            admin_token: std::env::var("SERVING_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }
}

/// Reads a message's value as the four measurements: `[a, b, c, d]` or
/// `{"input_params": [a, b, c, d]}`.
fn measurements(value: Value) -> Result<[f64; 4]> {
    let row = match value {
        Value::Object(mut object) => object.remove("input_params").ok_or_else(|| {
            Error::rejected("expected [a, b, c, d] or {\"input_params\": [a, b, c, d]}")
        })?,
        other => other,
    };
    serde_json::from_value::<[f64; 4]>(row)
        .map_err(|e| Error::rejected(format!("expected four measurements in cm: {e}")))
}

/// The registry of the two versions and the preprocess that decodes and standardises a
/// message.
fn registry() -> std::result::Result<Arc<ModelRegistry>, Box<dyn std::error::Error>> {
    let registry = Arc::new(ModelRegistry::new());
    let scaler = iris::Iris::train()?.scaler();
    registry.register_preprocess("measurements", move || {
        Ok(predictor_fn(move |value: Value| -> Result<[f64; 4]> {
            let row = measurements(value)?;
            if row.iter().any(|m| *m <= 0.0) {
                return Err(Error::rejected(format!(
                    "measurements are lengths in cm and must be positive, got {row:?}"
                )));
            }
            Ok(scaler.apply(row))
        }))
    });
    for (version, k) in [("1", 5), ("2", 9)] {
        let model = Arc::new(iris::Iris::train_with_k(k)?);
        registry.register(MODEL, version, move || {
            let model = Arc::clone(&model);
            Ok(predictor_fn(
                move |a: f64, b: f64, c: f64, d: f64| -> Result<Value> {
                    Ok(json!({ "prediction": model.species([a, b, c, d])? }))
                },
            ))
        });
    }
    Ok(registry)
}

/// Creates the topics that do not exist yet (the test broker does not create them on first
/// use): each input with 3 partitions, the output and its dead-letter topic with 1.
async fn ensure_topics(
    settings: &StreamSettings,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use serving::kafka::rdkafka::ClientConfig;
    use serving::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use serving::kafka::rdkafka::client::DefaultClientContext;
    use serving::kafka::rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()?;
    let dead_letters = format!("{}.dlq", settings.output_topic);
    let topics: Vec<NewTopic<'_>> = settings
        .input_topics
        .iter()
        .map(|t| (t.as_str(), 3))
        .chain([
            (settings.output_topic.as_str(), 1),
            (dead_letters.as_str(), 1),
        ])
        .map(|(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    for created in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match created {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, error)) => return Err(format!("creating topic {topic}: {error}").into()),
        }
    }
    Ok(())
}

/// What [`start`] runs: the stream and its web side.
pub struct Started {
    /// The admin API's token.
    pub admin_token: Token,
    /// Ends when both have stopped.
    pub done: tokio::task::JoinHandle<std::result::Result<(), String>>,
}

/// Starts the stream and serves its web side on `listener` until `shutdown` completes.
pub async fn start(
    settings: StreamSettings,
    observability: Observability,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<Started, Box<dyn std::error::Error>> {
    let registry = registry()?;
    ensure_topics(&settings).await?;
    let mut kafka = KafkaStreamConfig::new(
        settings.brokers.split(',').map(str::trim),
        settings.input_topics.clone(),
        settings.output_topic.clone(),
    );
    kafka.group_id = Some(settings.group.clone());
    kafka.delivery = settings.delivery;
    let mut spec = EndpointSpec::new(ENDPOINT, ModelRef::new(MODEL, "1"));
    spec.preprocess = Some("measurements".into());
    spec.kind = kafka.clone().into();
    // One autoscaler for the endpoint and the stream: the admin status shows the workers.
    let autoscaler = Arc::new(InMemoryAutoscaler::new());
    let endpoint = Arc::new(
        observability
            .instrument(ModelEndpoint::from_spec(spec, &registry)?)
            .autoscaler(autoscaler.clone())
            .build()?,
    );
    let stream = KafkaStream::new(Arc::clone(&endpoint), kafka)?
        .with_observability(&observability)
        .with_autoscaler(autoscaler);
    let admin_token = settings
        .admin_token
        .clone()
        .map_or_else(Token::generate, Token::new);
    let service = WebService::builder()
        .observability(observability)
        .admin_token(admin_token.clone())
        .endpoint(JoinedEndpoint::new(Arc::clone(&endpoint), stream.ready()))
        .build()?;
    let router = WebService::with_fallbacks(service.ops_router().merge(service.admin_router()));

    // One signal stops both: the stream drains and commits, the web side closes after it.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let streaming = tokio::spawn(stream.run(stop(stop_rx.clone())));
    let web = axum::serve(listener, router).with_graceful_shutdown(stop(stop_rx));
    let serving = tokio::spawn(async move { web.await });
    let done = tokio::spawn(async move {
        let summary = streaming.await.map_err(|e| e.to_string())?;
        let summary = summary.map_err(|e| e.to_string())?;
        tracing::info!(?summary, "kafka stream stopped");
        serving
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    });
    Ok(Started { admin_token, done })
}

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `start`
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    serving::logging::init_json()?;
    let settings = StreamSettings::from_env()?;
    let addr = std::env::var("SERVING_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let prediction_log = PredictionLogBuilder::from_env()?.build()?;
    let observability = Observability::new()
        .with_prediction_log(prediction_log)
        .with_log_lines(true);
    let listener = TcpListener::bind(&addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let started = start(settings.clone(), observability, listener, shutdown_signal()).await?;
    let token = started.admin_token.expose();
    let (inputs, output) = (settings.input_topics.join(","), &settings.output_topic);
    let input = settings.input_topics.first().map_or("", String::as_str);
    let brokers = &settings.brokers;
    println!(
        "Streaming {inputs} -> {output} on {brokers} ({}, group {})",
        settings.delivery, settings.group
    );
    println!("Try it:");
    println!("  echo 'flower-1:[5.1, 3.5, 1.4, 0.2]' | kcat -P -b {brokers} -t {input} -K:");
    println!(
        "  kcat -C -b {brokers} -t {output} -X isolation.level=read_committed -f '%k %s %h\\n'"
    );
    println!("Watch it:");
    println!("  ready:      {base}/readyz");
    println!("  Prometheus: {base}/metrics");
    println!("  dashboard:  {base}/dashboard#endpoint={ENDPOINT}");
    println!(
        "  status:     curl -s {base}/api/v1/admin/endpoints/{ENDPOINT} -H 'Authorization: Bearer {token}'"
    );
    println!("Roll version 2 out to half the keys:");
    println!(
        "  curl -s -X POST {base}/api/v1/admin/endpoints/{ENDPOINT}/update -H 'Authorization: Bearer {token}' -d '{{\"version\": \"2\", \"canary_percent\": 50}}'"
    );
    println!("Press Ctrl-C to stop.");
    started.done.await??;
    println!("Stopped.");
    Ok(())
}
