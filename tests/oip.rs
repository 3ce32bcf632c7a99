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

/// Infers as `tritonclient.http`'s documentation shows, with a request id: the iris rows given
/// as one `FP32` batch of one (`[1, 4]`) and of all of them (`[N, 4]`), in the client's JSON
/// or binary mode; prints what it got (or the refusal) as JSON.
const TRITON_WITH_IDS: &str = r#"
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, token, mode, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
binary = mode == "binary"
client = httpclient.InferenceServerClient(url=url)
headers = {"Cnvrg-Api-Key": token}
rows = np.array(json.loads(rows), dtype=np.float32)
out = {}
for name, batch in [("one", rows[:1]), ("all", rows)]:
    tensor = httpclient.InferInput("input0", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("species", binary_data=binary)
    try:
        result = client.infer(
            "iris", [tensor], outputs=[wanted], request_id=f"req-{name}", headers=headers
        )
    except Exception as error:  # the server's refusal, for the test to check
        out[name] = {"error": str(error)}
        continue
    species = result.as_numpy("species")
    out[name] = {
        "id": result.get_response()["id"],
        "shape": list(species.shape),
        "species": [s.decode() if isinstance(s, bytes) else s for s in species.tolist()],
    }
print(json.dumps(out))
"#;

/// Keeps every record's request id.
#[derive(Debug, Default)]
struct RecordedIds(Mutex<Vec<String>>);

impl serving::RecordSink for RecordedIds {
    fn record(&self, record: serving::PredictionRecord) {
        self.0.lock().unwrap().push(record.request_id);
    }
}

async fn triton_with_ids(server: &TestServer, mode: &str, rows: &Value) -> Value {
    let (url, mode, rows) = (server.addr.to_string(), mode.to_owned(), rows.to_string());
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", TRITON_WITH_IDS, &url, TOKEN, &mode, &rows])
            .output()
            .expect("the Python client runs")
    });
    let output = tokio::time::timeout(PATIENCE * 2, run)
        .await
        .expect("the client finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_is_recorded_and_the_binary_extension_is_refused_clearly() {
    let model = iris::Iris::train().expect("the iris model trains");
    let ids = Arc::new(RecordedIds::default());
    let endpoint = Arc::new(
        model
            .endpoint("iris")
            .record_sink(Arc::clone(&ids) as _)
            .build()
            .unwrap(),
    );
    let service = WebService::builder()
        .endpoint_with_token(Arc::clone(&endpoint), Token::new(TOKEN))
        .build()
        .unwrap();
    let server = TestServer::start(service).await;
    let rows = json!([
        [5.1, 3.5, 1.4, 0.2],
        [7.0, 3.2, 4.7, 1.4],
        [6.3, 3.3, 6.0, 2.5]
    ]);
    // What the Rust predictor answers for each row as the client sends it (in FP32).
    let mut expected = Vec::new();
    for row in rows.as_array().unwrap() {
        let fp32: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| f64::from(x.as_f64().unwrap() as f32))
            .collect();
        let request = serving::PredictRequest::new(json!(fp32)).with_request_id("direct");
        expected.push(
            serving::Endpoint::predict(&*endpoint, request)
                .await
                .unwrap()
                .output,
        );
    }

    let got = triton_with_ids(&server, "json", &rows).await;
    assert_eq!(
        got["one"],
        json!({"id": "req-one", "shape": [1], "species": [expected[0]]}),
        "{got}"
    );
    assert_eq!(
        got["all"],
        json!({"id": "req-all", "shape": [3], "species": expected}),
        "{got}"
    );
    // One record per row: a batch of one under the request's id, rows under `<id>-<row>`.
    let mut recorded = ids.0.lock().unwrap().clone();
    recorded.retain(|id| id != "direct");
    recorded.sort();
    assert_eq!(recorded, ["req-all-0", "req-all-1", "req-all-2", "req-one"]);

    // Binary mode (the extension is not supported) is a 400 that says what to do, not a
    // confusing parse error or a wrong answer.
    let binary = triton_with_ids(&server, "binary", &rows).await;
    for name in ["one", "all"] {
        let error = binary[name]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("binary mode answered: {binary}"));
        assert!(
            error.contains("400") && error.contains("binary_data=False"),
            "{error}"
        );
    }
    server.stop().await;
}
