//! Conformance suites: what every implementation of a core trait must pass.
//!
//! Each function exercises one trait's `# Contract` and panics with a message on the first
//! violation. They run here against the in-memory implementations and again from each backend
//! crate against its own (`serving-core = { features = ["conformance"] }` in dev-dependencies).
//!
//! [`transport`] holds the suite that every transport (HTTP, Kafka, batch, the runner) passes.

pub mod datasets;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::{
    AutoscaleBounds, Autoscaler, BlockingPool, Context, ContextParts, Endpoint, Error,
    FeedbackExport, FeedbackSink, InMemoryMetrics, Input, MetricHistory, MetricSample, MetricSink,
    PredictRequest, PredictionRecord, Predictor, RequestEvent, Trigger,
};

mod batch;
mod sinks;

pub use batch::{BatchProbe, batch_predictor};
pub use sinks::{RECORDS_ENDPOINT, metric_history, record_sink};

/// A context for calling a predictor outside an endpoint.
pub fn test_context() -> Context {
    Context::new(ContextParts {
        request_id: crate::new_request_id(),
        resources: Default::default(),
        endpoint: Arc::from("conformance"),
        model_version: Arc::from("1"),
        settings: Arc::new(BTreeMap::new()),
        pool: BlockingPool::new(4),
        sink: Arc::new(InMemoryMetrics::new()),
    })
}

/// `predictor` answers each of `cases` (input, expected output) correctly, one at a time,
/// concurrently, and through `predict_batch` in input order.
pub async fn predictor(predictor: &dyn Predictor, cases: &[(Input, Value)]) {
    let ctx = test_context();
    for (input, expected) in cases {
        let got = predictor
            .predict(input.clone(), &ctx)
            .await
            .expect("predict succeeds");
        assert_eq!(&got, expected, "predict({input:?})");
    }
    let concurrent = futures::future::join_all(
        cases
            .iter()
            .cycle()
            .take(cases.len() * 8)
            .map(|(input, _)| predictor.predict(input.clone(), &ctx)),
    )
    .await;
    for (got, (_, expected)) in concurrent.into_iter().zip(cases.iter().cycle()) {
        assert_eq!(
            &got.expect("concurrent predict succeeds"),
            expected,
            "concurrent predict"
        );
    }
    let inputs = cases.iter().map(|(input, _)| input.clone()).collect();
    let batch = predictor.predict_batch(inputs, &ctx).await;
    assert_eq!(
        batch.len(),
        cases.len(),
        "predict_batch returns one result per input"
    );
    for (got, (_, expected)) in batch.into_iter().zip(cases) {
        assert_eq!(
            &got.expect("batch item succeeds"),
            expected,
            "predict_batch keeps input order"
        );
    }
}

/// `endpoint`, built over a predictor that echoes its input, panics on `"panic"`, rejects
/// `"reject"` and sleeps on `"sleep"` past a one-second timeout, records one event per request
/// with the right status (read back from `metrics`, the history of a [`StatusRecorder`] that
/// is the endpoint's sink), and keeps serving after a panic.
pub async fn endpoint(endpoint: &dyn Endpoint, metrics: &dyn MetricHistory) {
    let ok = endpoint
        .predict(PredictRequest::new(json!(["x", 1])).with_request_id("req-1"))
        .await
        .expect("echo succeeds");
    assert_eq!(ok.output, json!(["x", 1]));
    assert_eq!(ok.request_id, "req-1");
    assert_eq!(*ok.model_version, endpoint.spec().model.version);

    let rejected = endpoint.predict(PredictRequest::new(json!("reject"))).await;
    assert!(
        matches!(rejected, Err(Error::Rejected { .. })),
        "{rejected:?}"
    );
    let panicked = endpoint.predict(PredictRequest::new(json!("panic"))).await;
    assert!(
        matches!(panicked, Err(Error::Panicked { .. })),
        "{panicked:?}"
    );
    let slow = endpoint.predict(PredictRequest::new(json!("sleep"))).await;
    assert!(matches!(slow, Err(Error::Timeout { .. })), "{slow:?}");
    let after = endpoint.predict(PredictRequest::new(json!(2))).await;
    assert_eq!(after.expect("serves after a panic").output, json!(2));

    let statuses = metrics.recent_requests(endpoint.name());
    assert_eq!(
        statuses,
        vec![200, 422, 500, 504, 200],
        "one event per request"
    );
}

