//! Triggers over the admin API against real receivers: a webhook server this test starts, an
//! SMTP server (Python's aiosmtpd from the test tools) whose delivered mail is read back, and a
//! Rust callback that rolls out a canary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use serving::http::{Observability, Token, WebService};
use serving::setting::Settings as _;
use serving::{
    ActionKey, ActionSettings, CallbackTrigger, Comparison, ModelEndpoint, ModelUpdate,
    TriggerRule, log_metric, predictor_fn,
};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::support::{PATIENCE, TestServer, client, error_of, iris, post_json, python};

const TOKEN: &str = "triggers-prediction-token-0123456789";
const ADMIN: &str = "change-me";

/// A server for the iris endpoint of the quickstart, its actions configured by `settings`.
async fn iris_server(settings: ActionSettings) -> TestServer {
    let model = iris::Iris::train().unwrap();
    let observability = Observability::new();
    let endpoint = observability
        .instrument(model.endpoint("iris").action_settings(settings))
        .build()
        .unwrap();
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .admin_token(Token::new(ADMIN))
        .observability(observability)
        .build()
        .unwrap();
    TestServer::start(service).await
}

async fn admin(method: reqwest::Method, url: String, body: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .request(method, url)
        .header("Authorization", format!("Bearer {ADMIN}"))
        .header("Content-Type", "application/json");
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn triggers_url(server: &TestServer) -> String {
    server.url("/api/v1/admin/endpoints/iris/triggers")
}

async fn add(server: &TestServer, body: &str) -> String {
    let (status, answer) = admin(reqwest::Method::POST, triggers_url(server), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

async fn listed(server: &TestServer, id: &str) -> Value {
    let (status, answer) = admin(reqwest::Method::GET, triggers_url(server), None).await;
    assert_eq!(status, 200, "{answer}");
    answer["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("trigger {id} not listed: {answer}"))
}

async fn predict(server: &TestServer, input: Value) -> u16 {
    post_json(
        &server.endpoint_url("iris"),
        Some(TOKEN),
        &json!({ "input_params": input }),
    )
    .await
    .0
}

/// One request a receiver got.
#[derive(Debug)]
struct Delivery {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A real HTTP server that takes webhooks: it answers 500 to the first `failures` requests,
/// then 200, and hands every request to the test.
async fn receiver(failures: u32) -> (SocketAddr, mpsc::UnboundedReceiver<Delivery>) {
    let (deliveries, received) = mpsc::unbounded_channel();
    let left = Arc::new(AtomicU32::new(failures));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (deliveries, left) = (deliveries.clone(), Arc::clone(&left));
            async move {
                let _ = deliveries.send(Delivery {
                    headers,
                    body: body.to_vec(),
                });
                let failing = left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

async fn next_delivery(received: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("a webhook arrives in time")
        .expect("the receiver runs")
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The body of the README's `curl` that adds a trigger, as written there.
fn readme_trigger_body() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|line| {
            line.starts_with("curl") && line.contains("/triggers -H") && line.contains(" -d '")
        })
        .expect("the README shows a curl that adds a trigger");
    let body = line.split(" -d '").nth(1).unwrap();
    body.strip_suffix('\'').unwrap().to_owned()
}

/// Waits until `check` holds of the trigger's listing.
async fn wait_listed(server: &TestServer, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let trigger = listed(server, id).await;
        if check(&trigger) {
            return trigger;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {trigger}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_adds_a_signed_webhook_trigger_that_fires_within_seconds() {
    let (addr, mut received) = receiver(0).await;
    let server = iris_server(ActionSettings::default()).await;
    let body = readme_trigger_body().replace("127.0.0.1:9000", &addr.to_string());
    let id = add(&server, &body).await;
    let listed_before = listed(&server, &id).await;
    assert_eq!(listed_before["state"], "armed");
    assert_eq!(listed_before["action"], "webhook");
    assert_eq!(listed_before["action_spec"]["signed"], true);
    assert!(listed_before["action_spec"].get("secret").is_none());

    // A short petal does not meet the condition; a long one does.
    assert_eq!(predict(&server, json!([5.1, 3.5, 1.4, 0.2])).await, 200);
    let sent = Instant::now();
    assert_eq!(predict(&server, json!([7.7, 2.6, 6.9, 2.3])).await, 200);
    let delivery = next_delivery(&mut received).await;
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "fired {:?} after the prediction",
        sent.elapsed()
    );
    assert_eq!(
        delivery.headers["x-serving-signature"].to_str().unwrap(),
        signature("s3cret", &delivery.body)
    );
    assert_eq!(delivery.headers["content-type"], "application/json");
    let alert: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(alert["title"], "long petals");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["endpoint"], "iris");
    assert_eq!(alert["metric"], "petal_length_cm");
    assert_eq!(alert["value"], 6.9);
    assert_eq!(alert["events"], 1);

    let trigger = wait_listed(&server, &id, |t| t["alerts"].as_array().unwrap().len() == 1).await;
    assert_eq!(trigger["alerts"][0]["ok"], true);
    assert_eq!(trigger["alerts"][0]["value"], 6.9);
    assert_eq!(trigger["fired"], 1);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"serving_trigger_alerts_total{endpoint="iris",trigger="long petals",severity="warning"} 1"#
        ),
        "{metrics}"
    );

    // Rerun keeps it: the exported spec holds the trigger as posted.
    let (_, spec) = admin(
        reqwest::Method::GET,
        server.url("/api/v1/admin/endpoints/iris/spec"),
        None,
    )
    .await;
    let posted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spec["triggers"][0]["title"], posted["title"]);
    assert_eq!(spec["triggers"][0]["action"], posted["action"]);

    let (status, _) = admin(
        reqwest::Method::DELETE,
        format!("{}/{id}", triggers_url(&server)),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, all) = admin(reqwest::Method::GET, triggers_url(&server), None).await;
    assert_eq!(all["triggers"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_is_counted_listed_and_retried_at_the_next_firing() {
    // Three attempts (the first firing's) fail; the next firing's first attempt succeeds.
    let (addr, mut received) = receiver(3).await;
    let server = iris_server(ActionSettings::default()).await;
    let body = json!({
        "title": "long petals", "metric": "petal_length_cm", "comparison": "greater_than",
        "threshold": 6.0, "every_secs": 1,
        "action": {"type": "webhook", "url": format!("http://{addr}/hook")},
    })
    .to_string();
    let id = add(&server, &body).await;
    assert_eq!(predict(&server, json!([7.7, 2.6, 6.9, 2.3])).await, 200);
    for _ in 0..3 {
        let delivery = next_delivery(&mut received).await;
        assert!(
            delivery.headers.get("x-serving-signature").is_none(),
            "no secret, no signature"
        );
    }
    let failed = wait_listed(&server, &id, |t| t["failures"] == 1).await;
    assert_eq!(failed["alerts"][0]["ok"], false);
    let error = failed["alerts"][0]["error"].as_str().unwrap();
    assert!(error.contains("500"), "{error}");
    assert_eq!(failed["state"], "armed", "a failed firing stays armed");

    // The condition holds again: the action is tried again, and succeeds.
    let deadline = Instant::now() + PATIENCE;
    let retried = loop {
        assert_eq!(predict(&server, json!([7.7, 2.6, 6.9, 2.3])).await, 200);
        let trigger = listed(&server, &id).await;
        if trigger["alerts"].as_array().unwrap().len() == 2 {
            break trigger;
        }
        assert!(Instant::now() < deadline, "no retry: {trigger}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    next_delivery(&mut received).await;
    assert_eq!(retried["alerts"][1]["ok"], true);
    assert_eq!(
        (retried["fired"].as_u64(), retried["failures"].as_u64()),
        (Some(2), Some(1))
    );
    // The endpoint went on answering throughout.
    assert_eq!(predict(&server, json!([5.1, 3.5, 1.4, 0.2])).await, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_measurements_fire_on_errors_and_latency() {
    let (addr, mut received) = receiver(0).await;
    let server = iris_server(ActionSettings::default()).await;
    let hook = format!("http://{addr}/hook");
    let errors = add(
        &server,
        &json!({
            "title": "failing", "severity": "critical", "metric": "error_rate",
            "comparison": "greater_than", "threshold": 0.5, "every_secs": 2, "min_events": 4,
            "action": {"type": "webhook", "url": hook},
        })
        .to_string(),
    )
    .await;
    // Refused inputs (negative lengths) are errors: four of every five requests. Batches are
    // sent until one poll holds enough of them (a batch may straddle two polls).
    let bad = json!([-1.0, 1.0, 1.0, 1.0]);
    let good = json!([5.1, 3.5, 1.4, 0.2]);
    let deadline = Instant::now() + PATIENCE;
    let delivery = loop {
        let batch = [&bad, &bad, &good, &bad, &bad].map(|input| predict(&server, input.clone()));
        futures::future::join_all(batch).await;
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(2500), received.recv()).await
        {
            break delivery;
        }
        assert!(
            Instant::now() < deadline,
            "the error-rate trigger never fired"
        );
    };
    let alert: Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(alert["metric"], "error_rate");
    assert_eq!(alert["severity"], "critical");
    assert!(alert["events"].as_u64().unwrap() >= 4, "{alert}");
    let rate = alert["value"].as_f64().unwrap();
    assert!(rate > 0.5 && rate <= 0.8 + 1e-9, "{alert}");
    let trigger = listed(&server, &errors).await;
    assert_eq!(trigger["state"], "fired");

    let slow = add(
        &server,
        &json!({
            "title": "any latency", "metric": "p95_latency_ms", "comparison": "greater_than",
            "threshold": 0.0, "every_secs": 1,
            "action": {"type": "webhook", "url": format!("http://{addr}/hook")},
        })
        .to_string(),
    )
    .await;
    predict(&server, json!([5.1, 3.5, 1.4, 0.2])).await;
    let trigger = wait_listed(&server, &slow, |t| t["fired"] == 1).await;
    assert!(trigger["alerts"][0]["value"].as_f64().unwrap() > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_rule_is_a_400_that_names_the_field() {
    let server = iris_server(ActionSettings::default()).await;
    let good = json!({
        "title": "t", "metric": "petal_length_cm", "comparison": "greater_than",
        "threshold": 6.0, "every_secs": 5, "min_events": 1,
        "action": {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
    });
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body.to_string()
    };
    let cases = [
        (with("metric", json!("gpu:temperature")), "`metric`"),
        (with("threshold", json!("high")), "`threshold`"),
        (with("every_secs", json!(0)), "`every_secs`"),
        (
            with("action", json!({"type": "sms", "to": "+1"})),
            "`action.type`",
        ),
        (
            with(
                "action",
                json!({"type": "email", "to": ["ops@example.com", "not an address"]}),
            ),
            "`to`",
        ),
        (with("comparison", json!("around")), "`comparison`"),
        (with("min_events", json!(0)), "`min_events`"),
        (
            with("action", json!({"type": "webhook", "url": "ftp://x"})),
            "`url`",
        ),
        // No SMTP server is configured on this server.
        (
            with(
                "action",
                json!({"type": "email", "to": ["ops@example.com"]}),
            ),
            "SERVING_SMTP_URL",
        ),
        ("{\"title\": ".to_owned(), "invalid JSON"),
    ];
    for (body, field) in cases {
        let (status, answer) =
            admin(reqwest::Method::POST, triggers_url(&server), Some(&body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(error_of(&answer).contains(field), "{body}: {answer}");
    }
    // Behind the admin token; unknown endpoints and triggers are 404.
    let anonymous = client()
        .post(triggers_url(&server))
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, _) = admin(
        reqwest::Method::POST,
        server.url("/api/v1/admin/endpoints/nope/triggers"),
        Some(&good.to_string()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, answer) = admin(
        reqwest::Method::DELETE,
        format!("{}/trigger-99", triggers_url(&server)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(error_of(&answer).contains("trigger-99"));
    let (_, all) = admin(reqwest::Method::GET, triggers_url(&server), None).await;
    assert_eq!(all["triggers"], json!([]), "nothing was added");
    server.stop().await;
}

/// Python's aiosmtpd on a free loopback port, delivering into a maildir.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .spawn()
            .expect("aiosmtpd starts");
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// The messages delivered so far.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_arrives_at_a_real_smtp_server_with_subject_and_body() {
    let smtp = SmtpServer::start();
    let settings = ActionSettings::default()
        .with_config(
            ActionKey::SmtpUrl,
            format!("smtp://127.0.0.1:{}", smtp.port),
        )
        .unwrap()
        .with_config(ActionKey::SmtpFrom, "alerts@serving.test")
        .unwrap()
        .with_config(ActionKey::DashboardUrl, "http://serving.test:8080")
        .unwrap();
    let server = iris_server(settings).await;
    let id = add(
        &server,
        &json!({
            "title": "long petals", "severity": "warning", "metric": "petal_length_cm",
            "comparison": "greater_than", "threshold": 6.0, "every_secs": 2, "min_events": 2,
            "action": {"type": "email", "to": ["ops@serving.test", "ml@serving.test"]},
        })
        .to_string(),
    )
    .await;
    // Two long petals in one poll (sent again should a poll split them).
    let deadline = Instant::now() + PATIENCE;
    let trigger = loop {
        assert_eq!(predict(&server, json!([7.7, 2.6, 6.5, 2.3])).await, 200);
        assert_eq!(predict(&server, json!([7.7, 3.0, 6.5, 2.3])).await, 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let trigger = listed(&server, &id).await;
        if trigger["fired"].as_u64() >= Some(1) {
            break trigger;
        }
        assert!(
            Instant::now() < deadline,
            "the email trigger never fired: {trigger}"
        );
    };
    assert_eq!(trigger["alerts"][0]["ok"], true, "{trigger}");
    let deadline = Instant::now() + PATIENCE;
    let message = loop {
        if let Some(message) = smtp.messages().pop() {
            break message;
        }
        assert!(Instant::now() < deadline, "no mail delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        message.contains("Subject: [WARNING] long petals on iris"),
        "{message}"
    );
    assert!(message.contains("From: alerts@serving.test"), "{message}");
    assert!(message.contains("ops@serving.test") && message.contains("ml@serving.test"));
    assert!(message.contains("Metric:    petal_length_cm"), "{message}");
    assert!(message.contains("Value:     6.5"), "{message}");
    let events = trigger["alerts"][0]["events"].as_u64().unwrap();
    assert!(events >= 2, "{trigger}");
    assert!(
        message.contains(&format!("Events:    {events}")),
        "{message}"
    );
    assert!(message.contains("Time:      20"), "{message}");
    assert!(
        message
            .contains("Dashboard: http://serving.test:8080/dashboard?view=triggers#endpoint=iris"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_retrains_and_rolls_out_a_canary_without_downtime() {
    let model = predictor_fn(|x: f64| -> serving::Result<f64> {
        log_metric("drift", x);
        Ok(x)
    });
    let endpoint = ModelEndpoint::builder("drifting", model)
        .model("identity", "1")
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle().clone();
    let rule =
        TriggerRule::new("drift", "drift", Comparison::GreaterThan, 10.0, 1).with_min_events(3);
    let rolled_out = lifecycle.clone();
    let retrain = CallbackTrigger::new_async(rule, move |alert| {
        let lifecycle = rolled_out.clone();
        async move {
            // "Retraining": a model fitted to the drifted inputs, rolled out to 20% as a canary.
            let shift = alert.last_value;
            let retrained = predictor_fn(move |x: f64| -> serving::Result<f64> { Ok(x - shift) });
            let update = ModelUpdate::new(retrained)
                .version("2")
                .description(format!("retrained after {} drifted inputs", alert.events));
            lifecycle.update_model(update, Some(20)).map(drop)
        }
    });
    let id = lifecycle.add_trigger(Arc::new(retrain)).unwrap();
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .admin_token(Token::new(ADMIN))
        .build()
        .unwrap();
    let server = TestServer::start(service).await;
    let url = server.endpoint_url("drifting");
    let deadline = Instant::now() + PATIENCE;
    let mut answered = 0;
    while lifecycle.candidate().is_none() {
        let (status, body) = post_json(&url, Some(TOKEN), &json!({"input_params": [42.0]})).await;
        assert_eq!(
            status, 200,
            "every request is answered during the rollout: {body}"
        );
        answered += 1;
        assert!(
            Instant::now() < deadline,
            "no canary after {answered} requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lifecycle.candidate(), Some(("2".to_owned(), 20)));
    let listed = lifecycle.triggers();
    let trigger = listed.iter().find(|t| t.id == id).unwrap();
    assert_eq!(trigger.action, "callback");
    assert!(trigger.alerts[0].ok);
    // Both versions answer now; none fails.
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let response = client()
            .post(&url)
            .header("Cnvrg-Api-Key", TOKEN)
            .json(&json!({"input_params": [42.0]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        versions.insert(
            response.headers()["x-model-version"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        versions,
        ["1".to_owned(), "2".to_owned()].into(),
        "the canary takes its share"
    );
    server.stop().await;
}
