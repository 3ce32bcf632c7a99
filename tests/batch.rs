//! The batch endpoint end to end: the iris model over a CSV on the local store and on a real
//! S3-compatible server, both output formats, a run killed in a child process (no partial
//! output; the rerun completes), and runs submitted, listed, fetched, cancelled and compared
//! over REST.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serving::batch::{BatchJobConfig, BatchService};
use serving::datasets::{Datasets, Overwrite};
use serving::http::{Token, WebService};
use serving::{
    BatchRequest, BatchRuns, BatchStatus, Bytes, Endpoint, EndpointSpec, ModelRef, ModelRegistry,
    OutputFormat, PredictRequest, Result, predictor_fn,
};

use serving::Settings as _;

use crate::support::{PATIENCE, TestServer, iris::Iris};

fn batch_spec(name: &str, model: &str, version: &str, settings: &[(&str, &str)]) -> EndpointSpec {
    let mut config = BatchJobConfig::default();
    for (key, value) in settings {
        config.set(key, value).unwrap();
    }
    let mut spec = EndpointSpec::new(name, ModelRef::new(model, version));
    if model == "iris-knn" {
        spec.preprocess = Some("standardise".to_owned());
    }
    spec.kind = config.into();
    spec
}

/// The iris dataset as a CSV with a header, and each row's measurements.
fn iris_csv() -> (String, Vec<[f64; 4]>) {
    let dataset = smartcore::dataset::iris::load_dataset();
    let mut text = String::from("sepal_length,sepal_width,petal_length,petal_width\n");
    let mut rows = Vec::new();
    for row in dataset.data.chunks_exact(dataset.num_features) {
        let row: [f64; 4] = std::array::from_fn(|i| f64::from(row[i]));
        text.push_str(&format!("{},{},{},{}\n", row[0], row[1], row[2], row[3]));
        rows.push(row);
    }
    (text, rows)
}

