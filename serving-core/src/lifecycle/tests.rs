use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::control::trigger::Comparison;
use crate::observe::metrics::{InMemoryMetrics, MetricSink};
use crate::observe::record::PredictionRecord;
use crate::{Endpoint, ModelEndpoint, PredictRequest, predictor_fn};

/// A predictor answering `x * factor`.
fn times(factor: f64) -> ModelUpdate {
    ModelUpdate::new(predictor_fn(move |x: f64| -> Result<f64> {
        Ok(x * factor)
    }))
}

fn endpoint() -> ModelEndpoint {
    ModelEndpoint::builder("lifecycle", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
        .model("scaler", "1")
        .build()
        .unwrap()
}

async fn answer(endpoint: &ModelEndpoint, request: PredictRequest) -> (String, serde_json::Value) {
    let prediction = endpoint.predict(request).await.unwrap();
    (prediction.model_version.to_string(), prediction.output)
}

#[tokio::test]
async fn versions_count_up_and_an_update_waits_for_the_candidate() {
    let endpoint = endpoint();
    let lifecycle = endpoint.lifecycle();
    assert_eq!(lifecycle.update_model(times(2.0), None).unwrap(), "2");
    assert_eq!(
        answer(&endpoint, PredictRequest::new(json!(3.0))).await,
        ("2".to_owned(), json!(6.0))
    );
    assert_eq!(
        lifecycle
            .update_model(times(3.0).description("bigger"), Some(10))
            .unwrap(),
        "3"
    );
    let refused = lifecycle.update_model(times(4.0), None).unwrap_err();
    assert!(matches!(refused, Error::Conflict { .. }), "{refused}");
    assert_eq!(refused.status(), 409);
    let duplicate = lifecycle
        .rollback()
        .and_then(|_| lifecycle.update_model(times(4.0).version("2"), None));
    assert!(
        matches!(duplicate, Err(Error::Conflict { .. })),
        "{duplicate:?}"
    );
    assert_eq!(
        lifecycle
            .update_model(times(4.0).version("v-four"), None)
            .unwrap(),
        "v-four"
    );
    assert_eq!(lifecycle.update_model(times(5.0), Some(0)).unwrap(), "4");

    let history = lifecycle.versions();
    let ids: Vec<&str> = history.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "v-four", "4"]);
    let states: Vec<VersionState> = history.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            VersionState::Retired,
            VersionState::Retired,
            VersionState::RolledBack,
            VersionState::Stable,
            VersionState::Candidate
        ]
    );
    assert_eq!(history[2].description, "bigger");
    assert_eq!(history[2].spec.model, ModelRef::new("scaler", "3"));
    assert!(lifecycle.set_canary(101).is_err());
}

#[tokio::test]
async fn promote_and_rollback_move_traffic_and_pinned_requests_bypass_the_split() {
    let endpoint = endpoint();
    let lifecycle = endpoint.lifecycle();
    assert!(matches!(lifecycle.promote(), Err(Error::Conflict { .. })));
    assert!(matches!(lifecycle.rollback(), Err(Error::Conflict { .. })));
    lifecycle.update_model(times(2.0), Some(0)).unwrap();
    for _ in 0..20 {
        assert_eq!(
            answer(&endpoint, PredictRequest::new(json!(1.0))).await.0,
            "1"
        );
    }
    let pinned = PredictRequest::new(json!(1.0)).with_version("2");
    assert_eq!(
        answer(&endpoint, pinned).await,
        ("2".to_owned(), json!(2.0))
    );
    let unknown = endpoint
        .predict(PredictRequest::new(json!(1.0)).with_version("9"))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, Error::VersionNotFound { .. }),
        "{unknown}"
    );

    lifecycle.set_canary(100).unwrap();
    assert_eq!(
        answer(&endpoint, PredictRequest::new(json!(1.0))).await.0,
        "2"
    );
    assert_eq!(lifecycle.promote().unwrap(), "2");
    assert_eq!(lifecycle.candidate(), None);
    // No candidate: rollback reverts to the previous stable version.
    assert_eq!(lifecycle.rollback().unwrap(), "1");
    assert_eq!(
        answer(&endpoint, PredictRequest::new(json!(1.0))).await.0,
        "1"
    );
    lifecycle.rollback_to("2").unwrap();
    assert_eq!(lifecycle.stable_version(), "2");
    assert!(matches!(
        lifecycle.rollback_to("7"),
        Err(Error::VersionNotFound { .. })
    ));
    let actions: Vec<LifecycleAction> = lifecycle.events().iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            LifecycleAction::Deployed,
            LifecycleAction::CanaryStarted,
            LifecycleAction::CanaryShare,
            LifecycleAction::Promoted,
            LifecycleAction::RolledBack,
            LifecycleAction::RolledBack,
        ]
    );
}

