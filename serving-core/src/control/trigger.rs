//! The [`Trigger`] trait: watch a metric, fire an action.

use std::fmt::{self, Debug};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::observe::metrics::MetricSample;
use crate::sync::Locked;

/// When a trigger fires: a metric compared with a value, polled every `every`, after at least
/// `min_events` samples met the condition (the original product's "Continual Learning" alert).
///
/// `metric` is a key logged with [`log_metric`](crate::log_metric) (`accuracy`, or
/// `custom:accuracy`), or one of the built-in measurements of the endpoint's requests (see
/// [`TriggerMetric`]). Each poll reads what happened since the previous one:
/// - **a logged metric**: the condition is met when at least `min_events` of the interval's
///   samples meet the comparison; the alert's `events` is how many did and its `last_value`
///   the last of them.
/// - **a built-in measurement**: each poll computes one value from the interval's requests
///   (the share that failed, the 95th-percentile or mean latency, requests per minute). For
///   `error_rate` and the latencies, `min_events` is the fewest requests the interval must
///   hold for its value to count (one request's error rate says little); for
///   `requests_per_minute` the value is itself the count and `min_events` is not applied (so
///   "fewer than 1 request per minute" fires on an idle endpoint). The alert's `events` is
///   the interval's request count.
///
/// Re-arming: a trigger that fired does not fire again while its condition keeps holding. With
/// no `cooldown_secs` it re-arms when a poll finds the condition cleared; with one, it fires
/// again at the first poll that meets the condition at least `cooldown_secs` after it last
/// fired, cleared or not. A firing whose action failed leaves it armed, so the next poll that
/// meets the condition tries again.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// The trigger's name.
    pub title: String,
    /// How important an alert is.
    #[serde(default)]
    pub severity: Severity,
    /// The metric key logged with `log_metric` (the original "tag"), or a built-in
    /// measurement ([`TriggerMetric`]).
    pub metric: String,
    /// How the metric is compared with `threshold`.
    pub comparison: Comparison,
    /// The value compared against.
    pub threshold: f64,
    /// How often the condition is polled, in seconds.
    pub every_secs: u64,
    /// Samples that must meet the condition within one poll before the trigger fires.
    #[serde(default = "one")]
    pub min_events: u32,
    /// Only this model version's samples and requests count; every version's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Re-arms this long after firing instead of when the condition clears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<u64>,
}

fn one() -> u32 {
    1
}

/// The longest polling interval and cooldown: a year, in seconds.
const MAX_SECS: u64 = 365 * 24 * 3600;

impl TriggerRule {
    /// A rule with severity `info`, one event, every version, re-armed when it clears.
    pub fn new(
        title: impl Into<String>,
        metric: impl Into<String>,
        comparison: Comparison,
        threshold: f64,
        every_secs: u64,
    ) -> Self {
        TriggerRule {
            title: title.into(),
            severity: Severity::default(),
            metric: metric.into(),
            comparison,
            threshold,
            every_secs,
            min_events: 1,
            model_version: None,
            cooldown_secs: None,
        }
    }

    /// With this severity.
    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Fires only after `min_events` samples (see the type's docs for built-in measurements).
    pub fn with_min_events(mut self, min_events: u32) -> Self {
        self.min_events = min_events;
        self
    }

    /// Watches only `version`.
    pub fn with_model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = Some(version.into());
        self
    }

    /// Re-arms `secs` after firing rather than when the condition clears.
    pub fn with_cooldown_secs(mut self, secs: u64) -> Self {
        self.cooldown_secs = Some(secs);
        self
    }

    /// The polling interval.
    pub fn every(&self) -> Duration {
        Duration::from_secs(self.every_secs)
    }

    /// What `metric` names.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the field `metric` when it is empty or of an unknown kind.
    pub fn measurement(&self) -> Result<TriggerMetric> {
        self.metric.parse()
    }