async fn iris_run_on(datasets: Datasets) {
    let iris = Iris::train().unwrap();
    let registry = Arc::new(ModelRegistry::new());
    iris.register(&registry);
    let service = BatchService::builder(datasets.clone())
        .registry(registry)
        .endpoint(batch_spec(
            "iris-batch",
            "iris-knn",
            "1",
            &[("chunk_rows", "40")],
        ))
        .unwrap()
        .build()
        .unwrap();
    let (text, rows) = iris_csv();
    let dataset = datasets.dataset("flowers").unwrap();
    dataset
        .put("in/iris.csv", Bytes::from(text.clone()), Overwrite::Refuse)
        .await
        .unwrap();
    let run = service
        .run(
            "iris-batch",
            BatchRequest::new("in/iris.csv", "out/full.csv", "flowers"),
        )
        .await
        .unwrap();
    assert_eq!(run.status, BatchStatus::Succeeded, "{run:?}");
    assert_eq!(
        (run.rows_read, run.rows_predicted, run.rows_failed),
        (150, 150, 0)
    );
    assert_eq!(run.metrics["petal_length_cm"].count, 150);
    // The same predictions as the web endpoint gives, row for row.
    let web = iris.endpoint("iris").build().unwrap();
    let output = dataset.get("out/full.csv").await.unwrap();
    let mut reader = csv::Reader::from_reader(output.as_ref());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "sepal_length",
            "sepal_width",
            "petal_length",
            "petal_width",
            "prediction",
            "error"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), rows.len(), "one output row per input row");
    for (record, row) in records.iter().zip(&rows) {
        let expected = web
            .predict(PredictRequest::new(json!(row)))
            .await
            .unwrap()
            .output;
        let cells: Vec<f64> = (0..4).map(|i| record[i].parse().unwrap()).collect();
        assert_eq!(cells, row.to_vec(), "input kept in order");
        assert_eq!(Value::from(&record[4]), expected, "{record:?}");
        assert_eq!(&record[5], "");
    }
    let original = service
        .run(
            "iris-batch",
            BatchRequest::new("in/iris.csv", "out/original.csv", "flowers")
                .with_format(OutputFormat::Original),
        )
        .await
        .unwrap();
    assert_eq!(original.status, BatchStatus::Succeeded);
    let output = dataset.get("out/original.csv").await.unwrap();
    let mut reader = csv::Reader::from_reader(output.as_ref());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["input", "prediction"]
    );
    let first = reader.records().next().unwrap().unwrap();
    let input: Vec<f64> = serde_json::from_str(&first[0]).unwrap();
    assert_eq!(input, rows[0].to_vec());
    assert_eq!(&first[1], "setosa");
    let comparison = service
        .compare("iris-batch", &[run.id.clone(), original.id.clone()])
        .await
        .unwrap();
    assert_eq!(comparison.differences.len(), 1);
    assert_eq!(
        (
            comparison.differences[0].rows,
            comparison.differences[0].differing
        ),
        (150, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_batch_on_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    iris_run_on(Datasets::local(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iris_batch_on_an_s3_server() {
    let datasets = crate::datasets::s3_datasets("batch").await;
    iris_run_on(datasets.clone()).await;
    // The run records live beside the datasets, in the bucket.
    let records = datasets.system_path("batch-runs/iris-batch").unwrap();
    let listed = datasets
        .store()
        .list_with_delimiter(Some(&records))
        .await
        .unwrap();
    assert_eq!(listed.objects.len(), 2);
}

const CHILD_ENV: &str = "SERVING_TEST_BATCH_CHILD";
const KILL_ROWS: usize = 200_000;

fn slow_registry() -> Arc<ModelRegistry> {
    let registry = Arc::new(ModelRegistry::new());
    registry.register("padded", "1", || {
        Ok(predictor_fn(|a: f64, pad: String| -> Result<f64> {
            if a as u64 % 50 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(a + pad.len() as f64)
        }))
    });
    registry
}

fn slow_service(dir: &std::path::Path) -> BatchService {
    BatchService::builder(Datasets::local(dir).unwrap())
        .registry(slow_registry())
        .endpoint(batch_spec(
            "padded",
            "padded",
            "1",
            &[("chunk_rows", "2000")],
        ))
        .unwrap()
        .build()
        .unwrap()
}

/// Run by `a_killed_run_leaves_no_partial_output`, in a child process it kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of a_killed_run_leaves_no_partial_output"]
async fn batch_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by the killed-run test");
    let service = slow_service(std::path::Path::new(&dir));
    let run = service
        .run(
            "padded",
            BatchRequest::new("big.csv", "out/big.csv", "data"),
        )
        .await
        .unwrap();
    panic!("the child was meant to be killed first: {run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_leaves_no_partial_output_and_its_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    let pad = "p".repeat(100);
    let mut text = String::with_capacity(KILL_ROWS * 110);
    text.push_str("a,pad\n");
    for i in 0..KILL_ROWS {
        text.push_str(&format!("{i},{pad}\n"));
    }
    let data = datasets.dataset("data").unwrap();
    data.put("big.csv", Bytes::from(text), Overwrite::Refuse)
        .await
        .unwrap();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "batch::batch_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its multipart upload is under way: part of the output is in the store.
    let out = dir.path().join("data/out");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let staging = std::fs::read_dir(&out)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("big.csv#"))
            })
            .unwrap_or(false);
        if staging {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "the child's upload never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(
        data.head("out/big.csv").await.unwrap(),
        None,
        "no partial output"
    );
    assert!(
        data.list()
            .await
            .unwrap()
            .iter()
            .all(|f| f.path == "big.csv"),
        "nothing listed but the input"
    );
    let service = slow_service(dir.path());
    let runs = service.list("padded").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, BatchStatus::Failed, "{:?}", runs[0]);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("stopped before the run ended")
    );

    let rerun = service
        .run(
            "padded",
            BatchRequest::new("big.csv", "out/big.csv", "data"),
        )
        .await
        .unwrap();
    assert_eq!(rerun.status, BatchStatus::Succeeded, "{rerun:?}");
    assert_eq!(rerun.rows_predicted, KILL_ROWS as u64);
    let output = data.get("out/big.csv").await.unwrap();
    let text = std::str::from_utf8(&output).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), KILL_ROWS + 1);
    assert_eq!(
        lines[KILL_ROWS],
        format!("{},{pad},{}.0,", KILL_ROWS - 1, KILL_ROWS - 1 + 100)
    );
}

/// A web service with the batch endpoints `sums` (10 rows of `data/in.csv`) and `padded`,
/// behind the token `token` (tests/k8s_rollout.rs runs a batch on it too).
pub(crate) struct Rest {
    pub(crate) server: TestServer,
    client: reqwest::Client,
    pub(crate) token: String,
    _dir: tempfile::TempDir,
}