/// The predictor [`endpoint`] expects.
pub fn endpoint_predictor() -> impl Predictor {
    crate::predictor_fn(|input: Value| -> crate::Result<Value> {
        match input.as_str() {
            Some("reject") => Err(Error::rejected("refused")),
            Some("panic") => panic!("predictor panicked on purpose"),
            Some("sleep") => {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(input)
            }
            _ => Ok(input),
        }
    })
}

/// Helper for the endpoint suite: the statuses of recorded requests.
pub trait RecentRequests {
    /// Statuses of the requests a [`StatusRecorder`] recorded for `endpoint`, oldest first.
    fn recent_requests(&self, endpoint: &str) -> Vec<u16>;
}

impl<H: MetricHistory + ?Sized> RecentRequests for H {
    fn recent_requests(&self, endpoint: &str) -> Vec<u16> {
        let marker = format!("{endpoint}\u{0}requests");
        self.samples(endpoint, &marker, SystemTime::UNIX_EPOCH)
            .iter()
            .map(|s| s.value as u16)
            .collect()
    }
}

/// A sink for the endpoint suite that keeps request statuses as a metric series, so the suite
/// can read them back through [`MetricHistory`] alone. Give it to the endpoint as both its
/// metric sink and its history.
#[derive(Debug, Default)]
pub struct StatusRecorder {
    inner: InMemoryMetrics,
}

#[deny(clippy::missing_trait_methods)]
impl MetricSink for StatusRecorder {
    fn request_started(&self, endpoint: &str) {
        self.inner.request_started(endpoint);
    }

    fn request_finished(&self, endpoint: &str) {
        self.inner.request_finished(endpoint);
    }

    fn record_request(&self, event: &RequestEvent) {
        self.inner.record_request(event);
        self.inner.record_metric(&MetricSample {
            endpoint: event.endpoint.to_string(),
            model_version: event.model_version.to_string(),
            key: format!("{}\u{0}requests", event.endpoint),
            value: f64::from(event.status),
            at: event.at,
        });
    }

    fn record_requests(&self, events: &[RequestEvent]) {
        events.iter().for_each(|event| self.record_request(event));
    }

    fn record_metric(&self, sample: &MetricSample) {
        self.inner.record_metric(sample);
    }

    fn record_alert(&self, alert: &crate::Alert) {
        self.inner.record_alert(alert);
    }

    #[allow(deprecated)]
    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>> {
        self.inner.recent_metric(endpoint, key, since)
    }
}

#[deny(clippy::missing_trait_methods)]
impl MetricHistory for StatusRecorder {
    fn samples(&self, endpoint: &str, key: &str, since: SystemTime) -> Vec<MetricSample> {
        self.inner.samples(endpoint, key, since)
    }
}

/// `sink` takes every kind of event without failing and, if its deprecated
/// [`MetricSink::recent_metric`] answers, answers it as [`metric_history`] requires of a
/// history. Run [`metric_history`] too on a sink that keeps history.
#[allow(deprecated)]
pub fn metric_sink(sink: &dyn MetricSink) {
    let start = SystemTime::now();
    let sample = |endpoint: &str, key: &str, value: f64, at: SystemTime| MetricSample {
        endpoint: endpoint.into(),
        model_version: "1".into(),
        key: key.into(),
        value,
        at,
    };
    sink.request_started("a");
    sink.request_finished("a");
    sink.record_request(&RequestEvent {
        endpoint: "a".into(),
        model_version: "1".into(),
        status: 200,
        outcome: crate::Outcome::Ok,
        latency: Duration::from_millis(3),
        at: start,
    });
    let old = start - Duration::from_secs(3600);
    sink.record_metric(&sample("a", "accuracy", 0.5, old));
    sink.record_metric(&sample("a", "accuracy", 0.9, start));
    sink.record_metric(&sample("a", "accuracy", 0.8, start));
    sink.record_metric(&sample("a", "drift", 7.0, start));
    sink.record_metric(&sample("b", "accuracy", 0.1, start));
    let Some(recent) = sink.recent_metric("a", "accuracy", start) else {
        return;
    };
    let values: Vec<f64> = recent.iter().map(|s| s.value).collect();
    assert_eq!(
        values,
        vec![0.9, 0.8],
        "recent samples of one series, in order, since `since`"
    );
    let all = sink
        .recent_metric("a", "accuracy", SystemTime::UNIX_EPOCH)
        .unwrap();
    assert_eq!(all.len(), 3, "each sample counted once");
    assert!(
        sink.recent_metric("a", "missing", start)
            .unwrap()
            .is_empty()
    );
}

