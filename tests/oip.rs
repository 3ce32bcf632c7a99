//! Open Inference Protocol clients as they are written: Triton's published Python client
//! (JSON mode) against the real server, and shapes that must be refused before any work.

use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use serving::http::{Token, WebService};
use serving::{Capabilities, Context, Error, Input, ModelEndpoint, Predictor, Result};

use crate::support::{PATIENCE, TestServer, client, iris, python};

const TOKEN: &str = "oip-token";

/// Adds its two arguments and keeps the size of every batch it was given.
#[derive(Debug, Default)]
struct BatchingAdder {
    batches: Mutex<Vec<usize>>,
}

impl BatchingAdder {
    fn add(input: &Input) -> Result<Value> {
        let args: Vec<i64> = serde_json::from_value(input.to_json())
            .map_err(|e| Error::invalid_request(e.to_string()))?;
        Ok(json!(args.iter().sum::<i64>()))
    }
}

#[async_trait::async_trait]
impl Predictor for BatchingAdder {
    async fn predict(&self, input: Input, _ctx: &Context) -> Result<Value> {
        self.batches.lock().unwrap().push(1);
        Self::add(&input)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default().with_batch()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, _ctx: &Context) -> Vec<Result<Value>> {
        self.batches.lock().unwrap().push(inputs.len());
        inputs.iter().map(Self::add).collect()
    }
}

async fn serve(adder: Arc<BatchingAdder>) -> TestServer {
    let iris = iris::Iris::train().expect("the iris model trains");
    let adder = ModelEndpoint::builder("adder", adder)
        .worker_setting("max_batch_size", "8")
        .unwrap()
        .worker_setting("max_batch_wait_ms", "200")
        .unwrap()
        .build()
        .unwrap();
    let service = WebService::builder()
        .endpoint_with_token(iris.endpoint("iris").build().unwrap(), Token::new(TOKEN))
        .endpoint_with_token(adder, Token::new(TOKEN))
        .build()
        .unwrap();
    TestServer::start(service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_client_gets_one_prediction_per_row_of_a_batch() {
    let adder = Arc::new(BatchingAdder::default());
    let server = serve(Arc::clone(&adder)).await;
    let address = server.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oip_client.py"))
            .args([address.as_str(), TOKEN])
            .output()
            .expect("the Python client runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_slice(&output.stdout).expect("the client prints JSON");
    assert_eq!(answers["live"], true);
    // `[1, 4]`, what the client sends for one row, was answered 422 before.
    assert_eq!(
        answers["one_row"],
        json!({"shape": [1], "data": ["setosa"], "model_version": "1"})
    );
    assert_eq!(
        answers["three_rows"],
        json!({"shape": [3], "data": ["setosa", "versicolor", "virginica"], "model_version": "1"})
    );
    assert_eq!(answers["batched"]["shape"], json!([4]));
    assert_eq!(answers["batched"]["data"], json!([3, 7, 11, 15]));
    // The four rows reached the batching model together, not one at a time.
    assert_eq!(*adder.batches.lock().unwrap(), [4]);
    server.stop().await;
}

#[tokio::test]
async fn a_shape_of_thousands_of_dimensions_is_refused_and_the_server_lives() {
    let server = serve(Arc::new(BatchingAdder::default())).await;
    let infer = |body: Value| {
        client()
            .post(server.url("/v2/models/adder/infer"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    // About 21 KB: this aborted the process with a stack overflow while reshaping.
    let deep = json!({"inputs": [{"name": "x", "shape": vec![1; 7_000], "datatype": "FP32", "data": [5.1]}]});
    let response = tokio::time::timeout(PATIENCE, infer(deep))
        .await
        .expect("answered in time")
        .expect("the server answers");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("at most 32"),
        "{error}"
    );
    let huge = json!({"inputs": [{"name": "x", "shape": [u64::MAX, u64::MAX], "datatype": "FP32", "data": [5.1]}]});
    assert_eq!(infer(huge).await.unwrap().status(), 400);
    let normal =
        json!({"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [2, 3]}]});
    let response = infer(normal).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outputs"][0]["data"], json!([5]));
    server.stop().await;
}