#[tokio::test]
async fn an_unloaded_version_is_rebuilt_from_the_registry_on_rollback() {
    let registry = Arc::new(ModelRegistry::new());
    for version in 1..=4 {
        registry.register("scaler", version.to_string(), move || {
            Ok(predictor_fn(move |x: f64| -> Result<f64> {
                Ok(x * f64::from(version))
            }))
        });
    }
    let endpoint = ModelEndpoint::from_spec(
        EndpointSpec::new("rebuilt", ModelRef::new("scaler", "1")),
        &registry,
    )
    .unwrap()
    .retain_versions(1)
    .build()
    .unwrap();
    let lifecycle = endpoint.lifecycle();
    for version in ["2", "3", "4"] {
        let update = registry
            .update(&ModelRef::new("scaler", version), None)
            .unwrap();
        lifecycle.update_model(update, None).unwrap();
    }
    let loaded: Vec<bool> = lifecycle.versions().iter().map(|v| v.loaded).collect();
    assert_eq!(
        loaded,
        [false, true, true, true],
        "stable, previous and one retained"
    );
    lifecycle.rollback_to("1").unwrap();
    assert_eq!(
        answer(&endpoint, PredictRequest::new(json!(5.0))).await,
        ("1".to_owned(), json!(5.0))
    );

    let unregistered = endpoint.lifecycle().clone();
    let bare = ModelEndpoint::builder("bare", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
        .retain_versions(1)
        .build()
        .unwrap();
    for factor in [2.0, 3.0, 4.0] {
        bare.lifecycle().update_model(times(factor), None).unwrap();
    }
    let gone = bare.lifecycle().rollback_to("1").unwrap_err();
    assert!(gone.to_string().contains("no registry"), "{gone}");
    drop(unregistered);
}

fn policy(rules: Vec<CanaryRule>, hold: Duration) -> CanaryPolicy {
    // Evaluated by hand in these tests: the timer is far away.
    CanaryPolicy::new(rules, hold).interval(Duration::from_secs(3600))
}

#[tokio::test]
async fn the_automated_canary_rolls_back_a_candidate_that_breaks_a_rule() {
    let endpoint = ModelEndpoint::builder("auto", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
        .canary_policy(policy(
            vec![CanaryRule::new(
                CanaryMetric::ErrorRate,
                Comparison::LessThan,
                0.2,
                10,
            )],
            Duration::from_secs(3600),
        ))
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle();
    let failing = ModelUpdate::new(predictor_fn(|x: f64| -> std::result::Result<f64, String> {
        if x > 5.0 { Err("broken".into()) } else { Ok(x) }
    }));
    lifecycle.update_model(failing, Some(50)).unwrap();
    for x in 0..9 {
        let _ = endpoint
            .predict(PredictRequest::new(json!(f64::from(x))).with_version("2"))
            .await;
    }
    let waiting = lifecycle.evaluate_canary().unwrap();
    assert_eq!(waiting.decision, CanaryDecision::Wait, "9 events < 10");
    assert_eq!(waiting.outcomes[0].events, 9);
    let _ = endpoint
        .predict(PredictRequest::new(json!(9.0)).with_version("2"))
        .await;
    let decided = lifecycle.evaluate_canary().unwrap();
    let CanaryDecision::Rollback { reason } = &decided.decision else {
        panic!("{decided:?}")
    };
    assert!(reason.starts_with("error_rate 0.4000"), "{reason}");
    assert_eq!(lifecycle.candidate(), None);
    assert_eq!(lifecycle.stable_version(), "1");
    let last = lifecycle.events().pop().unwrap();
    assert_eq!(last.action, LifecycleAction::RolledBack);
    assert!(last.automatic);
    assert!(
        lifecycle.evaluate_canary().is_none(),
        "nothing left to watch"
    );
}

#[tokio::test]
async fn the_automated_canary_promotes_a_candidate_that_holds_for_the_period() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = ModelEndpoint::builder("auto", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
        .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle();
    let accurate = ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> {
        crate::log_metric("accuracy", 0.95);
        Ok(x)
    }));
    lifecycle.update_model(accurate, Some(100)).unwrap();
    assert!(lifecycle.evaluate_canary().is_none(), "no policy yet");
    lifecycle
        .set_canary_policy(Some(policy(
            vec![
                CanaryRule::new(
                    CanaryMetric::Custom("accuracy".into()),
                    Comparison::GreaterThan,
                    0.9,
                    3,
                ),
                CanaryRule::new(
                    CanaryMetric::P95LatencyMs,
                    Comparison::LessThan,
                    60_000.0,
                    3,
                ),
            ],
            Duration::from_millis(150),
        )))
        .unwrap();
    assert_eq!(
        lifecycle.evaluate_canary().unwrap().decision,
        CanaryDecision::Wait
    );
    for x in 0..3 {
        answer(&endpoint, PredictRequest::new(json!(f64::from(x)))).await;
    }
    // Another version's samples of the metric do not count for the candidate.
    metrics.record_metric(&crate::MetricSample {
        endpoint: "auto".into(),
        model_version: "1".into(),
        key: "accuracy".into(),
        value: 0.1,
        at: SystemTime::now(),
    });
    let holding = lifecycle.evaluate_canary().unwrap();
    assert!(
        matches!(holding.decision, CanaryDecision::Hold { .. }),
        "{holding:?}"
    );
    assert!((holding.outcomes[0].value.unwrap() - 0.95).abs() < 1e-9);
    assert_eq!(holding.outcomes[0].events, 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        lifecycle.evaluate_canary().unwrap().decision,
        CanaryDecision::Promote
    );
    assert_eq!(lifecycle.stable_version(), "2");
    assert!(lifecycle.events().last().unwrap().automatic);
}