/// `scaler` clamps to bounds, is idempotent, refuses bad bounds without change, and reports
/// what it applied.
pub async fn autoscaler(scaler: &dyn Autoscaler, endpoint: &str) {
    let bounds = AutoscaleBounds::new(1, 4).unwrap();
    assert_eq!(scaler.scale(endpoint, bounds, 3).await.unwrap(), 3);
    assert_eq!(scaler.replicas(endpoint).await.unwrap(), 3);
    assert_eq!(
        scaler.scale(endpoint, bounds, 3).await.unwrap(),
        3,
        "idempotent"
    );
    assert_eq!(
        scaler.scale(endpoint, bounds, 10).await.unwrap(),
        4,
        "clamped to max"
    );
    assert_eq!(
        scaler.scale(endpoint, bounds, 0).await.unwrap(),
        1,
        "clamped to min"
    );
    let to_zero = AutoscaleBounds::new(0, 2).unwrap();
    assert_eq!(
        scaler.scale(endpoint, to_zero, 0).await.unwrap(),
        0,
        "scale to zero"
    );
    let bad = AutoscaleBounds {
        min_replicas: 3,
        max_replicas: 1,
    };
    assert!(
        scaler.scale(endpoint, bad, 2).await.is_err(),
        "bad bounds refused"
    );
    assert_eq!(
        scaler.replicas(endpoint).await.unwrap(),
        0,
        "refused scale changes nothing"
    );
}

/// `trigger` keeps its rule, and firing an alert the rule produced succeeds.
pub async fn trigger(trigger: &dyn Trigger) {
    let rule = trigger.rule().clone();
    assert_eq!(trigger.rule(), &rule, "the rule is fixed");
    let now = SystemTime::now();
    let hit = if rule.holds(rule.threshold + 1.0) {
        rule.threshold + 1.0
    } else {
        rule.threshold - 1.0
    };
    let samples: Vec<MetricSample> = (0..rule.min_events.max(1))
        .map(|_| MetricSample {
            endpoint: "e".into(),
            model_version: "1".into(),
            key: rule.metric.clone(),
            value: hit,
            at: now,
        })
        .collect();
    let alert = rule
        .evaluate("e", &samples, now)
        .expect("min_events matching samples fire");
    assert_eq!(alert.events, rule.min_events.max(1));
    assert!(rule.evaluate("e", &samples[1..], now).is_none() || rule.min_events <= 1);
    trigger.fire(&alert).await.expect("the action succeeds");
}

