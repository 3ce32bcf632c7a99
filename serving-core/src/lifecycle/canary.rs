//! Automated canary: rules over the candidate's numbers that promote it when they hold for a
//! period, or roll it back as soon as one breaks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::trigger::Comparison;
use crate::error::{Error, Result};

/// When to promote or roll back a candidate without anyone watching.
///
/// Every `interval_ms` the candidate's numbers over the evaluation window are checked against
/// each rule. A rule with fewer than `min_events` events is pending. As soon as one rule
/// breaks, the candidate is rolled back; once every rule has held for `hold_ms` without a
/// break or a pending rule, it is promoted. Decisions are logged and kept in the lifecycle's
/// event history.
///
/// ```yaml
/// canary:
///   interval_ms: 5000
///   hold_ms: 600000
///   rules:
///     - {metric: error_rate, comparison: less_than, threshold: 0.01, min_events: 100}
///     - {metric: p95_latency_ms, comparison: less_than, threshold: 250, min_events: 100}
///     - {metric: "custom:accuracy", comparison: greater_than, threshold: 0.9, min_events: 20}
/// ```
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPolicy {
    /// The conditions a healthy candidate meets.
    #[serde(default)]
    pub rules: Vec<CanaryRule>,
    /// How often the rules are evaluated, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long every rule must hold before the candidate is promoted, in milliseconds.
    pub hold_ms: u64,
    /// Only events this recent count, in milliseconds; all since the canary started when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

fn default_interval_ms() -> u64 {
    10_000
}

impl CanaryPolicy {
    /// A policy that promotes after `hold` when `rules` hold, evaluated every ten seconds.
    pub fn new(rules: Vec<CanaryRule>, hold: Duration) -> Self {
        CanaryPolicy {
            rules,
            interval_ms: default_interval_ms(),
            hold_ms: duration_ms(hold),
            window_ms: None,
        }
    }

    /// Evaluates every `interval`.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval_ms = duration_ms(interval);
        self
    }

    /// Counts only events within `window`.
    pub fn window(mut self, window: Duration) -> Self {
        self.window_ms = Some(duration_ms(window));
        self
    }

    /// The evaluation interval.
    pub fn interval_duration(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The hold period.
    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }

    /// Checks the interval and thresholds.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &str, value: String, reason: &str| Error::InvalidSetting {
            key: format!("canary.{key}"),
            value,
            reason: reason.to_owned(),
        };
        if self.interval_ms == 0 {
            return Err(invalid("interval_ms", "0".into(), "must be above zero"));
        }
        for rule in &self.rules {
            if !rule.threshold.is_finite() {
                return Err(invalid(
                    "rules.threshold",
                    rule.threshold.to_string(),
                    "must be a finite number",
                ));
            }
            if let CanaryMetric::Custom(key) = &rule.metric {
                if key.is_empty() {
                    return Err(invalid("rules.metric", String::new(), "names no metric"));
                }
            }
        }
        Ok(())
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One condition a healthy candidate meets, such as "error rate less than 1 %".
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRule {
    /// What is measured.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, pattern = "^(error_rate|p95_latency_ms|mean_latency_ms|custom:.+)$")
    )]
    pub metric: CanaryMetric,
    /// How it compares with `threshold` when healthy.
    pub comparison: Comparison,
    /// The value compared against.
    pub threshold: f64,
    /// Events (requests, or samples of a custom metric) needed before the rule is judged.
    #[serde(default = "one")]
    pub min_events: u32,
}

fn one() -> u32 {
    1
}

impl CanaryRule {
    /// `metric comparison threshold`, judged after `min_events` events.
    pub fn new(
        metric: CanaryMetric,
        comparison: Comparison,
        threshold: f64,
        min_events: u32,
    ) -> Self {
        CanaryRule {
            metric,
            comparison,
            threshold,
            min_events,
        }
    }

