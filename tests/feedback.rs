//! Feedback loops over live traffic: real HTTP predictions against a web service, loops started
//! and stopped through the admin API, exports read back from the dataset store (the local
//! filesystem, and the S3-compatible server with the `batch` feature), every recorded
//! prediction exported exactly once (by request id), also across a killed process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serving::datasets::Datasets;
use serving::http::{Observability, Token, WebService};
use serving::prediction_log::{PredictionLog, PredictionQuery, PredictionRow, read_csv};
use serving::{
    EndpointSpec, Error, FeedbackLoopSpec, FeedbackLoops, FeedbackSchedule, LoopState,
    ModelEndpoint, ModelRef, Result, predictor_fn,
};

use crate::support::{PATIENCE, TestServer, client};

const TOKEN: &str = "feedback-prediction-token-0123456789";
const ADMIN: &str = "feedback-admin-token-9876543210";
const ENDPOINT: &str = "fb";

/// The README's feedback loop body, posted as written by
/// `the_readmes_curl_starts_a_recurring_loop_observable_within_seconds`.
const README_BODY: &str =
    r#"{"dataset": "iris-feedback", "schedule": {"every_secs": 5}, "format": "csv"}"#;

fn log_in(dir: &std::path::Path) -> PredictionLog {
    PredictionLog::builder()
        .with_dir(dir)
        .with_setting("flush_interval_ms", "100")
        .unwrap()
        .build()
        .unwrap()
}

fn loops(log: &PredictionLog, datasets: Datasets) -> FeedbackLoops {
    FeedbackLoops::new(log.clone(), datasets).with_settle_margin(Duration::from_millis(300))
}

/// Doubles; a negative input is refused (422), so failures are recorded and exported too.
fn doubler(spec_loops: Vec<FeedbackLoopSpec>, observability: &Observability) -> ModelEndpoint {
    let model = predictor_fn(|x: f64| -> Result<f64> {
        if x < 0.0 {
            return Err(Error::rejected("x must not be negative"));
        }
        Ok(x * 2.0)
    });
    let mut spec = EndpointSpec::new(ENDPOINT, ModelRef::new("double", "1"));
    spec.feedback = spec_loops;
    observability
        .instrument(ModelEndpoint::builder(ENDPOINT, model).spec(spec))
        .build()
        .unwrap()
}

fn service(
    log: &PredictionLog,
    loops: FeedbackLoops,
    spec_loops: Vec<FeedbackLoopSpec>,
) -> WebService {
    let observability = Observability::new().with_prediction_log(log.clone());
    WebService::builder()
        .endpoint_with_token(doubler(spec_loops, &observability), Token::new(TOKEN))
        .admin_token(Token::new(ADMIN))
        .observability(observability)
        .feedback_loops(loops)
        .build()
        .unwrap()
}

/// `n` predictions, one every `spacing`, some refused; their request ids.
async fn traffic(base: String, n: usize, spacing: Duration) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i % 10 == 9 { -1.0 } else { i as f64 };
        let response = client()
            .post(format!("{base}/api/v1/endpoints/{ENDPOINT}"))
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!({ "input_params": x }))
            .send()
            .await
            .unwrap();
        assert!([200, 422].contains(&response.status().as_u16()));
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        tokio::time::sleep(spacing).await;
    }
    ids
}

/// Predictions, one every `spacing`, until the server stops answering; the ids answered.
async fn answered(base: String, spacing: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0.. {
        let Ok(response) = client()
            .post(format!("{base}/api/v1/endpoints/{ENDPOINT}"))
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!({ "input_params": i as f64 }))
            .send()
            .await
        else {
            break;
        };
        if let Some(id) = response.headers().get("x-request-id") {
            ids.push(id.to_str().unwrap().to_owned());
        }
        tokio::time::sleep(spacing).await;
    }
    ids
}

