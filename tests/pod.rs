//! The pod side (`serving::pod`): the logic of `examples/k8s_pod.rs` run in-process against a
//! spec file and a token as a pod deployed by serving-k8s sees them: ready on `/readyz`, a
//! prediction with the token, refusal without it, and a drain on shutdown that finishes the
//! request in flight.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use serving::http::{Token, WebServiceConfig};
use serving::pod::Pod;
use serving::prelude::*;
use serving::{ModelRef, ModelRegistry};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::{PATIENCE, client, post_json};

/// The pod example, run as the pod runs it. It holds its own copy of the iris model's module,
/// as `support` does.
#[path = "../examples/k8s_pod.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod k8s_pod_example;

const TOKEN: &str = "pod-token-from-the-secret";

/// The spec as the ConfigMap holds it (`EndpointSpec::to_yaml`, what the manifests mount).
fn write_spec(dir: &Path, preprocess: &str) -> std::path::PathBuf {
    let mut spec = EndpointSpec::new("iris", ModelRef::new("iris-knn", "1"));
    spec.preprocess = Some(preprocess.into());
    let path = dir.join("spec.yaml");
    std::fs::write(&path, spec.to_yaml()).unwrap();
    path
}

struct Running {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<serving::Result<()>>,
}

impl Running {
    /// Signals the pod to stop (as SIGTERM does), then waits until it has drained and exited
    /// cleanly.
    fn stopped(mut self) -> impl std::future::Future<Output = ()> {
        self.stop.take().unwrap().send(()).unwrap();
        async move {
            tokio::time::timeout(PATIENCE, self.task)
                .await
                .expect("the pod stops")
                .unwrap()
                .unwrap();
        }
    }
}

async fn start(pod: Pod, registry: Arc<ModelRegistry>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = WebServiceConfig::default();
    config.drain_timeout_secs = 10;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pod.serve_on(registry, config, listener, async move {
        let _ = stopped.await;
    }));
    Running {
        base,
        stop: Some(stop),
        task,
    }
}

#[tokio::test]
async fn a_pod_serves_its_mounted_spec_behind_the_secrets_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), "standardise");
    let pod = Pod::from_file(&path, Some(Token::new(TOKEN))).unwrap();
    assert_eq!(pod.spec().name, "iris");
    let registry = k8s_pod_example::registry().unwrap();
    let running = start(pod, registry).await;

    let ready = client()
        .get(format!("{}/readyz", running.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let url = format!("{}/api/v1/endpoints/iris", running.base);
    let body = json!({"input_params": [5.1, 3.5, 1.4, 0.2]});
    let (status, answer) = post_json(&url, Some(TOKEN), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["prediction"], "setosa");
    let (status, _) = post_json(&url, Some("another-token"), &body).await;
    assert_eq!(status, 401);
    let (status, _) = post_json(&url, None, &body).await;
    assert_eq!(status, 401);

    running.stopped().await;
}

#[tokio::test]
async fn shutdown_drains_the_request_in_flight_then_the_pod_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), "slow-standardise");
    let registry = k8s_pod_example::registry().unwrap();
    // The quickstart's preprocess behind a second of work, so a request is in flight when
    // the signal comes.
    let scaler = crate::support::iris::Iris::train().unwrap().scaler();
    registry.register_preprocess("slow-standardise", move || {
        Ok(predictor_fn(
            move |a: f64, b: f64, c: f64, d: f64| -> Result<[f64; 4]> {
                std::thread::sleep(Duration::from_secs(1));
                Ok(scaler.apply([a, b, c, d]))
            },
        ))
    });
    let pod = Pod::from_file(&path, Some(Token::new(TOKEN))).unwrap();
    let running = start(pod, registry).await;
    let url = format!("{}/api/v1/endpoints/iris", running.base);
    let in_flight = tokio::spawn(async move {
        post_json(
            &url,
            Some(TOKEN),
            &json!({"input_params": [5.1, 3.5, 1.4, 0.2]}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let base = running.base.clone();
    let exited = running.stopped();

    let (status, answer) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight finishes: {answer}");
    assert!(answer["prediction"].is_string(), "{answer}");
    exited.await;
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "well within the drain timeout"
    );
    let refused = client().get(format!("{base}/readyz")).send().await;
    assert!(refused.is_err(), "nothing listens after the drain");
}

#[tokio::test]
async fn a_pod_without_its_token_or_with_a_bad_spec_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), "standardise");
    let error = Pod::from_file(&path, None).unwrap_err().to_string();
    assert!(
        error.contains("endpoint `iris` requires a token"),
        "{error}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: iris\nmodel: {name: m, version: '1'}\ncolour: red\n",
    )
    .unwrap();
    let error = Pod::from_file(&bad, Some(Token::new(TOKEN)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("bad.yaml") && error.contains("unknown field `colour`"),
        "{error}"
    );
    let missing = Pod::from_file(&dir.path().join("absent.yaml"), Some(Token::new(TOKEN)))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("read the endpoint spec"), "{missing}");
    // A model the binary did not register: a clear error before anything listens.
    let mut spec = EndpointSpec::new("iris", ModelRef::new("unknown-model", "1"));
    spec.preprocess = None;
    std::fs::write(&path, spec.to_yaml()).unwrap();
    let pod = Pod::from_file(&path, Some(Token::new(TOKEN))).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = pod
        .serve_on(
            k8s_pod_example::registry().unwrap(),
            WebServiceConfig::default(),
            listener,
            async {},
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown-model"), "{error}");
}

