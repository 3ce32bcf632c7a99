//! Model lifecycle over a real web service on a loopback port: rollout under load, sticky
//! routing, shadow traffic, automated canary, the admin API, the Open Inference Protocol, spec
//! export and redeploy, worker settings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use serving::http::{Token, WebService};
use serving::prelude::*;
use serving::{
    CanaryMetric, CanaryPolicy, CanaryRule, Comparison, DynMetricSink, InMemoryMetrics,
    InMemoryRecords, ModelRef, ModelRegistry, ModelSignature, ModelUpdate, PredictionRecord,
    TensorSpec,
};
use tokio::sync::oneshot;

const PREDICT_TOKEN: &str = "prediction-token-for-tests";
const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// Generous: the machine is shared and slow.
const PATIENCE: Duration = Duration::from_secs(120);

/// A web service on 127.0.0.1:0, shut down when dropped.
struct Server {
    base: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    async fn start(service: WebService) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        tokio::spawn(service.serve_on(listener, async {
            let _ = stop.await;
        }));
        Server {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _shutdown: shutdown,
        }
    }

    /// `POST /api/v1/endpoints/{name}` in the original wire format.
    async fn predict(
        &self,
        name: &str,
        input: Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/api/v1/endpoints/{name}", self.base))
            .header("Cnvrg-Api-Key", PREDICT_TOKEN)
            .json(&json!({ "input_params": input }));
        for (key, value) in headers {
            request = request.header(*key, *value);
        }
        request.send().await.unwrap()
    }

    /// An admin call with the admin token; returns the status and the JSON body.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(
                method,
                format!("{}/api/v1/admin/endpoints/{path}", self.base),
            )
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn service(endpoints: Vec<ModelEndpoint>) -> WebService {
    let mut builder = WebService::builder().admin_token(Token::new(ADMIN_TOKEN));
    for endpoint in endpoints {
        builder = builder.endpoint_with_token(endpoint, Token::new(PREDICT_TOKEN));
    }
    builder.build().unwrap()
}

/// Version `k` answers `x + 1000 k`, so every answer says which version made it.
fn version_model(k: u32) -> impl Predictor {
    predictor_fn(move |x: f64| -> Result<f64> { Ok(x + 1000.0 * f64::from(k)) })
}

fn update(k: u32) -> ModelUpdate {
    ModelUpdate::new(version_model(k)).description(format!("adds {}", 1000 * k))
}

