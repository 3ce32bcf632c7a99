//! The Open Inference Protocol routes as published clients use them: Triton's Python client
//! (`tritonclient[http]`) against the real web service, batches of rows, and hostile shapes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use serving::http::{Token, WebService};
use serving::prelude::*;
use serving::{BatchConfig, Capabilities, Context, PredictionRecord, RecordSink};

use crate::support::{PATIENCE, TestServer, client, error_of, iris, post_raw, python};

const TOKEN: &str = "oip-test-token";

/// Infers with `tritonclient.http` as its documentation shows: one `FP32` tensor of the
/// iris rows given, a batch of one (`[1, 4]`) and of all of them (`[N, 4]`), then prints what
/// it got as JSON.
const TRITON_CLIENT: &str = r#"
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, token, mode, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
binary = mode == "binary"
client = httpclient.InferenceServerClient(url=url)
headers = {"Cnvrg-Api-Key": token}
out = {"live": client.is_server_live(), "ready": client.is_model_ready("iris")}
rows = np.array(json.loads(rows), dtype=np.float32)
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
    response = result.get_response()
    species = result.as_numpy("species")
    out[name] = {
        "id": response["id"],
        "shape": list(species.shape),
        "datatype": response["outputs"][0]["datatype"],
        "species": [s.decode() if isinstance(s, bytes) else s for s in species.tolist()],
    }
print(json.dumps(out))
"#;

/// Keeps every record, for checking which ids the rows got.
#[derive(Debug, Default)]
struct Records(Mutex<Vec<PredictionRecord>>);

impl RecordSink for Records {
    fn record(&self, record: PredictionRecord) {
        self.0.lock().unwrap().push(record);
    }
}

impl Records {
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request_id.clone())
            .collect();
        ids.sort();
        ids
    }
}

async fn serve(endpoint: Arc<ModelEndpoint>) -> TestServer {
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .build()
        .unwrap();
    TestServer::start(service).await
}

/// Runs the Triton client script; its JSON output.
async fn triton_client(server: &TestServer, mode: &str, rows: &Value) -> Value {
    let (url, mode, rows) = (server.addr.to_string(), mode.to_owned(), rows.to_string());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .args(["-c", TRITON_CLIENT, &url, TOKEN, &mode, &rows])
            .output()
            .expect("python runs")
    });
    let output = tokio::time::timeout(PATIENCE * 2, run)
        .await
        .expect("the client finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "the Triton client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triton_client_infers_one_row_and_a_batch_of_rows() {
    let model = iris::Iris::train().expect("the iris model trains");
    let records = Arc::new(Records::default());
    let endpoint = Arc::new(
        model
            .endpoint("iris")
            .record_sink(Arc::clone(&records) as _)
            .build()
            .unwrap(),
    );
    let server = serve(Arc::clone(&endpoint)).await;
    let rows = json!([
        [5.1, 3.5, 1.4, 0.2],
        [7.0, 3.2, 4.7, 1.4],
        [6.3, 3.3, 6.0, 2.5]
    ]);
    // What the Rust predictor answers for each row, as the client sends it (in FP32).
    let mut expected = Vec::new();
    for row in rows.as_array().unwrap() {
        let fp32: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| f64::from(x.as_f64().unwrap() as f32))
            .collect();
        let prediction = endpoint
            .predict(PredictRequest::new(json!(fp32)).with_request_id("direct"))
            .await
            .unwrap();
        expected.push(prediction.output);
    }
    assert_eq!(
        expected,
        [json!("setosa"), json!("versicolor"), json!("virginica")]
    );

    let got = triton_client(&server, "json", &rows).await;
    assert_eq!((&got["live"], &got["ready"]), (&json!(true), &json!(true)));
    assert_eq!(
        got["one"],
        json!({"id": "req-one", "shape": [1], "datatype": "BYTES", "species": [expected[0]]}),
        "{got}"
    );
    assert_eq!(
        got["all"],
        json!({"id": "req-all", "shape": [3], "datatype": "BYTES", "species": expected}),
        "{got}"
    );
    // One record per row: a batch of one under the request's id, rows under `<id>-<i>`.
    let mut ids = records.ids();
    ids.retain(|id| id != "direct");
    assert_eq!(ids, ["req-all-0", "req-all-1", "req-all-2", "req-one"]);

    // The binary tensor extension is not supported: the client's binary mode is refused with
    // a clear error, never answered wrongly.
    let binary = triton_client(&server, "binary", &rows).await;
    for name in ["one", "all"] {
        let error = binary[name]["error"].as_str().unwrap_or_else(|| {
            panic!("binary mode answered: {binary}");
        });
        assert!(
            error.contains("400") && error.contains("binary_data=False"),
            "{error}"
        );
    }
    server.stop().await;
}