    /// Checks every field, naming the first one that is wrong: `title` empty, `metric` of an
    /// unknown kind, `threshold` not finite, `every_secs` or `min_events` zero, `cooldown_secs`
    /// zero, `model_version` empty.
    pub fn validate(&self) -> Result<()> {
        let wrong = |field: &str, why: String| {
            Err(Error::InvalidSpec {
                reason: format!("trigger `{}`: `{field}` {why}", self.title),
            })
        };
        if self.title.trim().is_empty() {
            return Err(Error::InvalidSpec {
                reason: "trigger: `title` must not be empty".to_owned(),
            });
        }
        self.measurement()?;
        if !self.threshold.is_finite() {
            return wrong("threshold", "must be a finite number".to_owned());
        }
        if self.every_secs == 0 || self.every_secs > MAX_SECS {
            return wrong(
                "every_secs",
                format!("must be from 1 to {MAX_SECS} (a year)"),
            );
        }
        if self.min_events == 0 {
            return wrong("min_events", "must be at least 1".to_owned());
        }
        if self
            .cooldown_secs
            .is_some_and(|secs| secs == 0 || secs > MAX_SECS)
        {
            return wrong(
                "cooldown_secs",
                format!("must be from 1 to {MAX_SECS} (a year) when set"),
            );
        }
        if self.model_version.as_deref().is_some_and(str::is_empty) {
            return wrong("model_version", "must not be empty when set".to_owned());
        }
        Ok(())
    }

    /// Whether one value meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::GreaterThan => value > self.threshold,
            Comparison::LessThan => value < self.threshold,
        }
    }

    /// The alert for one poll over `samples` of this rule's (logged) metric, if enough of
    /// them meet the condition. Samples of another key, or of another version than the
    /// rule's, do not count.
    pub fn evaluate(
        &self,
        endpoint: &str,
        samples: &[MetricSample],
        at: SystemTime,
    ) -> Option<Alert> {
        let key = match self.measurement() {
            Ok(TriggerMetric::Custom(key)) => key,
            _ => self.metric.clone(),
        };
        let matching: Vec<f64> = samples
            .iter()
            .filter(|s| s.key == key && self.holds(s.value))
            .filter(|s| {
                self.model_version
                    .as_deref()
                    .is_none_or(|v| v == s.model_version)
            })
            .map(|s| s.value)
            .collect();
        (matching.len() as u64 >= u64::from(self.min_events.max(1))).then(|| Alert {
            title: self.title.clone(),
            severity: self.severity,
            endpoint: endpoint.to_owned(),
            metric: self.metric.clone(),
            events: matching.len() as u32,
            last_value: *matching.last().expect("at least one matching sample"),
            at,
        })
    }
}

/// What a [`TriggerRule`] watches: a metric logged with [`log_metric`](crate::log_metric), or
/// one of the built-in measurements of the endpoint's requests.
///
/// Written as a string: `error_rate`, `p95_latency_ms`, `mean_latency_ms`,
/// `requests_per_minute`, `custom:<key>`, or a plain `<key>` (the original product's tag).
/// Any other `kind:` prefix is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerMetric {
    /// A logged metric's key.
    Custom(String),
    /// The share of the interval's requests that failed, for any reason
    /// ([`Outcome::is_error`](crate::Outcome::is_error), as the dashboard's charts count).
    ErrorRate,
    /// The 95th-percentile latency of the interval's requests, in milliseconds.
    P95LatencyMs,
    /// The mean latency of the interval's requests, in milliseconds.
    MeanLatencyMs,
    /// The interval's requests per minute.
    RequestsPerMinute,
}

impl TriggerMetric {
    /// The built-in measurements' names.
    pub const BUILT_IN: [&'static str; 4] = [
        "error_rate",
        "p95_latency_ms",
        "mean_latency_ms",
        "requests_per_minute",
    ];
}

impl std::str::FromStr for TriggerMetric {
    type Err = Error;

    fn from_str(metric: &str) -> Result<Self> {
        let unknown = |why: String| Error::InvalidSpec {
            reason: format!("trigger: `metric` {why}"),
        };
        Ok(match metric {
            "" => return Err(unknown("must not be empty".to_owned())),
            "error_rate" => TriggerMetric::ErrorRate,
            "p95_latency_ms" => TriggerMetric::P95LatencyMs,
            "mean_latency_ms" => TriggerMetric::MeanLatencyMs,
            "requests_per_minute" => TriggerMetric::RequestsPerMinute,
            _ => match metric.split_once(':') {
                Some(("custom", key)) if !key.is_empty() => TriggerMetric::Custom(key.to_owned()),
                Some((kind, _)) => {
                    return Err(unknown(format!(
                        "`{metric}` is of an unknown kind `{kind}`: use {}, `custom:<key>` or a logged metric's key",
                        TriggerMetric::BUILT_IN.join(", ")
                    )));
                }
                None => TriggerMetric::Custom(metric.to_owned()),
            },
        })
    }
}

/// Greater than or less than.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `value > threshold`.
    GreaterThan,
    /// `value < threshold`.
    LessThan,
}