/// `sink` stores exports all or nothing at distinct locations and refuses empty ones.
pub async fn feedback_sink(sink: &dyn FeedbackSink) {
    let record = |i: u32| PredictionRecord {
        request_id: format!("r{i}"),
        endpoint: "e".into(),
        model: "m".into(),
        model_version: "1".into(),
        input: Some(json!([i, "in,put"])),
        output: Some(json!({"class": i})),
        error: None,
        status: 200,
        start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(i)),
        elapsed_ms: 1.5,
        metrics: BTreeMap::from([("confidence".into(), 0.5)]),
        params: BTreeMap::new(),
    };
    let export = |records| FeedbackExport {
        endpoint: "e".into(),
        dataset: "feedback".into(),
        records,
        exported_at: SystemTime::now(),
    };
    let first = sink
        .export(export((0..3).map(record).collect()))
        .await
        .expect("export succeeds");
    assert_eq!(first.records, 3);
    let second = sink
        .export(export(vec![record(9)]))
        .await
        .expect("export succeeds");
    assert_eq!(second.records, 1);
    assert_ne!(
        first.location, second.location,
        "every export lands at a new location"
    );
    assert!(
        sink.export(export(vec![])).await.is_err(),
        "an empty export is refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CallbackTrigger, Comparison, DynMetricSink, InMemoryAutoscaler, InMemoryFeedback,
        ModelEndpoint, Severity, TriggerRule, predictor_fn,
    };

    #[tokio::test]
    async fn fn_predictor_conforms() {
        let square = predictor_fn(|x: f64| -> crate::Result<f64> { Ok(x * x) });
        predictor(
            &square,
            &[
                (Input::Json(json!(3)), json!(9.0)),
                (Input::Json(json!([2])), json!(4.0)),
            ],
        )
        .await;
        let cases = [(Input::Json(json!(4)), json!(16.0))];
        let shared: Arc<crate::DynPredictor> = Arc::new(square.clone());
        predictor(&shared, &cases).await;
        let boxed: Box<crate::DynPredictor> = Box::new(square.clone());
        predictor(&boxed, &cases).await;
        let with_pre = crate::PredictorExt::with_preprocess(
            square,
            predictor_fn(|a: f64, b: f64| -> crate::Result<f64> { Ok(a + b) }),
        );
        predictor(&with_pre, &[(Input::Json(json!([1, 2])), json!(9.0))]).await;
    }

    fn conformance_endpoint() -> (ModelEndpoint, Arc<StatusRecorder>) {
        let metrics = Arc::new(StatusRecorder::default());
        let endpoint = ModelEndpoint::builder("conformance", endpoint_predictor())
            .timeout(Duration::from_secs(1))
            .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
            .metric_history(Arc::clone(&metrics) as Arc<crate::DynMetricHistory>)
            .build()
            .unwrap();
        (endpoint, metrics)
    }

    #[tokio::test]
    async fn model_endpoint_conforms() {
        let (endpoint, metrics) = conformance_endpoint();
        super::endpoint(&endpoint, &*metrics).await;
    }

    #[tokio::test]
    async fn model_endpoint_conforms_through_box_and_arc() {
        let (endpoint, metrics) = conformance_endpoint();
        let boxed: Box<dyn Endpoint> = Box::new(endpoint);
        super::endpoint(&boxed, &*metrics).await;
        let (endpoint, metrics) = conformance_endpoint();
        let shared: Arc<dyn Endpoint> = Arc::new(endpoint);
        super::endpoint(&shared, &*metrics).await;
    }

    #[test]
    fn in_memory_metrics_conform() {
        metric_sink(&InMemoryMetrics::new());
        let boxed: Box<DynMetricSink> = Box::new(InMemoryMetrics::with_capacity(100));
        metric_sink(&boxed);
    }

    #[tokio::test]
    async fn in_memory_autoscaler_conforms() {
        autoscaler(&InMemoryAutoscaler::new(), "e").await;
        let boxed: Box<crate::DynAutoscaler> = Box::new(InMemoryAutoscaler::new());
        autoscaler(&boxed, "e").await;
        let shared: Arc<crate::DynAutoscaler> = Arc::new(InMemoryAutoscaler::new());
        autoscaler(&shared, "e").await;
    }

    #[tokio::test]
    async fn callback_trigger_conforms() {
        let rule = TriggerRule::new("accuracy drop", "accuracy", Comparison::LessThan, 0.8, 60)
            .with_severity(Severity::Critical)
            .with_min_events(3);
        let callback = Arc::new(CallbackTrigger::new(rule, |_| Ok(())));
        trigger(&*callback).await;
        assert_eq!(callback.fired().len(), 1);
        let shared: Arc<crate::DynTrigger> = Arc::clone(&callback) as _;
        trigger(&shared).await;
        let boxed: Box<crate::DynTrigger> = Box::new(shared);
        trigger(&boxed).await;
        assert_eq!(callback.fired().len(), 3, "each through its pointer");
    }

    #[tokio::test]
    async fn in_memory_feedback_conforms() {
        let sink = InMemoryFeedback::new();
        feedback_sink(&sink).await;
        assert_eq!(sink.exports().len(), 2);
        let boxed: Box<crate::DynFeedbackSink> = Box::new(InMemoryFeedback::new());
        feedback_sink(&boxed).await;
        let shared: Arc<crate::DynFeedbackSink> = Arc::new(InMemoryFeedback::new());
        feedback_sink(&shared).await;
    }
}