/// A sink written when every sink had to answer for history: it keeps none and says it has
/// nothing.
#[derive(Debug)]
struct KeepsNothing;

impl MetricSink for KeepsNothing {
    fn record_request(&self, _: &crate::RequestEvent) {}

    fn record_metric(&self, _: &crate::MetricSample) {}

    fn recent_metric(&self, _: &str, _: &str, _: SystemTime) -> Option<Vec<crate::MetricSample>> {
        Some(Vec::new())
    }
}

/// A canary on `custom:accuracy` over a fan-out whose first sink keeps no history, with
/// the sink that keeps it given as the endpoint's history reader or not: what the rule saw
/// after three predictions.
async fn canary_behind_a_fan_out(with_reader: bool) -> RuleOutcome {
    let kept = Arc::new(InMemoryMetrics::new());
    let fan_out = crate::FanOut::new(vec![
        Arc::new(KeepsNothing),
        Arc::new(crate::ChartMetrics::new()),
        Arc::clone(&kept) as Arc<DynMetricSink>,
    ]);
    let mut builder =
        ModelEndpoint::builder("fanned", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
            .metric_sink(Arc::new(fan_out));
    if with_reader {
        builder = builder.metric_history(kept);
    }
    let endpoint = builder.build().unwrap();
    let lifecycle = endpoint.lifecycle();
    let accurate = ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> {
        crate::log_metric("accuracy", 0.95);
        Ok(x)
    }));
    lifecycle.update_model(accurate, Some(100)).unwrap();
    let rule = CanaryRule::new(
        CanaryMetric::Custom("accuracy".into()),
        Comparison::GreaterThan,
        0.9,
        3,
    );
    lifecycle
        .set_canary_policy(Some(policy(vec![rule], Duration::from_secs(3600))))
        .unwrap();
    for x in 0..3 {
        answer(&endpoint, PredictRequest::new(json!(f64::from(x)))).await;
    }
    lifecycle.evaluate_canary().unwrap().outcomes.remove(0)
}

#[tokio::test]
async fn a_canary_rule_sees_its_events_when_a_sink_without_history_comes_first() {
    let read = canary_behind_a_fan_out(true).await;
    assert_eq!((read.events, read.verdict), (3, Verdict::Holds), "{read:?}");
    // Without a reader, through the fan-out's deprecated `recent_metric` (the first sink
    // answered "nothing" there, and the rule saw 0 events and stayed pending).
    let asked_in_turn = canary_behind_a_fan_out(false).await;
    assert_eq!(
        (asked_in_turn.events, asked_in_turn.verdict),
        (3, Verdict::Holds),
        "{asked_in_turn:?}"
    );
}

