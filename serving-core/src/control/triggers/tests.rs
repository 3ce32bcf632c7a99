//! The runner under Tokio's paused clock: each test advances time poll by poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use super::*;
use crate::control::trigger::{CallbackTrigger, Comparison};
use crate::observe::metrics::{DynMetricHistory, DynMetricSink, InMemoryMetrics, MetricSample};
use crate::setting::Settings as _;
use crate::{ActionSpec, MetricSink, ModelEndpoint, Outcome, predictor_fn};

const EVERY: u64 = 10;

fn endpoint(metrics: &Arc<InMemoryMetrics>) -> ModelEndpoint {
    let model = predictor_fn(|x: f64| -> crate::Result<f64> { Ok(x) });
    ModelEndpoint::builder("e", model)
        .metric_sink(Arc::clone(metrics) as Arc<DynMetricSink>)
        .metric_history(Arc::clone(metrics) as Arc<DynMetricHistory>)
        .action_settings(ActionSettings::default())
        .build()
        .unwrap()
}

fn log(metrics: &InMemoryMetrics, version: &str, values: &[f64]) {
    for &value in values {
        metrics.record_metric(&MetricSample {
            endpoint: "e".into(),
            model_version: version.into(),
            key: "m".into(),
            value,
            at: SystemTime::now(),
        });
    }
}

/// Sleeps past the next poll: the first call half an interval in, so that polls and the test
/// never wake at the same instant.
async fn next_poll(first: &mut bool) {
    let wait = if std::mem::take(first) {
        Duration::from_millis(EVERY * 1000 + 500)
    } else {
        Duration::from_secs(EVERY)
    };
    tokio::time::sleep(wait).await;
}

fn status(endpoint: &ModelEndpoint, id: &str) -> TriggerStatus {
    endpoint
        .lifecycle()
        .triggers()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap()
}