    /// Judges one measured value over `events` events.
    pub fn judge(&self, value: Option<f64>, events: u64) -> Verdict {
        match value {
            Some(value) if events >= u64::from(self.min_events.max(1)) => {
                let holds = match self.comparison {
                    Comparison::GreaterThan => value > self.threshold,
                    Comparison::LessThan => value < self.threshold,
                };
                if holds {
                    Verdict::Holds
                } else {
                    Verdict::Breaks
                }
            }
            _ => Verdict::Pending,
        }
    }
}

/// What a canary rule measures on the candidate. Written `error_rate`, `p95_latency_ms`,
/// `mean_latency_ms`, or `custom:<key>` for a metric logged with `log_metric`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CanaryMetric {
    /// Share of requests that the model or server failed ([`crate::Outcome::counts_as_failure`]),
    /// 0 to 1.
    ErrorRate,
    /// 95th-percentile latency in milliseconds.
    P95LatencyMs,
    /// Mean latency in milliseconds.
    MeanLatencyMs,
    /// The mean of a custom metric the candidate's predictions logged with `log_metric`, read
    /// through the endpoint's [`MetricHistory`](crate::MetricHistory) (see
    /// [`ModelEndpointBuilder::metric_history`](crate::ModelEndpointBuilder::metric_history);
    /// the default [`InMemoryMetrics`](crate::InMemoryMetrics) is one). Without history the
    /// rule stays pending and the candidate is never promoted automatically.
    Custom(String),
}

impl std::fmt::Display for CanaryMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanaryMetric::ErrorRate => f.write_str("error_rate"),
            CanaryMetric::P95LatencyMs => f.write_str("p95_latency_ms"),
            CanaryMetric::MeanLatencyMs => f.write_str("mean_latency_ms"),
            CanaryMetric::Custom(key) => write!(f, "custom:{key}"),
        }
    }
}

impl From<CanaryMetric> for String {
    fn from(metric: CanaryMetric) -> Self {
        metric.to_string()
    }
}

impl TryFrom<String> for CanaryMetric {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Self, String> {
        match name.as_str() {
            "error_rate" => Ok(CanaryMetric::ErrorRate),
            "p95_latency_ms" => Ok(CanaryMetric::P95LatencyMs),
            "mean_latency_ms" => Ok(CanaryMetric::MeanLatencyMs),
            other => match other.strip_prefix("custom:") {
                Some(key) if !key.is_empty() => Ok(CanaryMetric::Custom(key.to_owned())),
                _ => Err(format!(
                    "unknown canary metric `{other}`; valid metrics are: error_rate, p95_latency_ms, mean_latency_ms, custom:<key>"
                )),
            },
        }
    }
}

/// How one rule fared in one evaluation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The condition is met.
    Holds,
    /// The condition is not met.
    Breaks,
    /// Too few events to judge.
    Pending,
}

/// One rule's result in one evaluation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleOutcome {
    /// The rule.
    pub rule: CanaryRule,
    /// The measured value, when there was anything to measure.
    pub value: Option<f64>,
    /// Events the value is based on.
    pub events: u64,
    /// The verdict.
    pub verdict: Verdict,
}

impl RuleOutcome {
    /// `error_rate 0.25 (less_than 0.1, 40 events)`.
    pub fn describe(&self) -> String {
        let comparison = match self.rule.comparison {
            Comparison::GreaterThan => "greater_than",
            Comparison::LessThan => "less_than",
        };
        let value = self
            .value
            .map_or_else(|| "none".to_owned(), |v| format!("{v:.4}"));
        format!(
            "{} {value} (wanted {comparison} {}, {} events)",
            self.rule.metric, self.rule.threshold, self.events
        )
    }
}

/// What an evaluation decided.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CanaryDecision {
    /// Some rule is pending: not enough events yet.
    Wait,
    /// Every rule holds; promotion once the hold period has passed.
    Hold {
        /// How long every rule has held so far, in milliseconds.
        held_ms: u64,
    },
    /// Every rule held for the hold period: the candidate was promoted.
    Promote,
    /// A rule broke: the candidate was rolled back.
    Rollback {
        /// The rule that broke, described.
        reason: String,
    },
}