async fn admin(method: reqwest::Method, url: String, body: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .request(method, url)
        .header("Authorization", format!("Bearer {ADMIN}"));
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn feedback_url(server: &TestServer) -> String {
    server.url(&format!("/api/v1/admin/endpoints/{ENDPOINT}/feedback"))
}

async fn start_loop(server: &TestServer, body: &str) -> String {
    let (status, answer) = admin(reqwest::Method::POST, feedback_url(server), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// Waits until the loop `id` is no longer running.
async fn finished(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, answer) = admin(
            reqwest::Method::GET,
            format!("{}/{id}", feedback_url(server)),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        if answer["state"] != "running" {
            return answer;
        }
        assert!(Instant::now() < deadline, "loop {id} still runs: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every request id in the dataset's export files, with how often it appears, and the files.
async fn exported(datasets: &Datasets, name: &str) -> (HashMap<String, usize>, Vec<String>) {
    let dataset = datasets.dataset(name).unwrap();
    let (mut ids, mut files) = (HashMap::new(), Vec::new());
    for file in dataset.list().await.unwrap() {
        let bytes = dataset.get(&file.path).await.unwrap();
        let rows: Vec<PredictionRow> = if file.path.ends_with(".csv") {
            read_csv(bytes.as_ref()).unwrap()
        } else if file.path.ends_with(".jsonl") {
            std::str::from_utf8(&bytes)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        } else {
            continue;
        };
        assert!(!rows.is_empty(), "{} is an empty export", file.path);
        for row in rows {
            assert_eq!(row.endpoint, ENDPOINT);
            *ids.entry(row.request_id).or_insert(0) += 1;
        }
        files.push(file.path);
    }
    (ids, files)
}

/// How many of `ids` are not exported, and how many exported ids appear more than once or were
/// never sent.
fn lost_and_duplicated(ids: &[String], exported: &HashMap<String, usize>) -> (usize, usize, usize) {
    let lost = ids.iter().filter(|id| !exported.contains_key(*id)).count();
    let twice = exported.values().filter(|n| **n > 1).count();
    let unknown = exported.keys().filter(|id| !ids.contains(id)).count();
    (lost, twice, unknown)
}

/// A `now` loop, a recurring one over live traffic, stopped, then a last `now`: together their
/// exports hold every prediction once, and nothing is written after the stop but the last one.
async fn loops_over_live_traffic(datasets: Datasets, dataset: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path());
    let server = TestServer::start(service(&log, loops(&log, datasets.clone()), vec![])).await;
    let base = server.url("");
    let mut ids = traffic(base.clone(), 30, Duration::from_millis(5)).await;

    let now = start_loop(
        &server,
        &format!(r#"{{"dataset": "{dataset}", "schedule": "now"}}"#),
    )
    .await;
    let recurring = start_loop(
        &server,
        &format!(
            r#"{{"dataset": "{dataset}", "schedule": {{"every_secs": 1}}, "format": "jsonl"}}"#
        ),
    )
    .await;
    // Live traffic while both loops run: about three seconds of it.
    ids.extend(traffic(base.clone(), 120, Duration::from_millis(25)).await);
    let first = finished(&server, &now).await;
    assert_eq!(first["state"], "done", "{first}");
    assert_eq!(first["exports"][0]["records"], 30, "{first}");

    let (status, stopped) = admin(
        reqwest::Method::DELETE,
        format!("{}/{recurring}", feedback_url(&server)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped");
    let recurring_exports = stopped["exports"].as_array().unwrap().len();
    assert!(recurring_exports >= 2, "{stopped}");
    ids.extend(traffic(base.clone(), 20, Duration::from_millis(5)).await);
    // Stopped: no export for longer than its period.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, files_after_stop) = exported(&datasets, dataset).await;
    let last = start_loop(
        &server,
        &format!(r#"{{"dataset": "{dataset}", "schedule": "now"}}"#),
    )
    .await;
    let last = finished(&server, &last).await;
    assert_eq!(last["state"], "done", "{last}");
    let (ids_exported, files) = exported(&datasets, dataset).await;
    assert_eq!(files.len(), files_after_stop.len() + 1, "{files:?}");

    let (_, list) = admin(reqwest::Method::GET, feedback_url(&server), None).await;
    let listed = list["feedback"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{list}");
    let (mut counted, mut shown) = (0, 0);
    for entry in listed {
        for export in entry["exports"].as_array().unwrap() {
            counted += export["records"].as_u64().unwrap();
            shown += 1;
            assert!(export["from"].as_str().unwrap() < export["to"].as_str().unwrap());
            assert!(
                files
                    .iter()
                    .any(|f| export["file"].as_str().unwrap().ends_with(f.as_str()))
            );
        }
    }
    assert_eq!(shown, files.len());
    assert_eq!(counted as usize, ids.len());
    let (lost, twice, unknown) = lost_and_duplicated(&ids, &ids_exported);
    eprintln!(
        "feedback on {}: {} predictions, {} exports, lost {lost}, duplicated {twice}",
        datasets.url(),
        ids.len(),
        files.len()
    );
    assert_eq!((lost, twice, unknown), (0, 0, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_recurring_loops_export_every_prediction_once_to_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    loops_over_live_traffic(datasets, "local-feedback").await;
}

#[cfg(feature = "batch")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_recurring_loops_export_every_prediction_once_to_an_s3_server() {
    let datasets = crate::datasets::s3_datasets("feedback").await;
    loops_over_live_traffic(datasets, "s3-feedback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_a_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir.path().join("log"));
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    let server = TestServer::start(service(&log, loops(&log, datasets), vec![])).await;
    for (body, named) in [
        (
            r#"{"dataset": "d", "schedule": {"every_secs": 0}}"#,
            "`schedule.every_secs` must be greater than zero",
        ),
        (
            r#"{"dataset": "d", "schedule": {"every_secs": "10"}}"#,
            "`schedule.every_secs` must be a whole number",
        ),
        (
            r#"{"dataset": "d", "schedule": {"cron": "not a cron"}}"#,
            "`schedule.cron`",
        ),
        (
            r#"{"dataset": "d", "schedule": {"cron": "0 25 * * *"}}"#,
            "`schedule.cron`",
        ),
        (
            r#"{"dataset": "d", "schedule": "sometimes"}"#,
            "`schedule` must be",
        ),
        (r#"{"dataset": "d"}"#, "`schedule` is required"),
        (
            r#"{"dataset": "d", "schedule": "now", "format": "xlsx"}"#,
            "`format` unknown format",
        ),
        (
            r#"{"dataset": "../etc", "schedule": "now"}"#,
            "`dataset` invalid dataset name",
        ),
        (
            r#"{"dataset": ".serving", "schedule": "now"}"#,
            "`dataset` invalid dataset name",
        ),
        (r#"{"schedule": "now"}"#, "`dataset` is required"),
        (
            r#"{"dataset": "d", "schedule": "now", "extra": 1}"#,
            "`extra`: unknown field",
        ),
        (r#"{"dataset": "d", "#, "invalid JSON body"),
    ] {
        let (status, answer) =
            admin(reqwest::Method::POST, feedback_url(&server), Some(body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(named), "{body}: {error}");
    }
    // Auth, unknown endpoints and loops.
    let anonymous = client().get(feedback_url(&server)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let prediction_token = client()
        .get(feedback_url(&server))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(prediction_token.status(), 403);
    let (status, _) = admin(
        reqwest::Method::GET,
        server.url("/api/v1/admin/endpoints/nope/feedback"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, answer) = admin(
        reqwest::Method::DELETE,
        format!("{}/nope", feedback_url(&server)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no feedback loop `nope`")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dataset_store_is_a_400_naming_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir.path().join("log"));
    // The store's root is a file: it cannot be listed.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let store =
        serving::prediction_log::object_store::local::LocalFileSystem::new_with_prefix(&file)
            .unwrap();
    let datasets = Datasets::with_store(Arc::new(store), Default::default(), "file:///a-file");
    let server = TestServer::start(service(&log, loops(&log, datasets), vec![])).await;
    let (status, answer) = admin(
        reqwest::Method::POST,
        feedback_url(&server),
        Some(r#"{"dataset": "d", "schedule": {"every_secs": 60}}"#),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("`dataset` `d` cannot be reached"),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_curl_starts_a_recurring_loop_observable_within_seconds() {
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(&format!("-d '{README_BODY}'")),
        "the README's body changed"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir.path().join("log"));
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    // The quickstart's model and endpoint, with the default settle margin.
    let observability = Observability::new().with_prediction_log(log.clone());
    let iris = crate::support::iris::Iris::train().unwrap();
    let endpoint = observability
        .instrument(iris.endpoint("iris"))
        .build()
        .unwrap();
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .admin_token(Token::new(ADMIN))
        .observability(observability)
        .feedback_loops(FeedbackLoops::new(log.clone(), datasets.clone()))
        .build()
        .unwrap();
    let server = TestServer::start(service).await;
    let started = Instant::now();
    let (status, answer) = admin(
        reqwest::Method::POST,
        server.url("/api/v1/admin/endpoints/iris/feedback"),
        Some(README_BODY),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    for _ in 0..5 {
        let (status, _) = crate::support::post_json(
            &server.endpoint_url("iris"),
            Some(TOKEN),
            &json!({"input_params": [5.1, 3.5, 1.4, 0.2]}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let dataset = datasets.dataset("iris-feedback").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let file = loop {
        let files = dataset.list().await.unwrap();
        if let Some(file) = files.iter().find(|f| f.path.ends_with(".csv")) {
            break file.path.clone();
        }
        assert!(Instant::now() < deadline, "no export yet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = read_csv(dataset.get(&file).await.unwrap().as_ref()).unwrap();
    eprintln!(
        "README loop: first export {file} with {} rows after {:?}",
        rows.len(),
        started.elapsed()
    );
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|r| r.output.as_deref() == Some("\"setosa\"")),
        "{rows:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    server.stop().await;
}

const CHILD_ENV: &str = "SERVING_FEEDBACK_CHILD";

/// Run by `exports_stay_exactly_once_across_a_killed_process` in a child process: the service
/// with a recurring loop in its spec, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by exports_stay_exactly_once_across_a_killed_process"]
async fn feedback_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let (log_dir, datasets_dir, addr_file) = (parts[0], parts[1], parts[2]);
    let log = log_in(std::path::Path::new(log_dir));
    let datasets = Datasets::local(datasets_dir).unwrap();
    let every_second = FeedbackLoopSpec::new("restart", FeedbackSchedule::EverySecs(1));
    let service = service(&log, loops(&log, datasets), vec![every_second]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let written = format!("{addr_file}.tmp");
    std::fs::write(&written, listener.local_addr().unwrap().to_string()).unwrap();
    std::fs::rename(&written, addr_file).unwrap();
    service
        .serve_on(listener, std::future::pending())
        .await
        .unwrap();
}

fn spawn_child(spec: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "feedback::feedback_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(std::env::temp_dir().join("serving-feedback-child.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

async fn child_address(addr_file: &std::path::Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(addr) = std::fs::read_to_string(addr_file) {
            return format!("http://{addr}");
        }
        assert!(Instant::now() < deadline, "the child did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stay_exactly_once_across_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let (log_dir, datasets_dir) = (dir.path().join("log"), dir.path().join("datasets"));
    let datasets = Datasets::local(&datasets_dir).unwrap();
    let mut sent = Vec::new();
    for round in 0..2 {
        let addr_file = dir.path().join(format!("addr-{round}"));
        let spec = format!(
            "{},{},{}",
            log_dir.display(),
            datasets_dir.display(),
            addr_file.display()
        );
        let mut child = spawn_child(&spec);
        let base = child_address(&addr_file).await;
        // Traffic until the child dies: it is killed mid-stream, once its loop has exported.
        let feeder = tokio::spawn(answered(base, Duration::from_millis(20)));
        let deadline = Instant::now() + PATIENCE;
        while exported(&datasets, "restart").await.1.len() <= round {
            assert!(Instant::now() < deadline, "no export from the child");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        sent.extend(feeder.await.unwrap());
    }
    // What the children recorded (a SIGKILL loses the records still queued), and a last
    // export of the rest from this process, continuing from the dataset's watermark.
    let log = log_in(&log_dir);
    let recorded: Vec<String> = log
        .query(&PredictionQuery::new(ENDPOINT).page(0, 100_000))
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert!(
        recorded.len() >= sent.len() / 2,
        "{} of {} recorded",
        recorded.len(),
        sent.len()
    );
    assert!(recorded.iter().all(|id| sent.contains(id)));
    let (before, files_before) = exported(&datasets, "restart").await;
    let last = loops(&log, datasets.clone());
    let id = last
        .start(
            ENDPOINT,
            Duration::from_secs(1800),
            FeedbackLoopSpec::new("restart", FeedbackSchedule::Now),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while last.get(ENDPOINT, &id).unwrap().state == LoopState::Running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, files) = exported(&datasets, "restart").await;
    let (lost, twice, unknown) = lost_and_duplicated(&recorded, &after);
    eprintln!(
        "feedback across SIGKILL: {} sent, {} recorded, {} exported by the children in {} files, \
         {} in all in {} files; lost {lost}, duplicated {twice}",
        sent.len(),
        recorded.len(),
        before.len(),
        files_before.len(),
        after.len(),
        files.len()
    );
    assert_eq!((lost, twice, unknown), (0, 0, 0));
    assert!(!before.is_empty() && before.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_logs_tab_lists_loops_with_their_last_export_and_stops_one() {
    use crate::observability::browser::{Driver, browser, until};
    use fantoccini::Locator;

    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir.path().join("log"));
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    let server = TestServer::start(service(&log, loops(&log, datasets), vec![])).await;
    traffic(server.url(""), 12, Duration::from_millis(5)).await;
    let id = start_loop(
        &server,
        r#"{"dataset": "dashboard-feedback", "schedule": {"every_secs": 1}}"#,
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, status) = admin(
            reqwest::Method::GET,
            format!("{}/{id}", feedback_url(&server)),
            None,
        )
        .await;
        if !status["exports"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no export: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let driver = Driver::start().await;
    let (profile, downloads) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client = browser(&driver, profile.path(), downloads.path()).await;
    client
        .goto(&server.url(&format!("/dashboard#endpoint={ENDPOINT}&token={TOKEN}")))
        .await
        .unwrap();
    client
        .find(Locator::Css(r#"#tabs button[data-view="logs"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = format!(r#"#feedback-table tr[data-loop-id="{id}"]"#);
    let last = until(
        &client,
        "the loop's last export",
        &format!(r#"document.querySelector('{row} td.last-export')?.textContent"#),
    )
    .await;
    let last = last.as_str().unwrap();
    assert!(
        last.contains("dashboard-feedback/fb-") && last.contains(".csv · 12 records"),
        "{last}"
    );
    let state = until(
        &client,
        "the loop's state",
        &format!(r#"document.querySelector('{row}')?.dataset.state"#),
    )
    .await;
    assert_eq!(state, "running");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-feedback.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    client
        .find(Locator::Id("admin-token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    client
        .find(Locator::Css(&format!(r#"{row} button.stop"#)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        "the loop stopped",
        &format!(r#"document.querySelector('{row}')?.dataset.state === 'stopped'"#),
    )
    .await;
    let no_button = client
        .execute(
            &format!(r#"return document.querySelector('{row} button.stop') === null;"#),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(no_button, json!(true));
    let (_, status) = admin(
        reqwest::Method::GET,
        format!("{}/{id}", feedback_url(&server)),
        None,
    )
    .await;
    assert_eq!(status["state"], "stopped", "{status}");
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specs_loops_run_at_once_and_the_exported_spec_keeps_the_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir.path().join("log"));
    let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
    let hourly = FeedbackLoopSpec::new("hourly", FeedbackSchedule::EverySecs(3600));
    let server =
        TestServer::start(service(&log, loops(&log, datasets), vec![hourly.clone()])).await;
    let (_, list) = admin(reqwest::Method::GET, feedback_url(&server), None).await;
    let listed = list["feedback"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["schedule"], json!({"every_secs": 3600}));
    let spec_url = server.url(&format!("/api/v1/admin/endpoints/{ENDPOINT}/spec"));
    let (_, spec) = admin(reqwest::Method::GET, spec_url.clone(), None).await;
    let spec = EndpointSpec::from_json(&spec.to_string()).unwrap();
    assert_eq!(spec.feedback, vec![hourly]);
    // One started at run time joins the spec; a stopped one leaves it.
    let cron = start_loop(
        &server,
        r#"{"dataset": "nightly", "schedule": {"cron": "0 2 * * *"}}"#,
    )
    .await;
    let id = listed[0]["id"].as_str().unwrap();
    let (status, _) = admin(
        reqwest::Method::DELETE,
        format!("{}/{id}", feedback_url(&server)),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, spec) = admin(reqwest::Method::GET, spec_url, None).await;
    assert_eq!(
        spec["feedback"],
        json!([{"dataset": "nightly", "schedule": {"cron": "0 2 * * *"}, "format": "csv"}]),
        "{spec}"
    );
    let (_, nightly) = admin(
        reqwest::Method::GET,
        format!("{}/{cron}", feedback_url(&server)),
        None,
    )
    .await;
    assert!(
        nightly["next_run"]
            .as_str()
            .unwrap()
            .ends_with("T02:00:00.000000Z"),
        "{nightly}"
    );
    server.stop().await;
}