/// Declares batching and counts how it is called.
#[derive(Debug, Default)]
struct CountingBatches {
    batches: Mutex<Vec<usize>>,
    single: Mutex<usize>,
}

#[async_trait]
impl Predictor for CountingBatches {
    async fn predict(&self, input: Input, _: &Context) -> serving::Result<Value> {
        *self.single.lock().unwrap() += 1;
        sum(&input)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default().with_batch()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, _: &Context) -> Vec<serving::Result<Value>> {
        self.batches.lock().unwrap().push(inputs.len());
        inputs.iter().map(sum).collect()
    }
}

fn sum(input: &Input) -> serving::Result<Value> {
    let Input::Json(Value::Array(items)) = input else {
        return Err(serving::Error::invalid_request("not a row"));
    };
    Ok(json!(items.iter().filter_map(Value::as_f64).sum::<f64>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_a_batching_predictor_as_one_predict_batch() {
    let predictor = Arc::new(CountingBatches::default());
    let endpoint = ModelEndpoint::builder("summer", Arc::clone(&predictor))
        .batching(BatchConfig::new(8, Duration::from_millis(500)))
        .build()
        .unwrap();
    let server = serve(Arc::new(endpoint)).await;
    let body = json!({"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP64",
        "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}]});
    let (status, answer) = post_raw(
        &server.url("/v2/models/summer/infer"),
        Some(TOKEN),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["outputs"],
        json!([{"name": "output0", "shape": [3], "datatype": "FP64", "data": [3.0, 7.0, 11.0]}])
    );
    assert_eq!(*predictor.batches.lock().unwrap(), [3]);
    assert_eq!(*predictor.single.lock().unwrap(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_7000_dimension_shape_is_refused_and_the_server_keeps_serving() {
    let model = iris::Iris::train().expect("the iris model trains");
    let server = serve(Arc::new(model.endpoint("iris").build().unwrap())).await;
    let url = server.url("/v2/models/iris/infer");
    let ones = vec!["1"; 7_000].join(", ");
    let hostile = format!(
        r#"{{"inputs":[{{"name":"input0","shape":[{ones}],"datatype":"FP32","data":[5.1]}}]}}"#
    );
    assert!(hostile.len() > 20_000);
    let (status, body) = post_raw(&url, Some(TOKEN), hostile.into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("at most 32"), "{body}");
    // More elements than the body could hold, and a product past 64 bits.
    for shape in ["[1000000, 4]", "[4294967296, 4294967296, 2]"] {
        let body = format!(
            r#"{{"inputs":[{{"name":"input0","shape":{shape},"datatype":"FP32","data":[5.1]}}]}}"#
        );
        let (status, answer) = post_raw(&url, Some(TOKEN), body.into_bytes()).await;
        assert_eq!(status, 400, "{answer}");
        assert!(error_of(&answer).contains("at most"), "{answer}");
    }
    let normal = json!({"inputs": [{"name": "input0", "shape": [1, 4], "datatype": "FP32",
        "data": [5.1, 3.5, 1.4, 0.2]}]});
    let response = client()
        .post(&url)
        .header("Cnvrg-Api-Key", TOKEN)
        .json(&normal)
        .send()
        .await
        .expect("the server still answers");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["outputs"][0]["data"], json!(["setosa"]));
    server.stop().await;
}