#[tokio::test]
async fn a_shadow_is_recorded_with_its_version_and_compared_but_never_returned() {
    let records = crate::InMemoryRecords::new();
    let endpoint =
        ModelEndpoint::builder("shadowed", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
            .record_sink(Arc::new(records.clone()))
            .build()
            .unwrap();
    let lifecycle = endpoint.lifecycle();
    let half_right = ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> {
        Ok(if x < 2.0 { x } else { -x })
    }));
    assert_eq!(
        lifecycle
            .shadow_model(half_right.model("half-right"), 100)
            .unwrap(),
        "2"
    );
    for x in 0..4 {
        let (version, output) = answer(
            &endpoint,
            PredictRequest::new(json!(f64::from(x))).with_request_id(format!("r{x}")),
        )
        .await;
        assert_eq!((version.as_str(), output), ("1", json!(f64::from(x))));
    }
    let mut shadow_records: Vec<PredictionRecord> = records
        .wait_for(8, Duration::from_secs(30))
        .await
        .expect("the shadow's records arrive")
        .into_iter()
        .filter(|record| record.model_version == "2")
        .collect();
    assert_eq!(shadow_records.len(), 4);
    shadow_records.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(shadow_records[3].request_id, "r3");
    assert_eq!(shadow_records[3].output, Some(json!(-3.0)));
    assert_eq!(shadow_records[3].params["shadow_of"], json!("1"));
    assert_eq!(
        shadow_records[3].model, "half-right",
        "the answering version's model"
    );
    let comparison = loop {
        let comparison = lifecycle.shadow_comparison("2");
        if comparison.compared == 4 {
            break comparison;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(comparison.agreement_rate, Some(0.5));
    let status = lifecycle.status().await;
    assert_eq!(status.shadow.unwrap().traffic.requests_total, 4);
    lifecycle.stop_shadow().unwrap();
    assert_eq!(
        lifecycle.version("2").unwrap().state,
        VersionState::ShadowEnded
    );
}

#[tokio::test]
async fn the_exported_spec_carries_the_stable_version_bounds_and_policy() {
    let endpoint = endpoint();
    let lifecycle = endpoint.lifecycle();
    lifecycle
        .update_model(times(2.0).model("scaler-v2").description("x2"), None)
        .unwrap();
    let bounds = AutoscaleBounds::new(2, 5).unwrap();
    assert_eq!(lifecycle.set_autoscale(bounds).await.unwrap(), 2);
    assert_eq!(lifecycle.replicas().await.unwrap(), 2);
    assert!(
        lifecycle
            .set_autoscale(AutoscaleBounds {
                min_replicas: 3,
                max_replicas: 1
            })
            .await
            .is_err()
    );
    let rules = policy(vec![], Duration::from_secs(60));
    lifecycle.set_canary_policy(Some(rules.clone())).unwrap();
    let spec = lifecycle.export_spec();
    assert_eq!(spec.model, ModelRef::new("scaler-v2", "2"));
    assert_eq!(spec.autoscale, bounds);
    assert_eq!(spec.canary, Some(rules));
    assert_eq!(EndpointSpec::from_yaml(&spec.to_yaml()).unwrap(), spec);
    let status = lifecycle.status().await;
    assert_eq!(status.model.name, "scaler-v2");
    assert_eq!(status.replicas, 2);
}

/// Waits for `release` before answering `"v1"`.
#[derive(Debug)]
struct Gated {
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl crate::Predictor for Gated {
    async fn predict(&self, _: crate::Input, _: &crate::Context) -> Result<serde_json::Value> {
        self.started.notify_one();
        self.release.notified().await;
        Ok(json!("v1"))
    }
}

#[tokio::test]
async fn a_request_in_flight_during_a_switch_finishes_on_the_old_version() {
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let gated = Gated {
        started: Arc::clone(&started),
        release: Arc::clone(&release),
    };
    let endpoint = ModelEndpoint::builder("switch", gated).build().unwrap();
    let in_flight = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { endpoint.predict(PredictRequest::new(json!(null))).await }
    });
    started.notified().await;
    let v2 = ModelUpdate::new(predictor_fn(
        |_: serde_json::Value| -> Result<&'static str> { Ok("v2") },
    ));
    endpoint.lifecycle().update_model(v2, None).unwrap();
    assert_eq!(
        answer(&endpoint, PredictRequest::new(json!(null))).await,
        ("2".to_owned(), json!("v2")),
        "new requests go to the new version at once"
    );
    release.notify_one();
    let finished = in_flight
        .await
        .unwrap()
        .expect("the in-flight request does not fail");
    assert_eq!(
        (&*finished.model_version, finished.output),
        ("1", json!("v1"))
    );
}