fn counting(rule: TriggerRule) -> (Arc<CallbackTrigger>, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let trigger = CallbackTrigger::new_async(rule, move |_| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    (Arc::new(trigger), calls)
}

#[tokio::test(start_paused = true)]
async fn fires_after_exactly_min_events_then_rearms_when_cleared() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule =
        TriggerRule::new("high", "m", Comparison::GreaterThan, 5.0, EVERY).with_min_events(3);
    let (trigger, calls) = counting(rule);
    let id = endpoint.lifecycle().add_trigger(trigger.clone()).unwrap();
    let mut first = true;

    // Two matching samples (and others below the threshold) are one too few.
    log(&metrics, "1", &[6.0, 1.0, 7.0, 2.0, 5.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let seen = status(&endpoint, &id);
    assert_eq!((seen.polls, seen.state), (1, TriggerState::Armed));

    // Exactly three fire, with the count and the last value.
    log(&metrics, "1", &[6.0, 1.0, 7.0, 8.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let fired = &trigger.fired()[0];
    assert_eq!((fired.events, fired.last_value), (3, 8.0));
    let seen = status(&endpoint, &id);
    assert_eq!(seen.state, TriggerState::Fired);
    assert_eq!(seen.alerts.len(), 1);
    assert!(seen.alerts[0].ok);

    // Still holding: no second alert.
    log(&metrics, "1", &[9.0, 9.0, 9.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A poll that finds it cleared re-arms it; the next that holds fires again.
    next_poll(&mut first).await;
    assert_eq!(status(&endpoint, &id).state, TriggerState::Armed);
    log(&metrics, "1", &[9.0, 9.0, 9.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(status(&endpoint, &id).fired, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cooldown_rearms_after_its_time_even_while_holding() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule =
        TriggerRule::new("high", "m", Comparison::GreaterThan, 5.0, EVERY).with_cooldown_secs(30);
    let (trigger, calls) = counting(rule);
    let id = endpoint.lifecycle().add_trigger(trigger).unwrap();
    let mut first = true;
    let mut fired_at_poll = Vec::new();
    for poll in 1..=7 {
        log(&metrics, "1", &[6.0]);
        let before = calls.load(Ordering::SeqCst);
        next_poll(&mut first).await;
        if calls.load(Ordering::SeqCst) > before {
            fired_at_poll.push(poll);
        }
        if poll == 2 {
            assert_eq!(status(&endpoint, &id).state, TriggerState::Fired);
        }
    }
    // Polls at 10 s, 20 s, …: fired at 10 s, then not before 40 s, then 70 s.
    assert_eq!(fired_at_poll, [1, 4, 7]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_action_is_counted_and_tried_again_at_the_next_poll() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule = TriggerRule::new("high", "m", Comparison::GreaterThan, 5.0, EVERY);
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let trigger = CallbackTrigger::new(rule, move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(crate::Error::Action {
                action: "test".into(),
                source: "the receiver is down".into(),
            })
        } else {
            Ok(())
        }
    });
    let id = endpoint.lifecycle().add_trigger(Arc::new(trigger)).unwrap();
    let mut first = true;
    for _ in 0..3 {
        log(&metrics, "1", &[6.0]);
        next_poll(&mut first).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "failed, retried, then held"
    );
    let seen = status(&endpoint, &id);
    assert_eq!((seen.fired, seen.failures), (2, 1));
    assert!(!seen.alerts[0].ok);
    assert!(
        seen.alerts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("the receiver is down")
    );
    assert!(seen.alerts[1].ok);
    assert_eq!(seen.state, TriggerState::Fired);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_action_is_a_failure_and_polling_goes_on() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule = TriggerRule::new("high", "m", Comparison::GreaterThan, 5.0, EVERY);
    let trigger = CallbackTrigger::new(rule, |_| panic!("bug in the action"));
    let id = endpoint.lifecycle().add_trigger(Arc::new(trigger)).unwrap();
    let mut first = true;
    for _ in 0..2 {
        log(&metrics, "1", &[6.0]);
        next_poll(&mut first).await;
    }
    let seen = status(&endpoint, &id);
    assert_eq!((seen.polls, seen.failures), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn built_in_measurements_need_min_events_requests() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let lifecycle = endpoint.lifecycle();
    let rule = TriggerRule::new("errors", "error_rate", Comparison::GreaterThan, 0.4, EVERY)
        .with_min_events(4);
    let (errors, error_calls) = counting(rule);
    let idle = TriggerRule::new(
        "idle",
        "requests_per_minute",
        Comparison::LessThan,
        1.0,
        EVERY,
    );
    let (idle, idle_calls) = counting(idle);
    let slow = TriggerRule::new(
        "slow",
        "p95_latency_ms",
        Comparison::GreaterThan,
        100.0,
        EVERY,
    );
    let (slow, slow_calls) = counting(slow);
    let errors_id = lifecycle.add_trigger(errors.clone()).unwrap();
    lifecycle.add_trigger(idle).unwrap();
    let slow_id = lifecycle.add_trigger(slow).unwrap();
    let mut first = true;

    // An idle interval: fewer than one request per minute, and no error rate or latency.
    next_poll(&mut first).await;
    assert_eq!(idle_calls.load(Ordering::SeqCst), 1);
    assert_eq!(error_calls.load(Ordering::SeqCst), 0);
    assert_eq!(status(&endpoint, &errors_id).last_value, None);

    // Three failures are fewer requests than min_events: no value yet.
    for _ in 0..3 {
        lifecycle.record(
            &served("1", Outcome::ModelFailure, Duration::from_millis(5)),
            std::time::Instant::now(),
        );
    }
    next_poll(&mut first).await;
    assert_eq!(error_calls.load(Ordering::SeqCst), 0);

    // Two of four failed: 0.5 > 0.4.
    for outcome in [
        Outcome::Ok,
        Outcome::ModelFailure,
        Outcome::Ok,
        Outcome::Timeout,
    ] {
        lifecycle.record(
            &served("1", outcome, Duration::from_millis(200)),
            std::time::Instant::now(),
        );
    }
    next_poll(&mut first).await;
    assert_eq!(error_calls.load(Ordering::SeqCst), 1);
    let alert = &errors.fired()[0];
    assert_eq!((alert.events, alert.last_value), (4, 0.5));
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1);
    assert_eq!(status(&endpoint, &slow_id).last_value, Some(200.0));
}

#[tokio::test(start_paused = true)]
async fn a_rule_scoped_to_a_version_ignores_the_others() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule = TriggerRule::new("v2 high", "custom:m", Comparison::GreaterThan, 5.0, EVERY)
        .with_model_version("2");
    let (trigger, calls) = counting(rule);
    endpoint.lifecycle().add_trigger(trigger).unwrap();
    let mut first = true;
    log(&metrics, "1", &[9.0, 9.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    log(&metrics, "2", &[9.0]);
    next_poll(&mut first).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn spec_triggers_are_exported_listed_and_removed() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let lifecycle = endpoint.lifecycle();
    let spec = TriggerSpec {
        rule: TriggerRule::new("mail", "m", Comparison::LessThan, 1.0, EVERY),
        action: ActionSpec::Email {
            to: vec!["ops@example.com".into()],
        },
    };
    let refused = lifecycle.add_trigger_spec(spec.clone()).unwrap_err();
    #[cfg(feature = "email")]
    assert!(
        refused.to_string().contains("SERVING_SMTP_URL"),
        "{refused}"
    );
    #[cfg(not(feature = "email"))]
    assert!(refused.to_string().contains("`email` feature"), "{refused}");
    let settings = ActionSettings::default()
        .with_config(crate::ActionKey::SmtpUrl, "smtp://127.0.0.1:1")
        .unwrap();
    lifecycle.set_action_settings(settings);
    #[cfg(feature = "email")]
    {
        let id = lifecycle.add_trigger_spec(spec.clone()).unwrap();
        assert_eq!(lifecycle.export_spec().triggers, [spec]);
        let listed = status(&endpoint, &id);
        assert_eq!(listed.action, "email");
        assert_eq!(listed.state, TriggerState::Armed);
        lifecycle.remove_trigger(&id).unwrap();
        assert!(lifecycle.export_spec().triggers.is_empty());
        assert!(matches!(
            lifecycle.remove_trigger(&id),
            Err(crate::Error::TriggerNotFound { .. })
        ));
    }
}

#[test]
fn without_a_runtime_a_trigger_is_registered_but_not_running() {
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = endpoint(&metrics);
    let rule = TriggerRule::new("high", "m", Comparison::GreaterThan, 5.0, EVERY);
    let (trigger, _) = counting(rule);
    let id = endpoint.lifecycle().add_trigger(trigger).unwrap();
    assert_eq!(status(&endpoint, &id).state, TriggerState::NotRunning);
    let bad = TriggerRule::new("bad", "m", Comparison::GreaterThan, f64::NAN, EVERY);
    let (bad, _) = counting(bad);
    let error = endpoint.lifecycle().add_trigger(bad).unwrap_err();
    assert!(error.to_string().contains("`threshold`"), "{error}");
}

/// A request of `version` as the endpoint measures it.
fn served(version: &str, outcome: Outcome, latency: Duration) -> crate::RequestEvent {
    crate::RequestEvent {
        endpoint: Arc::from("e"),
        model_version: Arc::from(version),
        status: outcome.code(),
        outcome,
        latency,
        at: std::time::SystemTime::now(),
    }
}
