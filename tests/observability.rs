//! Every prediction recorded, measured and visible: the prediction log, `/metrics`, the charts
//! and logs APIs, JSON logs, and (in `browser`) the dashboard in headless Chromium.

pub(crate) mod browser;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use serving::http::{Observability, Token, WebService};
use serving::prediction_log::{PredictionLog, PredictionQuery, format_time, read_csv};
use serving::{
    EndpointSpec, Error, ModelEndpoint, ModelRef, Predictor, Result, log_metric, predictor_fn,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub(crate) const TOKEN: &str = "obs-secret-token-0123456789";

/// A web service on an ephemeral loopback port, stopped gracefully by [`Running::stop`].
pub(crate) struct Running {
    pub(crate) base: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub(crate) async fn start(service: WebService) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(service.serve_on(listener, async {
            let _ = stopped.await;
        }));
        Running { base, stop, task }
    }

    /// Graceful shutdown: returns once the service has finished and closed its prediction log.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the service stops")
            .unwrap()
            .unwrap();
    }

    pub(crate) async fn predict(
        &self,
        endpoint: &str,
        input: Value,
    ) -> (StatusCode, String, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/endpoints/{endpoint}", self.base))
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!({ "input_params": input }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        (status, request_id, response.json().await.unwrap())
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .header("Cnvrg-Api-Key", TOKEN)
            .send()
            .await
            .unwrap()
    }
}

/// Doubles a non-negative number and logs `confidence`; refuses negatives, panics on 13.
pub(crate) fn doubler() -> impl Predictor {
    predictor_fn(|x: f64| -> Result<f64> {
        if x < 0.0 {
            return Err(Error::rejected("x must not be negative"));
        }
        assert!(x != 13.0, "unlucky input");
        log_metric("confidence", 1.0 / (1.0 + x));
        Ok(x * 2.0)
    })
}

pub(crate) fn log_in(dir: &std::path::Path, settings: &[(&str, &str)]) -> PredictionLog {
    let mut builder = PredictionLog::builder().with_dir(dir);
    for (key, value) in settings {
        builder = builder.with_setting(key, value).unwrap();
    }
    builder.build().unwrap()
}

pub(crate) fn service(observability: &Observability, endpoints: Vec<ModelEndpoint>) -> WebService {
    let mut builder = WebService::builder().observability(observability.clone());
    for endpoint in endpoints {
        builder = builder.endpoint_with_token(endpoint, Token::new(TOKEN));
    }
    builder.build().unwrap()
}