/// Info, warning or critical.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    #[default]
    Info,
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// Its name in snake case, as it serializes.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a trigger's action is told when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule's title.
    pub title: String,
    /// The rule's severity.
    pub severity: Severity,
    /// The endpoint whose metric met the condition.
    pub endpoint: String,
    /// The metric.
    pub metric: String,
    /// How many samples met the condition in this poll.
    pub events: u32,
    /// The last value that met it.
    pub last_value: f64,
    /// When the poll ran.
    pub at: SystemTime,
}

impl Alert {
    /// The alert as JSON, what a webhook receives: `title`, `severity`, `endpoint`, `metric`,
    /// `events`, `value` (the last value that met the condition) and `at` (RFC 3339, UTC).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "title": self.title,
            "severity": self.severity,
            "endpoint": self.endpoint,
            "metric": self.metric,
            "events": self.events,
            "value": self.last_value,
            "at": rfc3339(self.at),
        })
    }
}

/// `at` in RFC 3339, UTC, to the millisecond.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A rule and the action it fires: an email, a webhook, or a Rust callback such as retraining.
///
/// # Contract
/// - `rule` is fixed for the trigger's life.
/// - `fire` is called once per firing: a poll whose samples meet the rule while the trigger is
///   armed (see [`TriggerRule`] for re-arming). It runs the action once (retries within it are
///   its own) and reports its failure as an error: the runner logs and counts it, and fires
///   again at the next poll that meets the rule. It is never called concurrently for the same
///   trigger, and it may panic without stopping the runner (that counts as a failure).
/// - `action` names the action for listings; it does not change.
#[async_trait]
pub trait Trigger: Debug + Send + Sync + 'static {
    /// When to fire.
    fn rule(&self) -> &TriggerRule;

    /// Runs the action for `alert`.
    async fn fire(&self, alert: &Alert) -> Result<()>;

    /// What the action is, for listings: `webhook`, `email`, `callback`; `custom` by default.
    fn action(&self) -> &str {
        "custom"
    }
}

/// A type-erased trigger.
pub type DynTrigger = dyn Trigger;

/// Forwards to the pointee, every method included.
macro_rules! forward_trigger {
    ($pointer:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: Trigger + ?Sized> Trigger for $pointer<T> {
            fn rule(&self) -> &TriggerRule {
                (**self).rule()
            }

            async fn fire(&self, alert: &Alert) -> Result<()> {
                (**self).fire(alert).await
            }

            fn action(&self) -> &str {
                (**self).action()
            }
        }
    };
}

forward_trigger!(Arc);
forward_trigger!(Box);

/// The action of a [`CallbackTrigger`].
type Action = Box<dyn Fn(Alert) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A trigger whose action is a Rust closure, plain or async (retrain, roll out a canary through
/// [`Lifecycle`](crate::Lifecycle)); it also keeps every alert it fired, in memory. Add it to
/// an endpoint with [`Lifecycle::add_trigger`](crate::Lifecycle::add_trigger).
///
/// ```
/// use serving_core::{CallbackTrigger, Comparison, TriggerRule};
///
/// let rule = TriggerRule::new("accuracy drop", "accuracy", Comparison::LessThan, 0.8, 60);
/// let retrain = CallbackTrigger::new_async(rule, |alert| async move {
///     println!("retraining after {} low values", alert.events);
///     Ok(())
/// });
/// # let _ = retrain;
/// ```
pub struct CallbackTrigger {
    rule: TriggerRule,
    action: Action,
    fired: Mutex<Vec<Alert>>,
}

impl CallbackTrigger {
    /// Fires `action` when `rule` holds.
    pub fn new(
        rule: TriggerRule,
        action: impl Fn(&Alert) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        CallbackTrigger {
            rule,
            action: Box::new(move |alert| {
                let done = action(&alert);
                Box::pin(std::future::ready(done))
            }),
            fired: Mutex::default(),
        }
    }

    /// Fires the async `action` when `rule` holds; the poll waits for it to finish.
    pub fn new_async<F>(
        rule: TriggerRule,
        action: impl Fn(Alert) -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        CallbackTrigger {
            rule,
            action: Box::new(move |alert| Box::pin(action(alert))),
            fired: Mutex::default(),
        }
    }

    /// Every alert fired so far, oldest first.
    pub fn fired(&self) -> Vec<Alert> {
        self.fired.locked().clone()
    }
}

impl Debug for CallbackTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackTrigger")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Trigger for CallbackTrigger {
    fn rule(&self) -> &TriggerRule {
        &self.rule
    }

    async fn fire(&self, alert: &Alert) -> Result<()> {
        self.fired.locked().push(alert.clone());
        (self.action)(alert.clone()).await
    }

    fn action(&self) -> &str {
        "callback"
    }
}