/// A batch endpoint's pod: its runs' REST API over the datasets, the model from the registry.
#[cfg(feature = "batch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_pod_serves_its_runs_over_the_datasets() {
    use serving::batch::BatchJobConfig;
    use serving::datasets::{Datasets, Overwrite};
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    let csv = "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5\n";
    datasets
        .dataset("iris")
        .unwrap()
        .put("in/iris.csv", csv.into(), Overwrite::Refuse)
        .await
        .unwrap();
    let mut spec = EndpointSpec::new("flowers", ModelRef::new("iris-knn", "1"));
    spec.preprocess = Some("standardise".into());
    spec.kind = BatchJobConfig::default().into();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, spec.to_yaml()).unwrap();
    let pod = Pod::from_file(&path, Some(Token::new(TOKEN)))
        .unwrap()
        .with_datasets(datasets);
    let running = start(pod, k8s_pod_example::registry().unwrap()).await;

    let url = format!("{}/api/v1/endpoints/flowers/batches", running.base);
    let body = json!({"input_file": "in/iris.csv", "output_file": "out/p.csv", "dataset": "iris"});
    let (status, submitted) = post_json(&url, Some(TOKEN), &body).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let run = loop {
        let run: Value = client()
            .get(format!("{url}/{id}"))
            .header(serving::http::TOKEN_HEADER, TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if run["status"] != "queued" && run["status"] != "running" {
            break run;
        }
        assert!(started.elapsed() < PATIENCE, "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["rows_predicted"], 3);
    let (status, _) = post_json(&url, None, &body).await;
    assert_eq!(status, 401, "the token is required");
    running.stopped().await;
}

/// A Kafka stream's pod: it joins its group (then `/readyz` answers 200), predicts each message
/// of its input onto its output, and on shutdown drains and commits.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_pod_predicts_its_input_topic_onto_its_output() {
    use crate::kafka::{BROKER, brokers, create_topics, produce, producer, read_committed, unique};
    use serving::kafka::KafkaStreamConfig;
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, output) = (unique("pod-in"), unique("pod-out"));
    create_topics(
        &brokers,
        &[(&input, 1), (&output, 1), (&format!("{output}.dlq"), 1)],
    )
    .await;
    let mut kafka = KafkaStreamConfig::new(brokers.split(','), vec![input.clone()], output.clone());
    kafka.group_id = Some(unique("pod-group"));
    let mut spec = EndpointSpec::new("iris", ModelRef::new("iris-knn", "1"));
    spec.preprocess = Some("measurements".into());
    spec.kind = kafka.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, spec.to_yaml()).unwrap();
    let pod = Pod::from_file(&path, Some(Token::new(TOKEN))).unwrap();
    let running = start(pod, k8s_pod_example::registry().unwrap()).await;

    let started = Instant::now();
    loop {
        let ready = client()
            .get(format!("{}/readyz", running.base))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if ready.ok() == Some(200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "joined its group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(
        &producer(&brokers),
        &input,
        "a",
        "[5.1, 3.5, 1.4, 0.2]",
        "t",
    )
    .await;
    let read = read_committed(
        &brokers,
        &output,
        1,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0].key.as_deref(), Some("a"));
    assert_eq!(read[0].value, json!("setosa"), "{read:?}");
    running.stopped().await;
}