/// Whether `hits` of `n` trials is within five standard deviations of a share `p`.
fn within_bounds(hits: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (hits as f64 - mean).abs() <= 5.0 * sd + 0.5
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Continuous load: `clients` tasks predicting until stopped. Each answer is checked against
/// the version that says it made it; answers are attributed to the phase that was current for
/// the request's whole life, and dropped when the phase changed meanwhile.
struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashMap<usize, Vec<String>>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const BETWEEN_PHASES: usize = usize::MAX;

impl Load {
    fn start(server: &Arc<Server>, endpoint: &'static str, clients: usize) -> Load {
        let load = Load {
            phase: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::default(),
            failures: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|client| {
                let (server, phase, stop) = (
                    Arc::clone(server),
                    Arc::clone(&load.phase),
                    Arc::clone(&load.stop),
                );
                let (seen, failures) = (Arc::clone(&load.seen), Arc::clone(&load.failures));
                tokio::spawn(async move {
                    let mut i = 0u32;
                    while !stop.load(Ordering::Acquire) {
                        i += 1;
                        let x = f64::from(client as u32 * 100_000 + i % 500);
                        let before = phase.load(Ordering::Acquire);
                        let response = server.predict(endpoint, json!(x), &[]).await;
                        let status = response.status();
                        let version = response
                            .headers()
                            .get("x-model-version")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let expected = version.parse::<f64>().map(|k| x + 1000.0 * k).ok();
                        if status != StatusCode::OK || body["prediction"].as_f64() != expected {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{status} version {version:?}: {body}"));
                            continue;
                        }
                        if before != BETWEEN_PHASES && phase.load(Ordering::Acquire) == before {
                            seen.lock()
                                .unwrap()
                                .entry(before)
                                .or_default()
                                .push(version);
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Runs `change` between phases, then collects at least `samples` answers in `phase`.
    async fn phase(&self, phase: usize, samples: usize, change: impl AsyncFnOnce()) {
        self.phase.store(BETWEEN_PHASES, Ordering::Release);
        change().await;
        self.phase.store(phase, Ordering::Release);
        let seen = Arc::clone(&self.seen);
        eventually(&format!("{samples} answers in phase {phase}"), async || {
            (seen.lock().unwrap().get(&phase).map_or(0, Vec::len) >= samples).then_some(())
        })
        .await;
    }

    /// How many answers of `phase` each version gave.
    fn shares(&self, phase: usize) -> (usize, HashMap<String, usize>) {
        let seen = self.seen.lock().unwrap();
        let answers = &seen[&phase];
        let mut counts = HashMap::new();
        for version in answers {
            *counts.entry(version.clone()).or_insert(0) += 1;
        }
        (answers.len(), counts)
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.failures)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_fails_no_request_and_honours_every_split() {
    let endpoint = ModelEndpoint::builder("rollout", version_model(1))
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle().clone();
    let server = Arc::new(Server::start(service(vec![endpoint])).await);
    let load = Load::start(&server, "rollout", 4);
    const N: usize = 500;

    load.phase(0, N, async || {}).await;
    load.phase(1, N, async || {
        assert_eq!(lifecycle.update_model(update(2), None).unwrap(), "2");
    })
    .await;
    load.phase(2, N, async || {
        assert_eq!(lifecycle.update_model(update(3), Some(20)).unwrap(), "3");
    })
    .await;
    load.phase(3, N, async || {
        let (status, _) = server
            .admin(
                reqwest::Method::POST,
                "rollout/canary",
                Some(json!({"percent": 50})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
    load.phase(4, N, async || {
        let (status, body) = server
            .admin(reqwest::Method::POST, "rollout/rollback", None)
            .await;
        assert_eq!(
            (status, &body["version"]),
            (StatusCode::OK, &json!("2")),
            "{body}"
        );
    })
    .await;
    load.phase(5, N, async || {
        assert_eq!(lifecycle.update_model(update(4), Some(30)).unwrap(), "4");
    })
    .await;
    load.phase(6, N, async || {
        let (status, body) = server
            .admin(reqwest::Method::POST, "rollout/promote", None)
            .await;
        assert_eq!(
            (status, &body["version"]),
            (StatusCode::OK, &json!("4")),
            "{body}"
        );
    })
    .await;
    let expected: [(&str, &[(&str, f64)]); 7] = [
        ("initial", &[("1", 1.0)]),
        ("update, no canary", &[("2", 1.0)]),
        ("20 % canary", &[("2", 0.8), ("3", 0.2)]),
        ("50 % canary", &[("2", 0.5), ("3", 0.5)]),
        ("rolled back", &[("2", 1.0)]),
        ("30 % canary", &[("2", 0.7), ("4", 0.3)]),
        ("promoted", &[("4", 1.0)]),
    ];
    let mut off = Vec::new();
    for (phase, (step, shares)) in expected.iter().enumerate() {
        let (n, counts) = load.shares(phase);
        eprintln!("{step}: {n} answers, per version {counts:?}");
        let total: usize = counts.values().sum();
        for (version, p) in *shares {
            let hits = counts.get(*version).copied().unwrap_or(0);
            if !within_bounds(hits, n, *p) {
                off.push(format!(
                    "{step}: version {version} answered {hits} of {n}, expected {p}"
                ));
            }
        }
        let known: usize = shares
            .iter()
            .map(|(v, _)| counts.get(*v).copied().unwrap_or(0))
            .sum();
        if known != total {
            off.push(format!("{step}: unexpected versions answered: {counts:?}"));
        }
    }
    let failures = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed requests, first ones: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(off.is_empty(), "shares out of bounds: {off:#?}");
    let history: Vec<String> = lifecycle
        .versions()
        .into_iter()
        .map(|v| format!("{}:{:?}", v.id, v.state))
        .collect();
    assert_eq!(
        history,
        ["1:Retired", "2:Retired", "3:RolledBack", "4:Stable"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_keeps_each_caller_on_one_version() {
    let endpoint = ModelEndpoint::builder("sticky", version_model(1))
        .build()
        .unwrap();
    endpoint
        .lifecycle()
        .update_model(update(2), Some(30))
        .unwrap();
    let server = Server::start(service(vec![endpoint])).await;
    let version_for = async |key: &str| {
        let response = server
            .predict("sticky", json!(1.0), &[("X-Routing-Key", key)])
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.headers()["x-model-version"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let keys: Vec<String> = (0..300).map(|user| format!("user-{user}")).collect();
    let mut at_30 = HashMap::new();
    for key in &keys {
        let first = version_for(key).await;
        for _ in 0..2 {
            assert_eq!(
                version_for(key).await,
                first,
                "{key} moved between versions"
            );
        }
        at_30.insert(key.clone(), first);
    }
    let on_candidate = at_30.values().filter(|v| *v == "2").count();
    assert!(
        within_bounds(on_candidate, keys.len(), 0.3),
        "{on_candidate} of 300 keys at 30 %"
    );

    let (status, _) = server
        .admin(
            reqwest::Method::POST,
            "sticky/canary",
            Some(json!({"percent": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut on_candidate_at_60 = 0;
    for key in &keys {
        let now = version_for(key).await;
        if at_30[key] == "2" {
            assert_eq!(
                now, "2",
                "raising the share moved {key} back to the stable version"
            );
        }
        on_candidate_at_60 += usize::from(now == "2");
    }
    assert!(
        within_bounds(on_candidate_at_60, keys.len(), 0.6),
        "{on_candidate_at_60} of 300 keys at 60 %"
    );
    // Without a key, a pinned version bypasses the split.
    let pinned = server
        .predict("sticky", json!(1.0), &[("X-Model-Version", "1")])
        .await;
    assert_eq!(pinned.headers()["x-model-version"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_answers_into_the_records_but_never_to_the_caller() {
    let registry = Arc::new(ModelRegistry::new());
    registry.register("scorer", "1", || {
        Ok(predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) }))
    });
    // Version 2 agrees with version 1 below 10 only.
    registry.register("scorer", "2", || {
        Ok(predictor_fn(|x: f64| -> Result<f64> {
            Ok(if x < 10.0 { 2.0 * x } else { -1.0 })
        }))
    });
    let records = InMemoryRecords::new();
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = ModelEndpoint::from_spec(
        EndpointSpec::new("shadowed", ModelRef::new("scorer", "1")),
        &registry,
    )
    .unwrap()
    .record_sink(Arc::new(records.clone()))
    .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
    .build()
    .unwrap();
    let server = Server::start(service(vec![endpoint])).await;
    let (status, body) = server
        .admin(
            reqwest::Method::POST,
            "shadowed/shadow",
            Some(json!({"version": "2", "percent": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for x in 0..20 {
        let response = server.predict("shadowed", json!(x), &[]).await;
        assert_eq!(response.headers()["x-model-version"], "1");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"prediction": 2.0 * f64::from(x)}),
            "the caller gets version 1's answer"
        );
    }
    let all = records
        .wait_for(40, Duration::from_secs(30))
        .await
        .expect("20 primary and 20 shadow records");
    let shadow_records: Vec<&PredictionRecord> =
        all.iter().filter(|r| r.model_version == "2").collect();
    assert_eq!(shadow_records.len(), 20);
    assert!(
        shadow_records
            .iter()
            .all(|r| r.params["shadow_of"] == json!("1"))
    );
    let disagreeing = shadow_records
        .iter()
        .filter(|r| r.output == Some(json!(-1.0)))
        .count();
    assert_eq!(disagreeing, 10, "the shadow's own answers are recorded");
    let primary = all.iter().filter(|r| r.model_version == "1").count();
    assert_eq!(primary, 20);
    let per_version = |version: &str| {
        metrics
            .requests()
            .iter()
            .filter(|e| &*e.endpoint == "shadowed" && &*e.model_version == version)
            .count()
    };
    assert_eq!(
        (per_version("1"), per_version("2")),
        (20, 20),
        "metrics carry each version"
    );

    let (_, status) = server
        .admin(reqwest::Method::GET, "shadowed/status", None)
        .await;
    let comparison = &status["shadow"]["comparison"];
    assert_eq!(comparison["version"], "2");
    assert_eq!(comparison["compared"], 20, "{status}");
    assert_eq!(comparison["agreement_rate"], 0.5);
    assert!(comparison["shadow_mean_latency_ms"].as_f64().unwrap() > 0.0);
    let (status, _) = server
        .admin(reqwest::Method::DELETE, "shadowed/shadow", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automated_canary_rolls_back_a_breaking_candidate_and_promotes_a_holding_one() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let policy = CanaryPolicy::new(
        vec![
            CanaryRule::new(CanaryMetric::ErrorRate, Comparison::LessThan, 0.05, 20),
            CanaryRule::new(
                CanaryMetric::P95LatencyMs,
                Comparison::LessThan,
                10_000.0,
                20,
            ),
            CanaryRule::new(
                CanaryMetric::Custom("quality".into()),
                Comparison::GreaterThan,
                0.5,
                20,
            ),
        ],
        Duration::from_millis(1500),
    )
    .interval(Duration::from_millis(50));
    let endpoint = ModelEndpoint::builder("auto", version_model(1))
        .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
        .canary_policy(policy)
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle().clone();
    let server = Arc::new(Server::start(service(vec![endpoint])).await);
    let load = Load::start(&server, "auto", 3);

    // Version 2 fails one request in four: its error rate breaks the rule.
    let breaking = ModelUpdate::new(predictor_fn(|x: f64| -> std::result::Result<f64, String> {
        log_metric("quality", 0.9);
        if x as u64 % 4 == 0 {
            Err("out of memory".into())
        } else {
            Ok(x + 2000.0)
        }
    }));
    lifecycle.update_model(breaking, Some(50)).unwrap();
    let rollback = eventually("the automated rollback", async || {
        lifecycle
            .events()
            .into_iter()
            .find(|e| e.version == "2" && e.action == serving::LifecycleAction::RolledBack)
    })
    .await;
    assert!(rollback.automatic);
    assert!(
        rollback.detail.starts_with("error_rate"),
        "{}",
        rollback.detail
    );
    assert_eq!(
        (lifecycle.stable_version(), lifecycle.candidate()),
        ("1".to_owned(), None)
    );

    // Version 3 holds every rule for the hold period.
    let holding = ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> {
        log_metric("quality", 0.9);
        Ok(x + 3000.0)
    }));
    lifecycle.update_model(holding, Some(50)).unwrap();
    eventually("the automated promotion", async || {
        (lifecycle.stable_version() == "3").then_some(())
    })
    .await;
    let failures = load.stop().await;
    // Failed answers carry no version header; the metrics say which version failed.
    let failed_versions: Vec<String> = metrics
        .requests()
        .into_iter()
        .filter(|e| e.status >= 500)
        .map(|e| e.model_version.to_string())
        .collect();
    assert_eq!(failed_versions.len(), failures.len(), "{failures:?}");
    assert!(
        failed_versions.iter().all(|v| v == "2"),
        "only version 2 failed: {failed_versions:?}"
    );

    let (_, events) = server
        .admin(reqwest::Method::GET, "auto/events", None)
        .await;
    let decisions: Vec<(String, String, bool)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["automatic"] == true)
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["version"].as_str().unwrap().to_owned(),
                true,
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("rolled_back".into(), "2".into(), true),
            ("promoted".into(), "3".into(), true)
        ]
    );
    let (_, status) = server.admin(reqwest::Method::GET, "auto", None).await;
    assert_eq!(status["stable"]["version"], "3");
    assert!(
        status["canary"].is_null(),
        "no candidate is watched any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_only_the_admin_token() {
    let registry = Arc::new(ModelRegistry::new());
    for k in 1..=3 {
        registry.register("adder", k.to_string(), move || Ok(version_model(k)));
    }
    let endpoint = ModelEndpoint::from_spec(
        EndpointSpec::new("guarded", ModelRef::new("adder", "1")),
        &registry,
    )
    .unwrap()
    .build()
    .unwrap();
    let server = Server::start(service(vec![endpoint])).await;
    let url = format!("{}/api/v1/admin/endpoints/guarded/promote", server.base);
    let missing = server.client.post(&url).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.headers().contains_key("www-authenticate"));
    let as_prediction_key = server
        .client
        .post(&url)
        .header("Cnvrg-Api-Key", PREDICT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(as_prediction_key.status(), StatusCode::UNAUTHORIZED);
    let prediction_bearer = server
        .client
        .post(&url)
        .bearer_auth(PREDICT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(prediction_bearer.status(), StatusCode::FORBIDDEN);
    let body: Value = prediction_bearer.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("prediction token"),
        "{body}"
    );
    let wrong = server
        .client
        .post(&url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let list = server
        .client
        .get(format!("{}/api/v1/admin/endpoints", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::UNAUTHORIZED);
    // Nor does the admin token predict.
    let predict = server
        .client
        .post(format!("{}/api/v1/endpoints/guarded", server.base))
        .header("Cnvrg-Api-Key", ADMIN_TOKEN)
        .json(&json!({"input_params": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(predict.status(), StatusCode::UNAUTHORIZED);

    // With it: the whole control plane.
    use reqwest::Method;
    let (status, body) = server
        .admin(
            Method::POST,
            "guarded/update",
            Some(json!({"version": "2", "description": "from the registry", "canary_percent": 25})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"]["candidate"]["percent"], 25);
    let (status, body) = server
        .admin(
            Method::POST,
            "guarded/update",
            Some(json!({"version": "3"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "refused while a candidate is in progress: {body}"
    );
    let (status, _) = server
        .admin(
            Method::POST,
            "guarded/update",
            Some(json!({"version": "9"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "not in the registry");
    let (status, _) = server
        .admin(
            Method::POST,
            "guarded/canary",
            Some(json!({"percent": 101})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = server.admin(Method::POST, "guarded/promote", None).await;
    assert_eq!(
        (status, &body["status"]["stable"]["version"]),
        (StatusCode::OK, &json!("2"))
    );
    let (_, body) = server
        .admin(
            Method::POST,
            "guarded/update",
            Some(json!({"version": "3"})),
        )
        .await;
    assert_eq!(
        body["status"]["stable"]["version"], "3",
        "no canary: a full switch"
    );
    let (status, body) = server
        .admin(
            Method::POST,
            "guarded/rollback",
            Some(json!({"version": "1"})),
        )
        .await;
    assert_eq!(
        (status, &body["status"]["stable"]["version"]),
        (StatusCode::OK, &json!("1"))
    );
    let answer = server.predict("guarded", json!(5.0), &[]).await;
    assert_eq!(answer.headers()["x-model-version"], "1");
    let (_, body) = server.admin(Method::GET, "guarded/versions", None).await;
    let history: Vec<(&str, &str)> = body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap(), v["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        history,
        [("1", "stable"), ("2", "retired"), ("3", "rolled_back")]
    );
    let (_, version) = server.admin(Method::GET, "guarded/versions/2", None).await;
    assert_eq!(version["description"], "from the registry");
    assert!(version["recent"]["requests"].is_u64(), "{version}");
    assert_eq!(
        version["spec"]["model"],
        json!({"name": "adder", "version": "2"})
    );
    let (status, body) = server
        .admin(
            Method::PUT,
            "guarded/autoscale",
            Some(json!({"min_replicas": 2, "max_replicas": 4})),
        )
        .await;
    assert_eq!((status, &body["replicas"]), (StatusCode::OK, &json!(2)));
    let (status, _) = server
        .admin(
            Method::PUT,
            "guarded/autoscale",
            Some(json!({"min_replicas": 5, "max_replicas": 4})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, body) = server.admin(Method::GET, "guarded/autoscale", None).await;
    assert_eq!(
        body,
        json!({"bounds": {"min_replicas": 2, "max_replicas": 4}, "replicas": 2})
    );
    let (_, spec) = server.admin(Method::GET, "guarded/spec", None).await;
    assert_eq!(
        spec["autoscale"],
        json!({"min_replicas": 2, "max_replicas": 4})
    );
    assert_eq!(spec["model"]["version"], "1");
    let (status, _) = server.admin(Method::GET, "nowhere/status", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = server
        .admin(Method::PUT, "guarded/canary/policy", Some(json!({"hold_ms": 1000, "rules": [{"metric": "p99", "comparison": "less_than", "threshold": 1}]})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("valid metrics are"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_inference_protocol_answers_the_published_example() {
    // The request and response of the Open Inference Protocol's REST specification
    // (kserve/open-inference-protocol, specification/protocol/inference_rest.md, "Inference
    // Request Examples"): two inputs, one FP32 output of shape [3, 2].
    let seen = Arc::new(Mutex::new(None));
    let model = {
        let seen = Arc::clone(&seen);
        predictor_fn(
            move |input0: Vec<Vec<u32>>, input1: Vec<bool>| -> Result<Vec<[f64; 2]>> {
                *seen.lock().unwrap() = Some((input0.clone(), input1.clone()));
                let rows = input0.len() + input1.len();
                Ok((1..=rows).map(|k| [k as f64, k as f64 + 0.1]).collect())
            },
        )
    };
    let signature = ModelSignature {
        platform: "rust".into(),
        inputs: vec![
            TensorSpec::new("input0", "UINT32", vec![-1, 2]),
            TensorSpec::new("input1", "BOOL", vec![-1]),
        ],
        outputs: vec![TensorSpec::new("output0", "FP32", vec![-1, 2])],
    };
    let endpoint = ModelEndpoint::builder("mymodel", model)
        .model("mymodel", "1")
        .signature(signature)
        .build()
        .unwrap();
    endpoint
        .lifecycle()
        .update_model(
            ModelUpdate::new(predictor_fn(|_: Value, _: Value| -> Result<Value> {
                Ok(json!([[0.0, 0.0]]))
            })),
            Some(0),
        )
        .unwrap();
    let server = Server::start(service(vec![endpoint])).await;
    let request = json!({
        "id" : "42",
        "inputs" : [
            {"name" : "input0", "shape" : [ 2, 2 ], "datatype" : "UINT32", "data" : [ 1, 2, 3, 4 ]},
            {"name" : "input1", "shape" : [ 3 ], "datatype" : "BOOL", "data" : [ true ]}
        ],
        "outputs" : [{"name" : "output0"}]
    });
    let published_outputs = json!([
        {"name" : "output0", "shape" : [ 3, 2 ], "datatype"  : "FP32", "data" : [ 1.0, 1.1, 2.0, 2.1, 3.0, 3.1 ]}
    ]);
    let infer = |path: &str| {
        server
            .client
            .post(format!("{}/v2/models/{path}", server.base))
            .bearer_auth(PREDICT_TOKEN)
            .json(&request)
    };
    let response = infer("mymodel/infer").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-model-version"],
        "1",
        "the candidate has 0 %"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "42");
    assert_eq!(body["outputs"], published_outputs);
    assert_eq!(
        (&body["model_name"], &body["model_version"]),
        (&json!("mymodel"), &json!("1"))
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some((vec![vec![1, 2], vec![3, 4]], vec![true]))
    );

    // Addressing a version bypasses the split.
    let response = infer("mymodel/versions/2/infer").send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_version"], "2");
    assert_eq!(body["outputs"][0]["data"], json!([0.0, 0.0]));
    let unknown = infer("mymodel/versions/7/infer").send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let unauthorized = server
        .client
        .post(format!("{}/v2/models/mymodel/infer", server.base))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let mut wrong_type = request.clone();
    wrong_type["inputs"][1]["data"] = json!([1]);
    let response = server
        .client
        .post(format!("{}/v2/models/mymodel/infer", server.base))
        .header("Cnvrg-Api-Key", PREDICT_TOKEN)
        .json(&wrong_type)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("input1"),
        "{error}"
    );

    let get = async |path: &str| {
        let response = server
            .client
            .get(format!("{}{path}", server.base))
            .bearer_auth(PREDICT_TOKEN)
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(
        get("/v2/health/live").await,
        (StatusCode::OK, json!({"live": true}))
    );
    assert_eq!(
        get("/v2/health/ready").await,
        (StatusCode::OK, json!({"ready": true}))
    );
    assert_eq!(
        get("/v2/models/mymodel/ready").await,
        (StatusCode::OK, json!({"name": "mymodel", "ready": true}))
    );
    assert_eq!(
        get("/v2/models/mymodel/versions/2/ready").await.0,
        StatusCode::OK
    );
    assert_eq!(
        get("/v2/models/mymodel/versions/5/ready").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, metadata) = get("/v2/models/mymodel").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert_eq!(metadata["platform"], "rust");
    assert_eq!(
        metadata["inputs"][0],
        json!({"name": "input0", "datatype": "UINT32", "shape": [-1, 2]})
    );
    assert_eq!(metadata["outputs"][0]["datatype"], "FP32");
    assert_eq!(
        get("/v2/models/mymodel/versions/2").await.1["name"],
        "mymodel"
    );
    assert_eq!(get("/v2").await.1["name"], "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_spec_redeploys_as_an_endpoint_that_answers_identically() {
    let registry = Arc::new(ModelRegistry::new());
    // The model reads a setting; the preprocess standardizes; so identical answers need the
    // same model, preprocess and settings.
    let scaled = |version: f64| {
        move || {
            Ok(predictor_fn(move |x: f64, y: f64| -> Result<f64> {
                let scale: f64 = Context::current()
                    .and_then(|ctx| ctx.setting("SCALE").map(str::to_owned))
                    .ok_or_else(|| Error::rejected("SCALE is not set"))?
                    .parse()
                    .map_err(|_| Error::rejected("SCALE is not a number"))?;
                Ok(scale * (x * version + y))
            }))
        }
    };
    registry.register("linear", "1", scaled(1.0));
    registry.register("linear", "2", scaled(2.0));
    registry.register_preprocess("standardize", || {
        Ok(predictor_fn(|a: f64, b: f64| -> Result<[f64; 2]> {
            Ok([(a - 1.0) / 2.0, b / 4.0])
        }))
    });
    let spec = EndpointSpec::from_yaml(
        "name: original\nmodel: {name: linear, version: '1'}\npreprocess: standardize\nserver:\n  env: {SCALE: '10'}\n  workers: {timeout_secs: 60, threads: 2, concurrency: 64}\nautoscale: {min_replicas: 1, max_replicas: 3}\ncanary: {hold_ms: 600000, interval_ms: 1000, rules: [{metric: error_rate, comparison: less_than, threshold: 0.01, min_events: 100}]}\n",
    )
    .unwrap();
    let original = ModelEndpoint::from_spec(spec, &registry)
        .unwrap()
        .build()
        .unwrap();
    let lifecycle = original.lifecycle().clone();
    let update = registry
        .update(&ModelRef::new("linear", "2"), Some("standardize"))
        .unwrap()
        .description("twice the slope");
    lifecycle.update_model(update, None).unwrap();

    let exported = lifecycle.export_spec().to_yaml();
    let mut rerun = EndpointSpec::from_yaml(&exported).unwrap();
    assert_eq!(rerun, lifecycle.export_spec(), "the YAML round-trips");
    assert_eq!(rerun.model, ModelRef::new("linear", "2"));
    assert_eq!(rerun.preprocess.as_deref(), Some("standardize"));
    assert_eq!(rerun.server.env["SCALE"], "10");
    assert_eq!(rerun.autoscale.max_replicas, 3);
    assert!(rerun.canary.is_some());
    rerun.name = "rerun".into();
    let redeployed = ModelEndpoint::from_spec(rerun.clone(), &registry)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(redeployed.lifecycle().stable_version(), "2");

    let server = Server::start(service(vec![original, redeployed])).await;
    for (x, y) in [(1.0, 2.0), (3.5, -4.0), (0.0, 0.0), (100.0, 7.25)] {
        let mut answers = Vec::new();
        for name in ["original", "rerun"] {
            let response = server.predict(name, json!([x, y]), &[]).await;
            assert_eq!(response.status(), StatusCode::OK);
            let version = response.headers()["x-model-version"]
                .to_str()
                .unwrap()
                .to_owned();
            answers.push((version, response.json::<Value>().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "input ({x}, {y})");
        assert_eq!(
            answers[0].1["prediction"],
            json!(10.0 * (2.0 * (x - 1.0) / 2.0 + y / 4.0))
        );
    }
    // Edited: another setting, deployed as a third endpoint.
    rerun.name = "edited".into();
    rerun.server.env.insert("SCALE".into(), "1".into());
    let edited = ModelEndpoint::from_spec(rerun, &registry)
        .unwrap()
        .build()
        .unwrap();
    let answer = edited
        .predict(PredictRequest::new(json!([3.0, 4.0])))
        .await
        .unwrap();
    assert_eq!(answer.output, json!(3.0));
}

/// On `"slow"`, says it started, then sleeps asynchronously (no blocking thread held);
/// answers at once otherwise.
#[derive(Debug)]
struct SlowOnRequest(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl Predictor for SlowOnRequest {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        if input == Input::Json(json!("slow")) {
            self.0.notify_one();
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(json!({ "greeting": ctx.setting("GREETING") }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_settings_from_a_spec_take_effect() {
    let mut spec = EndpointSpec::new("settings", ModelRef::new("slow", "1"));
    spec.server
        .workers
        .apply([("timeout", "3"), ("concurrency", "1"), ("threads", "1")])
        .unwrap();
    spec.server.env.insert("GREETING".into(), "hello".into());
    let unknown = spec
        .server
        .workers
        .set("reload", "true")
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("valid settings are: concurrency, workers, threads, timeout"),
        "{unknown}"
    );
    assert!(matches!(
        spec.server.workers.set("bind", "0.0.0.0:80"),
        Err(Error::InvalidSetting { .. })
    ));
    let spec = EndpointSpec::from_yaml(&spec.to_yaml()).unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let endpoint = ModelEndpoint::builder("settings", SlowOnRequest(Arc::clone(&started)))
        .spec(spec)
        .build()
        .unwrap();
    let server = Arc::new(Server::start(service(vec![endpoint])).await);

    let answer = server.predict("settings", json!("hi"), &[]).await;
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"prediction": {"greeting": "hello"}})
    );
    let slow = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .predict("settings", json!("slow"), &[])
                .await
                .status()
        })
    };
    // While the slow request holds the only slot, another is shed with 503.
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the slow request starts");
    let shed = server.predict("settings", json!("hi"), &[]).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(shed.headers().contains_key("retry-after"));
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::GATEWAY_TIMEOUT,
        "timeout of 3 s, not 30"
    );
}