pub(crate) fn doubler_endpoint(observability: &Observability) -> ModelEndpoint {
    observability
        .instrument(ModelEndpoint::builder("doubler", doubler()).model("double", "3"))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prediction_is_logged_once_with_its_fields_failures_included() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let began = SystemTime::now();
    let inputs = [
        json!(0),
        json!(1),
        json!(2.5),
        json!(3),
        json!(4),
        json!(5),
        json!(-1),
        json!(-2),
        json!("abc"),
        json!(13),
    ];
    let mut sent = HashMap::new();
    for input in inputs {
        let (status, request_id, _) = running.predict("doubler", json!([input.clone()])).await;
        sent.insert(request_id, (input, status));
    }
    let statuses: Vec<u16> = sent.values().map(|(_, s)| s.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 6);
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 1);
    running.stop().await;
    let ended = SystemTime::now();

    let page = log
        .query(&PredictionQuery::new("doubler").page(0, 1000))
        .await
        .unwrap();
    assert_eq!(page.total, 10, "exactly one record per request");
    for record in &page.records {
        let (input, status) = &sent[&record.request_id];
        assert_eq!(record.status, status.as_u16());
        assert_eq!(
            (record.endpoint.as_str(), record.model.as_str()),
            ("doubler", "double")
        );
        assert_eq!(record.model_version, "3");
        assert_eq!(record.input, Some(json!([input])));
        assert!(record.start_time >= began && record.start_time <= ended);
        assert!(record.elapsed_ms >= 0.0);
        if record.status == 200 {
            let x = input.as_f64().unwrap();
            assert_eq!(record.output, Some(json!(x * 2.0)));
            assert_eq!(record.error, None);
            assert_eq!(record.metrics["confidence"], 1.0 / (1.0 + x));
        } else {
            assert_eq!(record.output, None);
            let error = record.error.as_deref().unwrap();
            let expected = match input {
                Value::String(_) => "argument 0 must be f64",
                _ if record.status == 500 => "unlucky input",
                _ => "x must not be negative",
            };
            assert!(error.contains(expected), "{error}");
            assert!(record.metrics.is_empty());
        }
    }
    let stats = log.stats();
    assert_eq!(
        (stats.accepted, stats.written, stats.dropped, stats.failed),
        (10, 10, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_writes_every_queued_record() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing is written before shutdown: no interval flush, no full segment.
    let log = log_in(
        dir.path(),
        &[
            ("flush_interval_ms", "3600000"),
            ("segment_records", "100000"),
        ],
    );
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let answered: Vec<StatusCode> = futures::stream::iter(0..200)
        .map(|i| running.predict("doubler", json!([i % 7])))
        .buffer_unordered(16)
        .map(|(status, _, _)| status)
        .collect()
        .await;
    assert!(answered.iter().all(|s| *s == StatusCode::OK));
    let before = log.stats();
    assert_eq!((before.accepted, before.written), (200, 0), "{before:?}");
    running.stop().await;
    assert_eq!(log.stats().written, 200);
    let page = log
        .query(&PredictionQuery::new("doubler").page(0, 1000))
        .await
        .unwrap();
    assert_eq!(page.total, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_logging_off_removes_inputs_and_long_values_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let upper = || predictor_fn(|text: String| -> Result<String> { Ok(text.to_uppercase()) });
    let mut private = EndpointSpec::new("private", ModelRef::new("upper", "1"));
    private.logging.log_input = false;
    let mut cropped = EndpointSpec::new("cropped", ModelRef::new("upper", "1"));
    cropped.logging.max_value_chars = 12;
    let endpoints = vec![
        observability
            .instrument(ModelEndpoint::builder("private", upper()).spec(private))
            .build()
            .unwrap(),
        observability
            .instrument(ModelEndpoint::builder("cropped", upper()).spec(cropped))
            .build()
            .unwrap(),
    ];
    let running = Running::start(service(&observability, endpoints)).await;
    let long = "abcdefghij".repeat(10);
    for endpoint in ["private", "cropped"] {
        let (status, _, body) = running.predict(endpoint, json!(long)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["prediction"],
            json!(long.to_uppercase()),
            "answers are never cropped"
        );
    }
    log.flush().await.unwrap();

    let private = log.query(&PredictionQuery::new("private")).await.unwrap();
    assert_eq!(private.records.len(), 1);
    assert_eq!(private.records[0].input, None);
    assert_eq!(
        private.records[0].output,
        Some(json!("ABCDEFGHIJ".repeat(10)))
    );
    let api: Value = running
        .get("/api/v1/endpoints/private/logs")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["predictions"][0]["input"], Value::Null);

    let cropped = log.query(&PredictionQuery::new("cropped")).await.unwrap();
    assert_eq!(cropped.records[0].input, Some(json!("abcdefghijab")));
    assert_eq!(cropped.records[0].output, Some(json!("ABCDEFGHIJAB")));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_but_never_blocks_predictions() {
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};

    let slow = ThrottledStore::new(
        InMemory::new(),
        ThrottleConfig {
            wait_put_per_call: Duration::from_secs(3),
            ..ThrottleConfig::default()
        },
    );
    let log = PredictionLog::builder()
        .with_store(Arc::new(slow))
        .with_setting("queue_capacity", "2")
        .unwrap()
        .with_setting("flush_interval_ms", "3600000")
        .unwrap()
        .build()
        .unwrap();
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    running.predict("doubler", json!([1])).await;
    // The writer takes that record and sits in the slow store for three seconds.
    let flushing = tokio::spawn({
        let log = log.clone();
        async move { log.flush().await }
    });
    while log.stats().queued > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..20 {
        let (status, _, _) = running.predict("doubler", json!([100 + i])).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a full log never fails a prediction"
        );
    }
    let stats = log.stats();
    assert_eq!(stats.accepted + stats.dropped, 21, "{stats:?}");
    assert!(stats.dropped >= 1 && stats.accepted >= 3, "{stats:?}");
    let metrics = running.get("/metrics").await.text().await.unwrap();
    let dropped = format!("serving_prediction_log_dropped_total {}", stats.dropped);
    assert!(
        metrics.lines().any(|l| l == dropped),
        "{dropped} in\n{metrics}"
    );
    flushing.await.unwrap().unwrap();
    running.stop().await;
    let stats = log.stats();
    assert_eq!(
        stats.written, stats.accepted,
        "every accepted record is written"
    );
    let page = log
        .query(&PredictionQuery::new("doubler").page(0, 100))
        .await
        .unwrap();
    assert_eq!(page.total as u64, stats.accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_of_a_time_range_has_exactly_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let mut batches = Vec::new();
    let mut marks = Vec::new();
    for (size, first) in [(5, 0), (4, 10), (3, 20)] {
        marks.push(SystemTime::now());
        let mut ids = Vec::new();
        for i in 0..size {
            // One failure in the middle batch.
            let input = if size == 4 && i == 3 {
                json!([-1])
            } else {
                json!([first + i])
            };
            ids.push(running.predict("doubler", input).await.1);
        }
        batches.push(ids);
    }
    marks.push(SystemTime::now());
    log.flush().await.unwrap();
    let (start, end) = (format_time(marks[1]), format_time(marks[2]));

    let response = running
        .get(&format!(
            "/api/v1/endpoints/doubler/logs.csv?start_time={start}&end_time={end}"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("doubler-predictions.csv")
    );
    let text = response.text().await.unwrap();
    // Parsed by the csv crate directly, and by our reader.
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        serving::prediction_log::CSV_COLUMNS
    );
    let raw: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(raw.len(), 4);
    let rows = read_csv(text.as_bytes()).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, batches[1], "exactly the middle batch, oldest first");
    assert_eq!(rows[3].status, 422);
    assert_eq!(rows[0].input.as_deref(), Some("[10]"));
    assert_eq!(rows[0].output.as_deref(), Some("20.0"));

    let only_errors = running
        .get(&format!(
            "/api/v1/endpoints/doubler/logs?start_time={start}&end_time={end}&status=error"
        ))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(only_errors["total"], 1);
    assert_eq!(
        only_errors["predictions"][0]["request_id"],
        json!(batches[1][3])
    );

    let everything: Value = running
        .get("/api/v1/endpoints/doubler/logs?order=desc&size=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(everything["total"], 12);
    assert_eq!(
        everything["predictions"][0]["request_id"],
        json!(batches[2][2])
    );
    assert!(everything["predictions"][0]["event_time"].as_f64().unwrap() > 1.7e9);

    let bad = running
        .get("/api/v1/endpoints/doubler/logs?colour=red")
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("valid parameters are: start_time")
    );
    for path in ["logs", "logs.csv", "charts"] {
        let anonymous = reqwest::get(format!("{}/api/v1/endpoints/doubler/{path}", running.base))
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_charts_count_every_request_and_custom_metric() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    for i in 0..7 {
        assert_eq!(
            running.predict("doubler", json!([i])).await.0,
            StatusCode::OK
        );
    }
    for i in 1..=3 {
        assert_eq!(
            running.predict("doubler", json!([-i])).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    log.flush().await.unwrap();
    let response = running.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for line in text.lines() {
        let parsed = prometheus_parse::LineInfo::parse(line);
        assert!(
            !matches!(parsed, prometheus_parse::LineInfo::Ignored),
            "not Prometheus text: `{line}`"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| -> Option<&prometheus_parse::Value> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| &s.value)
    };
    let version = [("endpoint", "doubler"), ("model_version", "3")];
    let with = |extra: (&'static str, &'static str)| [version[0], version[1], extra];
    assert_eq!(
        value("serving_requests_total", &with(("status", "200"))),
        Some(&prometheus_parse::Value::Counter(7.0))
    );
    assert_eq!(
        value("serving_requests_total", &with(("status", "422"))),
        Some(&prometheus_parse::Value::Counter(3.0))
    );
    assert_eq!(
        value("serving_request_errors_total", &with(("class", "client"))),
        Some(&prometheus_parse::Value::Counter(3.0))
    );
    let Some(prometheus_parse::Value::Histogram(buckets)) =
        value("serving_request_duration_seconds", &version)
    else {
        panic!("no latency histogram in\n{text}");
    };
    assert_eq!(
        buckets.last().unwrap().count,
        10.0,
        "the +Inf bucket counts every request"
    );
    assert_eq!(
        value("serving_request_duration_seconds_count", &version),
        Some(&prometheus_parse::Value::Untyped(10.0))
    );
    assert_eq!(
        value("serving_requests_in_flight", &[("endpoint", "doubler")]),
        Some(&prometheus_parse::Value::Gauge(0.0))
    );
    let confidence = with(("key", "confidence"));
    assert_eq!(
        value("serving_custom_metric", &confidence),
        Some(&prometheus_parse::Value::Gauge(1.0 / 7.0))
    );
    assert_eq!(
        value("serving_prediction_log_written_total", &[]),
        Some(&prometheus_parse::Value::Counter(10.0))
    );
    assert_eq!(
        value("serving_custom_metric_samples_total", &confidence),
        Some(&prometheus_parse::Value::Counter(7.0))
    );

    // The shipped Grafana dashboard charts only metrics that exist.
    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana/serving-dashboard.json")).unwrap();
    let mut charted = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            charted.extend(
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("serving_"))
                    .map(str::to_owned),
            );
        }
    }
    assert!(charted.len() > 10);
    for metric in charted {
        assert!(
            text.lines().any(|l| l.starts_with(&metric)),
            "the dashboard charts `{metric}`, which /metrics lacks"
        );
    }

    let charts: Value = running
        .get("/api/v1/endpoints/doubler/charts?minutes=5")
        .await
        .json()
        .await
        .unwrap();
    let points = charts["versions"][0]["points"].as_array().unwrap();
    assert_eq!(charts["versions"][0]["model_version"], "3");
    let total = |field: &str| {
        points
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((total("requests"), total("errors")), (10, 3));
    assert!(
        points
            .iter()
            .all(|p| p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap())
    );
    let metric = &charts["metrics"][0];
    assert_eq!(metric["key"], "confidence");
    let samples: u64 = metric["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(samples, 7);
    let last_point = metric["points"].as_array().unwrap().last().unwrap();
    assert_eq!(last_point["last"], json!(1.0 / 7.0));
    running.stop().await;
}

/// Runs in a child process (see `json_logs_*` below) so that it can own the global subscriber
/// and real stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by json_logs_use_the_original_field_names_and_never_show_tokens"]
async fn json_logs_child() {
    if std::env::var_os("SERVING_JSON_LOG_CHILD").is_none() {
        return;
    }
    serving::logging::JsonLogs::new()
        .filter("info")
        .field("project", "obs")
        .init()
        .unwrap();
    let observability = Observability::new().with_log_lines(true);
    let chatty = predictor_fn(|x: f64| -> Result<f64> {
        let context = serving::Context::current().expect("inside a prediction");
        context.log(format!("user code saw {x}"));
        context.log_param("threshold", 0.5);
        log_metric("confidence", 0.25);
        if x < 0.0 {
            return Err(Error::from_predictor(std::io::Error::other(
                "sensor offline",
            )));
        }
        Ok(x + 1.0)
    });
    let endpoint = observability
        .instrument(ModelEndpoint::builder("chatty", chatty))
        .build()
        .unwrap();
    let service = WebService::builder()
        .observability(observability.clone())
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .admin_token(Token::new(ADMIN_TOKEN))
        .build()
        .unwrap();
    let running = Running::start(service).await;
    assert_eq!(
        running.predict("chatty", json!([41])).await.0,
        StatusCode::OK
    );
    assert_eq!(
        running.predict("chatty", json!([-1])).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // An error that quotes a 300 KB input: cropped in the answer and in the log lines.
    let (status, _, body) = running.predict("chatty", json!("x".repeat(300_000))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.to_string().len() < 1_200,
        "{} bytes",
        body.to_string().len()
    );
    let changed = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/admin/endpoints/chatty/autoscale",
            running.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"min_replicas": 1, "max_replicas": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    running.stop().await;
}

const ADMIN_TOKEN: &str = "obs-admin-token-9876543210";

#[test]
fn json_logs_use_the_original_field_names_and_never_show_tokens() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "observability::json_logs_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("SERVING_JSON_LOG_CHILD", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains(TOKEN) && !String::from_utf8_lossy(&output.stderr).contains(TOKEN));
    let lines: Vec<serde_json::Map<String, Value>> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect();
    let find = |what: &str, test: &dyn Fn(&serde_json::Map<String, Value>) -> bool| {
        lines
            .iter()
            .find(|l| test(l))
            .unwrap_or_else(|| panic!("no {what} line in\n{stdout}"))
            .clone()
    };
    let ok = find("prediction", &|l| {
        l.get("target") == Some(&json!("serving::prediction")) && l["status"] == 200
    });
    assert_eq!(ok["model"], "chatty");
    assert_eq!(ok["input"], "[41]");
    assert_eq!(ok["output"], "42.0");
    assert!(ok["start_time"].as_f64().unwrap() > 1.7e9);
    assert!(ok["elapsed_time"].as_f64().unwrap() >= 0.0);
    assert!(ok["event_time"].as_f64().unwrap() > 1.7e9);
    assert_eq!(ok["project"], "obs");
    let failed = find("failed prediction", &|l| {
        l.get("target") == Some(&json!("serving::prediction")) && l["status"] == 500
    });
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap()
            .contains("sensor offline")
    );
    let said = find("Context::log", &|l| {
        l.get("message") == Some(&json!("user code saw 41"))
    });
    assert_eq!(said["endpoint"], "chatty");
    let metric = find("metric", &|l| {
        l.get("cnvrg_metric_name") == Some(&json!("confidence"))
    });
    assert_eq!(
        (metric["confidence"].clone(), metric["y"].clone()),
        (json!(0.25), json!(0.25))
    );
    let param = find("param", &|l| {
        l.get("cnvrg_tag_name") == Some(&json!("threshold"))
    });
    assert_eq!(param["threshold"], 0.5);
    assert!(!stdout.contains(ADMIN_TOKEN));
    // The 300 KB input's error is cropped to `max_value_chars` (1000) in every line.
    let longest = stdout.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4_000, "a log line of {longest} bytes");
    let refused = find("refused prediction", &|l| {
        l.get("target") == Some(&json!("serving::prediction")) && l["status"] == 422
    });
    // The quoted input is cropped; the words around it remain.
    let cropped = refused["error_message"].as_str().unwrap();
    assert!(
        cropped.contains(&"x".repeat(900)) && cropped.chars().count() < 1_100,
        "{cropped}"
    );
    let admin = find("admin change", &|l| {
        l.get("message") == Some(&json!("admin change"))
    });
    assert_eq!(
        (&admin["who"], &admin["endpoint"], &admin["action"]),
        (&json!("admin"), &json!("chatty"), &json!("autoscale"))
    );
    let before: Value = serde_json::from_str(admin["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(admin["after"].as_str().unwrap()).unwrap();
    assert_eq!(
        after["autoscale"],
        json!({"min_replicas": 1, "max_replicas": 3})
    );
    assert_ne!(before["autoscale"], after["autoscale"]);
    assert_eq!(after["stable"], before["stable"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_the_model_are_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let endpoint = observability
        .instrument(
            ModelEndpoint::builder("doubler", doubler())
                .model("double", "3")
                .worker_setting("max_body_bytes", "64")
                .unwrap(),
        )
        .build()
        .unwrap();
    let running = Running::start(service(&observability, vec![endpoint])).await;
    let url = format!("{}/api/v1/endpoints/doubler", running.base);
    let client = reqwest::Client::new();
    let send = |token: &str, content_type: &str, body: Vec<u8>| {
        client
            .post(&url)
            .header("Cnvrg-Api-Key", token)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let json = "application/json";
    let cases = [
        (send("wrong", json, b"[1]".to_vec()).await.unwrap(), 401),
        (
            send(TOKEN, "text/plain", b"[1]".to_vec()).await.unwrap(),
            415,
        ),
        (
            send(TOKEN, json, b"{\"input_params\": [".to_vec())
                .await
                .unwrap(),
            400,
        ),
        (send(TOKEN, json, vec![b' '; 1000]).await.unwrap(), 413),
        (send(TOKEN, json, b"[2]".to_vec()).await.unwrap(), 200),
    ];
    let mut refused_ids = Vec::new();
    for (response, status) in cases {
        assert_eq!(response.status().as_u16(), status);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        if status != 200 && status != 401 {
            refused_ids.push(id);
        }
    }

    let text = running.get("/metrics").await.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let count = |status: &str, version: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "serving_requests_total"
                    && s.labels.get("endpoint") == Some("doubler")
                    && s.labels.get("model_version") == Some(version)
                    && s.labels.get("status") == Some(status)
            })
            .map(|s| s.value.clone())
    };
    for status in ["401", "415", "400", "413"] {
        assert_eq!(
            count(status, ""),
            Some(prometheus_parse::Value::Counter(1.0)),
            "status {status} in\n{text}"
        );
    }
    assert_eq!(
        count("200", "3"),
        Some(prometheus_parse::Value::Counter(1.0))
    );

    log.flush().await.unwrap();
    let page = log
        .query(&PredictionQuery::new("doubler").page(0, 100))
        .await
        .unwrap();
    assert_eq!(
        page.records.len(),
        4,
        "refusals and the prediction, not the unauthenticated call: {:?}",
        page.records
    );
    let mut logged_refusals: Vec<String> = page
        .records
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| r.request_id.clone())
        .collect();
    logged_refusals.sort();
    refused_ids.sort();
    assert_eq!(logged_refusals, refused_ids);
    assert!(
        page.records
            .iter()
            .all(|r| r.status == 200 || r.error.is_some())
    );
    running.stop().await;
}

#[tokio::test]
async fn instrumented_endpoints_read_custom_metrics_from_the_observability_history() {
    use serving::{Endpoint as _, MetricHistory as _, PredictRequest};
    let observability = Observability::new();
    let scored = predictor_fn(|x: f64| -> Result<f64> {
        log_metric("accuracy", 0.5);
        Ok(x)
    });
    let endpoint = observability
        .instrument(ModelEndpoint::builder("scored", scored))
        .build()
        .unwrap();
    let since = SystemTime::now();
    for x in 0..3 {
        endpoint
            .predict(PredictRequest::new(json!(f64::from(x))))
            .await
            .unwrap();
    }
    let read = endpoint
        .metric_history()
        .samples("scored", "accuracy", since);
    assert_eq!(read.len(), 3, "{read:?}");
    assert_eq!(
        read,
        observability.history().samples("scored", "accuracy", since),
        "the endpoint's history is the observability's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_times_are_a_400_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let cases = [
        ("logs?minutes=18446744073709551615", "minutes"),
        ("logs?minutes=99999999999", "minutes"),
        ("logs.csv?minutes=307445734561825860", "minutes"),
        ("logs?start_time=1e300", "start_time"),
        ("logs?start_time=-5", "start_time"),
        ("logs?end_time=99999999999999", "end_time"),
        ("logs.csv?start_time=inf", "start_time"),
        ("charts?minutes=18446744073709551615", "minutes"),
        ("charts?minutes=307445734561825861", "minutes"),
    ];
    for (query, parameter) in cases {
        let response = running
            .get(&format!("/api/v1/endpoints/doubler/{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(parameter), "{query}: {error}");
    }
    // In range still answers.
    for query in ["logs?minutes=1", "logs?start_time=0", "charts?minutes=1440"] {
        let response = running
            .get(&format!("/api/v1/endpoints/doubler/{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formula_ids_are_neutralised_in_csv_and_control_characters_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let client = reqwest::Client::new();
    let predict = |id: &str| {
        client
            .post(format!("{}/api/v1/endpoints/doubler", running.base))
            .header("Cnvrg-Api-Key", TOKEN)
            .header("x-request-id", id)
            .json(&json!({"input_params": [2]}))
            .send()
    };
    let formulas = [
        "=HYPERLINK(\"http://evil.example\",\"x\")",
        "+1+1",
        "-2+3",
        "@SUM(A1:A2)",
    ];
    for id in formulas {
        let response = predict(id).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{id}");
        assert_eq!(response.headers()["x-request-id"], id);
    }
    // A tab is the one control character a header may carry; it is refused and named.
    let response = predict("a\tb").await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("x-request-id"),
        "{body}"
    );
    // OIP ids may hold anything JSON can: ESC, CR, LF.
    for id in ["\u{1b}[31mred", "forged\r\nline", "bell\u{7}"] {
        let response = client
            .post(format!("{}/v2/models/doubler/infer", running.base))
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!({"id": id, "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{id:?}");
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("`id`") && !error.contains(id), "{error}");
    }
    log.flush().await.unwrap();

    let csv = running
        .get("/api/v1/endpoints/doubler/logs.csv?size=100")
        .await
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(
        rows.len(),
        4 + 1 + 3,
        "every request is logged, refusals included"
    );
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?}"
            );
            assert!(!cell.contains('\u{1b}'), "{cell:?}");
        }
    }
    let ids: Vec<&str> = rows.iter().map(|row| &row[0]).collect();
    for id in formulas {
        assert!(ids.contains(&format!("'{id}").as_str()), "{id} in {ids:?}");
    }
    // Read back by our reader, and by the JSON API, the ids are exactly as sent.
    let back: Vec<String> = read_csv(csv.as_bytes())
        .unwrap()
        .into_iter()
        .map(|row| row.request_id)
        .collect();
    let logs: Value = running
        .get("/api/v1/endpoints/doubler/logs")
        .await
        .json()
        .await
        .unwrap();
    for id in formulas {
        assert!(back.contains(&id.to_owned()), "{id}");
        assert!(
            logs["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["request_id"] == id),
            "{id}"
        );
    }
    assert_eq!(logs["total_exact"], true);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quoting_huge_inputs_are_cropped_in_answers_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    let huge = "9".repeat(100_000) + "x";
    let (status, _, body) = running.predict("doubler", json!(huge)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = body["error"].as_str().unwrap();
    assert!(error.len() < 1_100, "a {} byte answer", error.len());
    assert!(
        error.contains(&"9".repeat(900)),
        "the start is kept: {error}"
    );
    log.flush().await.unwrap();
    let page = log.query(&PredictionQuery::new("doubler")).await.unwrap();
    let recorded = page.records[0].error.as_deref().unwrap();
    assert_eq!(recorded, error, "the log keeps what the caller was told");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_too_deep_to_read_back_are_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let deep = predictor_fn(|depth: u64| -> Result<Value> {
        let mut value = json!(depth);
        for _ in 0..depth {
            value = json!([value]);
        }
        Ok(value)
    });
    let endpoint = observability
        .instrument(ModelEndpoint::builder("deep", deep))
        .build()
        .unwrap();
    let running = Running::start(service(&observability, vec![endpoint])).await;
    for depth in [200, 2] {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/endpoints/deep", running.base))
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!([depth]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    log.flush().await.unwrap();
    let logs: Value = running
        .get("/api/v1/endpoints/deep/logs")
        .await
        .json()
        .await
        .unwrap();
    let outputs: Vec<&Value> = logs["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["output"])
        .collect();
    let text = format!("{}200{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        outputs,
        [&json!(text), &json!([[2]])],
        "both shown, the deep one as text"
    );
    let csv = running
        .get("/api/v1/endpoints/deep/logs.csv")
        .await
        .text()
        .await
        .unwrap();
    let rows = read_csv(csv.as_bytes()).unwrap();
    assert_eq!(rows.len(), 2);
    // The CSV holds each output's JSON text: here, that of the text.
    assert_eq!(rows[0].output, Some(json!(text).to_string()));
    running.stop().await;
}
