//! The OpenAPI document at `/openapi.json`, checked against the running server by a
//! property-based API fuzzer (schemathesis, from `scripts/requirements-test.txt`): every
//! response it draws out must match the document.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use serving::http::{Observability, Token, WebService};
use serving::prediction_log::PredictionLog;
use serving::{Context, Input, ModelEndpoint, ModelRegistry, Predictor, Result};

use crate::support::{TestServer, client, python};

const TOKEN: &str = "openapi-prediction-token-0123456789";
const ADMIN_TOKEN: &str = "openapi-admin-token-9876543210";

/// Answers any JSON input with itself, so that every well-formed body is a prediction.
#[derive(Debug)]
struct Echo;

#[async_trait]
impl Predictor for Echo {
    async fn predict(&self, input: Input, _: &Context) -> Result<Value> {
        Ok(match input {
            Input::Json(value) => value,
            other => Value::String(format!("{other:?}")),
        })
    }
}

fn service(dir: &std::path::Path) -> WebService {
    let log = PredictionLog::builder()
        .with_dir(dir)
        .with_setting("flush_interval_ms", "50")
        .unwrap()
        .build()
        .unwrap();
    // Feedback loops, so that the fuzzer reaches their routes too.
    let feedback = serving::FeedbackLoops::new(
        log.clone(),
        serving::datasets::Datasets::local(dir.join("datasets")).unwrap(),
    );
    let observability = Observability::new().with_prediction_log(log);
    // Registered versions, so that the admin API's rollouts and shadows can succeed.
    let registry = Arc::new(ModelRegistry::new());
    for version in ["2", "3"] {
        registry.register("echo", version, || Ok(Echo));
    }
    let echo = observability
        .instrument(
            ModelEndpoint::builder("echo", Echo)
                .model("echo", "1")
                .registry(registry),
        )
        .build()
        .unwrap();
    WebService::builder()
        .endpoint_with_token(Arc::new(echo), Token::new(TOKEN))
        .admin_token(Token::new(ADMIN_TOKEN))
        .observability(observability)
        .feedback_loops(feedback)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_without_a_token_and_names_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(service(dir.path())).await;
    let response = client()
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let name = &document["paths"]["/api/v1/endpoints/{name}"]["post"]["parameters"][0];
    assert_eq!(name["name"], "name");
    assert_eq!(name["schema"]["enum"], serde_json::json!(["echo"]));
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["predictionToken"]["name"], "Cnvrg-Api-Key");
    assert_eq!(schemes["adminToken"]["scheme"], "bearer");
    server.stop().await;
}

/// schemathesis's settings: each security scheme's credentials, and which answers count as
/// accepting valid data where the model, not the schema, decides.
fn fuzzer_config() -> String {
    format!(
        r#"
[auth.openapi.predictionToken]
api_key = "{TOKEN}"

[auth.openapi.predictionBearer]
bearer = "{TOKEN}"

[auth.openapi.adminToken]
bearer = "{ADMIN_TOKEN}"

# Whether a well-formed inference request suits the model (names an output it produces, holds
# elements of its datatype) is the model's call: a 400 or 422 there is an answer, not a bug.
[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "422"]

# The logs and charts APIs refuse times before 1970 (an RFC 3339 time with an offset, or
# `minutes` reaching back that far), which no schema of a date-time string can state.
[[operations]]
include-path-regex = "/(logs|logs\\.csv|charts)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]

# Whether a version (or preprocess) is in the endpoint's model registry is the registry's
# state, not the request's shape: one that is not is a 400 (the document says so).
[[operations]]
include-path-regex = "/(update|shadow)$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# `min_replicas` may not exceed `max_replicas`: a rule across fields.
[[operations]]
include-path-regex = "/autoscale$"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# A trigger's metric kind, URL and addresses, and whether an SMTP server is configured, are
# checked by the server (a 400 naming the field), not stated by the schema.
[[operations]]
include-path-regex = "/triggers$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_the_fuzzer_draws_out_matches_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(service(dir.path())).await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, fuzzer_config()).unwrap();
    let schemathesis = python().with_file_name("schemathesis");
    let url = server.url("/openapi.json");
    let started = Instant::now();
    let output = work.path().join("schemathesis.out");
    let log = std::fs::File::create(&output).unwrap();
    let dir = work.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(schemathesis)
            .current_dir(dir)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &url])
            .args(["--checks", "all"])
            // A prediction (`POST /api/v1/endpoints/{name}`) creates nothing, yet the stateful
            // phase takes it for the creation of everything under its path, and a web-service
            // endpoint's batch runs (`…/{name}/batches`: 404, it is no batch endpoint) for a
            // created resource gone missing; this check cannot be limited to those operations.
            .args(["--exclude-checks", "ensure_resource_availability"])
            .args(["--max-examples", "20"])
            .args(["--seed", "18"])
            // One worker: Python 3.11's parser is not safe across the threads of several.
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            .args(["--generation-database", "none"])
            .arg("--no-color")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("schemathesis starts");
        // Bounded: a hung run is killed and fails the test.
        let deadline = Instant::now() + Duration::from_secs(240);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
        }
        child.wait().unwrap()
    })
    .await
    .unwrap();
    let report = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(
        run.success(),
        "schemathesis found answers that do not match the document ({run:?}):\n{report}"
    );
    eprintln!("schemathesis passed in {:?}", started.elapsed());
    server.stop().await;
}