impl Rest {
    pub(crate) async fn start() -> Rest {
        let dir = tempfile::tempdir().unwrap();
        let datasets = Datasets::local(dir.path()).unwrap();
        let registry = slow_registry();
        registry.register("sum", "1", || {
            Ok(predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) }))
        });
        let service = BatchService::builder(datasets.clone())
            .registry(registry)
            .endpoint(batch_spec("sums", "sum", "1", &[]))
            .unwrap()
            .endpoint(batch_spec(
                "padded",
                "padded",
                "1",
                &[("chunk_rows", "100")],
            ))
            .unwrap()
            .build()
            .unwrap();
        let data = datasets.dataset("data").unwrap();
        let rows: String = (0..10).map(|i| format!("{i},1\n")).collect();
        data.put(
            "in.csv",
            Bytes::from(format!("a,b\n{rows}")),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
        let pad: String = (0..50_000).map(|i| format!("{i},x\n")).collect();
        data.put(
            "long.csv",
            Bytes::from(format!("a,pad\n{pad}")),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
        let runs: Arc<dyn BatchRuns> = Arc::new(service);
        let token = Token::new("batch-token-123");
        let web = WebService::builder()
            .batch_endpoint_with_token("sums", Arc::clone(&runs), token.clone())
            .batch_endpoint_with_token("padded", runs, token.clone())
            // A web service beside them: it has no batch runs.
            .endpoint_with_token(
                serving::ModelEndpoint::builder(
                    "adder",
                    predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) }),
                )
                .build()
                .unwrap(),
                token,
            )
            .build()
            .unwrap();
        Rest {
            server: TestServer::start(web).await,
            client: reqwest::Client::new(),
            token: "batch-token-123".to_owned(),
            _dir: dir,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.server.url(path))
            .header("cnvrg-api-key", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn wait(&self, endpoint: &str, id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, run) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/endpoints/{endpoint}/batches/{id}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{run}");
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                return run;
            }
            assert!(Instant::now() < deadline, "{run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_over_rest() {
    let rest = Rest::start().await;
    use reqwest::Method;
    let submit = |endpoint: &str, output: &str| {
        let body = json!({"input_file": "in.csv", "output_file": output, "dataset": "data"});
        (endpoint.to_owned(), body)
    };
    // The prediction token is required.
    let anonymous = rest
        .client
        .get(rest.server.url("/api/v1/endpoints/sums/batches"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let (endpoint, body) = submit("sums", "a.csv");
    let (status, answer) = rest
        .call(
            Method::POST,
            &format!("/api/v1/endpoints/{endpoint}/batches"),
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let a = answer["id"].as_str().unwrap().to_owned();
    let run = rest.wait("sums", &a).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["rows_predicted"], 10);
    assert_eq!(run["progress"], 1.0);
    let (_, answer) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/sums/batches",
            Some(submit("sums", "b.csv").1),
        )
        .await;
    let b = answer["id"].as_str().unwrap().to_owned();
    rest.wait("sums", &b).await;
    let (status, listed) = rest
        .call(Method::GET, "/api/v1/endpoints/sums/batches", None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.as_str(), a.as_str()], "newest first");

    let (status, compared) = rest
        .call(
            Method::GET,
            &format!("/api/v1/endpoints/sums/batches/compare?ids={a},{b}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{compared}");
    assert_eq!(compared["runs"].as_array().unwrap().len(), 2);
    assert_eq!(compared["differences"][0]["rows"], 10);
    assert_eq!(compared["differences"][0]["differing"], 0);
    let (status, missing) = rest
        .call(Method::GET, "/api/v1/endpoints/sums/batches/compare", None)
        .await;
    assert_eq!(status, 400, "{missing}");

    // Bad requests are clear 4xx answers.
    let (status, error) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/sums/batches",
            Some(json!({"input_file": "in.csv", "output_file": "../x.csv", "dataset": "data"})),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("contains `..`"),
        "{error}"
    );
    let (status, error) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/sums/batches",
            Some(json!({"input_file": "in.csv", "output_file": "a.csv", "dataset": "data"})),
        )
        .await;
    assert_eq!(status, 409, "an existing output is kept: {error}");
    let (status, error) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/sums/batches",
            Some(json!({"input_file": "in.csv", "output_file": "c.csv", "dataset": "nope"})),
        )
        .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (404, Some("no dataset named `nope`"))
    );
    let (status, _) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/sums/batches",
            Some(json!({"input": 1})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = rest
        .call(
            Method::GET,
            "/api/v1/endpoints/sums/batches/0000000000000-nothere",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = rest
        .call(Method::GET, "/api/v1/endpoints/nothing/batches", None)
        .await;
    assert_eq!(status, 404);
    let (status, answer) = rest
        .call(Method::GET, "/api/v1/endpoints/adder/batches", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        answer["error"], "endpoint `adder` is no batch endpoint: it has no batch runs",
        "{answer}"
    );
    // Its kind is told only to a caller with its token.
    let anonymous = rest
        .client
        .get(rest.server.url("/api/v1/endpoints/adder/batches"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // Cancel a running run: no output.
    let (_, answer) = rest
        .call(
            Method::POST,
            "/api/v1/endpoints/padded/batches",
            Some(
                json!({"input_file": "long.csv", "output_file": "long-out.csv", "dataset": "data"}),
            ),
        )
        .await;
    let long = answer["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, run) = rest
            .call(
                Method::GET,
                &format!("/api/v1/endpoints/padded/batches/{long}"),
                None,
            )
            .await;
        if run["rows_predicted"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(run["status"], "running");
            let progress = run["progress"].as_f64().unwrap();
            assert!(progress > 0.0 && progress < 1.0, "{run}");
            break;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, cancelled) = rest
        .call(
            Method::DELETE,
            &format!("/api/v1/endpoints/padded/batches/{long}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["output_location"], Value::Null);
}