/// The decision for one evaluation given its outcomes and how long every rule has held.
pub(crate) fn decide(
    outcomes: &[RuleOutcome],
    held: Option<Duration>,
    hold: Duration,
) -> CanaryDecision {
    if let Some(broken) = outcomes.iter().find(|o| o.verdict == Verdict::Breaks) {
        return CanaryDecision::Rollback {
            reason: broken.describe(),
        };
    }
    match held {
        _ if outcomes.iter().any(|o| o.verdict == Verdict::Pending) => CanaryDecision::Wait,
        Some(held) if held >= hold => CanaryDecision::Promote,
        held => CanaryDecision::Hold {
            held_ms: held.map_or(0, duration_ms),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(verdict: Verdict) -> RuleOutcome {
        RuleOutcome {
            rule: CanaryRule::new(CanaryMetric::ErrorRate, Comparison::LessThan, 0.1, 10),
            value: Some(0.0),
            events: 10,
            verdict,
        }
    }

    #[test]
    fn rules_judge_only_with_enough_events() {
        let rule = CanaryRule::new(CanaryMetric::P95LatencyMs, Comparison::LessThan, 100.0, 5);
        assert_eq!(rule.judge(Some(50.0), 4), Verdict::Pending);
        assert_eq!(rule.judge(None, 40), Verdict::Pending);
        assert_eq!(rule.judge(Some(50.0), 5), Verdict::Holds);
        assert_eq!(rule.judge(Some(100.0), 5), Verdict::Breaks);
        let accuracy = CanaryRule::new(
            CanaryMetric::Custom("accuracy".into()),
            Comparison::GreaterThan,
            0.9,
            1,
        );
        assert_eq!(accuracy.judge(Some(0.95), 1), Verdict::Holds);
    }

    #[test]
    fn a_break_rolls_back_at_once_and_a_hold_promotes_after_the_period() {
        let hold = Duration::from_secs(10);
        let broke = decide(
            &[outcome(Verdict::Holds), outcome(Verdict::Breaks)],
            None,
            hold,
        );
        assert!(
            matches!(broke, CanaryDecision::Rollback { .. }),
            "{broke:?}"
        );
        assert_eq!(
            decide(&[outcome(Verdict::Pending)], Some(hold * 2), hold),
            CanaryDecision::Wait
        );
        assert_eq!(
            decide(
                &[outcome(Verdict::Holds)],
                Some(Duration::from_secs(3)),
                hold
            ),
            CanaryDecision::Hold { held_ms: 3_000 }
        );
        assert_eq!(
            decide(&[outcome(Verdict::Holds)], Some(hold), hold),
            CanaryDecision::Promote
        );
        assert_eq!(decide(&[], Some(hold), hold), CanaryDecision::Promote);
    }

    #[test]
    fn policies_read_from_yaml() {
        let policy: CanaryPolicy = serde_norway::from_str(
            "hold_ms: 1000\nrules:\n  - {metric: error_rate, comparison: less_than, threshold: 0.01}\n  - {metric: \"custom:accuracy\", comparison: greater_than, threshold: 0.9, min_events: 20}\n",
        )
        .unwrap();
        assert_eq!(policy.interval_ms, 10_000);
        assert_eq!(policy.rules[0].min_events, 1);
        assert_eq!(
            policy.rules[1].metric,
            CanaryMetric::Custom("accuracy".into())
        );
        assert!(policy.validate().is_ok());
        let typo = serde_norway::from_str::<CanaryPolicy>(
            "hold_ms: 1\nrules: [{metric: error-rate, comparison: less_than, threshold: 1}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("valid metrics are: error_rate"), "{typo}");
        assert!(
            CanaryPolicy {
                interval_ms: 0,
                ..policy
            }
            .validate()
            .is_err()
        );
    }
}
