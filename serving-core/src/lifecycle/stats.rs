//! Per-version request statistics and shadow comparisons, kept by the lifecycle itself so
//! canary rules never depend on which [`MetricSink`](crate::MetricSink) an endpoint uses.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::outcome::Outcome;
use crate::sync::Locked;

/// Requests of one version over a window: counts, error rate and latency percentiles.
///
/// An error is a request the model or server failed ([`Outcome::counts_as_failure`]); a
/// request the caller got wrong says nothing about the model's health.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestStats {
    /// Requests in the window.
    pub requests: u64,
    /// Those that failed on the server side.
    pub errors: u64,
    /// `errors / requests`; zero without requests.
    pub error_rate: f64,
    /// Mean latency in milliseconds.
    pub mean_latency_ms: f64,
    /// Median latency in milliseconds.
    pub p50_latency_ms: f64,
    /// 95th-percentile latency in milliseconds.
    pub p95_latency_ms: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    latency: Duration,
    outcome: Outcome,
}

/// Bounded per-version rings of recent requests, plus lifetime totals.
#[derive(Debug)]
pub(crate) struct VersionStats {
    capacity: usize,
    /// Each version's series, in the order first seen: an endpoint has few versions, and a
    /// scan from the newest finds the one serving now sooner than a hash of its id would.
    series: Mutex<Vec<(String, Series)>>,
}

#[derive(Debug, Default)]
struct Series {
    recent: VecDeque<Sample>,
    total: u64,
    total_errors: u64,
}

impl Series {
    fn add(&mut self, sample: Sample, capacity: usize) {
        if self.recent.len() == capacity {
            self.recent.pop_front();
        }
        self.total += 1;
        self.total_errors += u64::from(sample.outcome.counts_as_failure());
        self.recent.push_back(sample);
    }
}

impl VersionStats {
    pub(crate) fn new(capacity: usize) -> Self {
        VersionStats {
            capacity: capacity.max(1),
            series: Mutex::default(),
        }
    }

    /// Counts one request of `version` that ended at `at`.
    #[cfg(test)]
    pub(crate) fn record(&self, version: &str, outcome: Outcome, latency: Duration, at: Instant) {
        self.record_all([(version, outcome, latency, at)]);
    }

    /// Counts requests, each of a version, that ended at the instant given, under one lock.
    pub(crate) fn record_all<'v>(
        &self,
        requests: impl IntoIterator<Item = (&'v str, Outcome, Duration, Instant)>,
    ) {
        let mut series = self.series.locked();
        // Consecutive requests of one version (the usual case) share one lookup.
        let mut current: Option<usize> = None;
        for (version, outcome, latency, at) in requests {
            let sample = Sample {
                at,
                latency,
                outcome,
            };
            let at = match current.filter(|&i| series[i].0 == version) {
                Some(i) => i,
                None => match Self::position(&series, version) {
                    Some(i) => i,
                    None => {
                        series.push((version.to_owned(), Series::default()));
                        series.len() - 1
                    }
                },
            };
            series[at].1.add(sample, self.capacity);
            current = Some(at);
        }
    }

    /// Where the series of `version` is, when it has one: scanned from the newest.
    fn position(series: &[(String, Series)], version: &str) -> Option<usize> {
        series.iter().rposition(|(v, _)| v == version)
    }

    /// The stats of `version` over requests recorded at or after `since` (all retained ones
    /// when `None`).
    pub(crate) fn window(&self, version: &str, since: Option<Instant>) -> RequestStats {
        let series = self.series.locked();
        let Some(at) = Self::position(&series, version) else {
            return RequestStats::default();
        };
        let samples: Vec<Sample> = series[at]
            .1
            .recent
            .iter()
            .filter(|s| since.is_none_or(|since| s.at >= since))
            .copied()
            .collect();
        drop(series);
        summarize(&samples)
    }

    /// The latency and outcome of each request of `version` recorded in `[from, to)`, oldest
    /// first: what a trigger's built-in measurements are computed from.
    pub(crate) fn between(
        &self,
        version: &str,
        from: Instant,
        to: Instant,
    ) -> Vec<(Duration, Outcome)> {
        let series = self.series.locked();
        Self::position(&series, version).map_or_else(Vec::new, |at| {
            series[at]
                .1
                .recent
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .map(|s| (s.latency, s.outcome))
                .collect()
        })
    }

    /// Drops the recent requests of `version`, keeping its totals: for versions unloaded from
    /// memory, so that a long history of updates does not grow without bound.
    pub(crate) fn forget_recent(&self, version: &str) {
        let mut series = self.series.locked();
        if let Some(at) = Self::position(&series, version) {
            series[at].1.recent = VecDeque::new();
        }
    }

    /// Lifetime request and error counts of `version`.
    pub(crate) fn totals(&self, version: &str) -> (u64, u64) {
        let series = self.series.locked();
        Self::position(&series, version).map_or((0, 0), |at| {
            let (_, entry) = &series[at];
            (entry.total, entry.total_errors)
        })
    }
}

fn summarize(samples: &[Sample]) -> RequestStats {
    if samples.is_empty() {
        return RequestStats::default();
    }
    let mut latencies: Vec<f64> = samples
        .iter()
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let requests = samples.len() as u64;
    let errors = samples
        .iter()
        .filter(|s| s.outcome.counts_as_failure())
        .count() as u64;
    RequestStats {
        requests,
        errors,
        error_rate: errors as f64 / requests as f64,
        mean_latency_ms: latencies.iter().sum::<f64>() / latencies.len() as f64,
        p50_latency_ms: percentile(&latencies, 0.50),
        p95_latency_ms: percentile(&latencies, 0.95),
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How a shadow version compares with the version that answered the same requests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowComparison {
    /// The shadow version.
    pub version: String,
    /// Mirrored requests whose outputs were compared (both answered).
    pub compared: u64,
    /// Of those, how many gave the same output (numbers equal to within 1e-9, relative).
    pub agreed: u64,
    /// `agreed / compared`, absent before the first comparison.
    pub agreement_rate: Option<f64>,
    /// Mirrored requests the shadow failed while the answering version succeeded.
    pub shadow_errors: u64,
    /// Requests that were due a mirror but skipped because the endpoint was at its
    /// concurrency limit (mirrors never take capacity from real traffic).
    pub skipped: u64,
    /// Mean latency of the shadow on compared requests, in milliseconds.
    pub shadow_mean_latency_ms: f64,
    /// Mean latency of the answering version on the same requests, in milliseconds.
    pub primary_mean_latency_ms: f64,
    /// 95th-percentile latency of the shadow on compared requests, in milliseconds.
    pub shadow_p95_latency_ms: f64,
    /// 95th-percentile latency of the answering version on the same requests.
    pub primary_p95_latency_ms: f64,
}

/// Running comparisons per shadow version.
#[derive(Debug, Default)]
pub(crate) struct ShadowTracker {
    versions: Mutex<HashMap<String, Tracked>>,
}

#[derive(Debug, Default)]
struct Tracked {
    compared: u64,
    agreed: u64,
    shadow_errors: u64,
    skipped: u64,
    /// Recent (shadow, primary) latency pairs in milliseconds, bounded.
    latencies: VecDeque<(f64, f64)>,
}

const SHADOW_LATENCY_PAIRS: usize = 10_000;

/// What one mirrored request produced, next to the answer the caller got.
pub(crate) struct Mirrored<'a> {
    pub(crate) shadow_output: Option<&'a Value>,
    pub(crate) primary_output: &'a Value,
    pub(crate) shadow_latency: Duration,
    pub(crate) primary_latency: Duration,
}

impl ShadowTracker {
    pub(crate) fn record(&self, version: &str, mirrored: &Mirrored<'_>) {
        let mut versions = self.versions.locked();
        let tracked = versions.entry(version.to_owned()).or_default();
        let Some(shadow_output) = mirrored.shadow_output else {
            tracked.shadow_errors += 1;
            return;
        };
        tracked.compared += 1;
        tracked.agreed += u64::from(outputs_agree(shadow_output, mirrored.primary_output));
        if tracked.latencies.len() == SHADOW_LATENCY_PAIRS {
            tracked.latencies.pop_front();
        }
        tracked.latencies.push_back((
            mirrored.shadow_latency.as_secs_f64() * 1000.0,
            mirrored.primary_latency.as_secs_f64() * 1000.0,
        ));
    }

    pub(crate) fn skipped(&self, version: &str) {
        self.versions
            .locked()
            .entry(version.to_owned())
            .or_default()
            .skipped += 1;
    }

    pub(crate) fn comparison(&self, version: &str) -> ShadowComparison {
        let versions = self.versions.locked();
        let Some(tracked) = versions.get(version) else {
            return ShadowComparison {
                version: version.to_owned(),
                ..ShadowComparison::default()
            };
        };
        let mut shadow: Vec<f64> = tracked.latencies.iter().map(|p| p.0).collect();
        let mut primary: Vec<f64> = tracked.latencies.iter().map(|p| p.1).collect();
        shadow.sort_by(f64::total_cmp);
        primary.sort_by(f64::total_cmp);
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        ShadowComparison {
            version: version.to_owned(),
            compared: tracked.compared,
            agreed: tracked.agreed,
            agreement_rate: (tracked.compared > 0)
                .then(|| tracked.agreed as f64 / tracked.compared as f64),
            shadow_errors: tracked.shadow_errors,
            skipped: tracked.skipped,
            shadow_mean_latency_ms: mean(&shadow),
            primary_mean_latency_ms: mean(&primary),
            shadow_p95_latency_ms: percentile(&shadow, 0.95),
            primary_p95_latency_ms: percentile(&primary, 0.95),
        }
    }
}

/// Whether two outputs are the same answer: equal JSON, with numbers compared to within a
/// relative 1e-9 so that float noise is not disagreement.
pub fn outputs_agree(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| outputs_agree(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| outputs_agree(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn window_counts_errors_and_percentiles() {
        let stats = VersionStats::new(100);
        for ms in 1..=100u64 {
            let outcome = if ms % 10 == 0 {
                Outcome::ModelFailure
            } else {
                Outcome::Ok
            };
            stats.record("2", outcome, Duration::from_millis(ms), Instant::now());
        }
        stats.record(
            "2",
            Outcome::RejectedInput,
            Duration::from_millis(1),
            Instant::now(),
        );
        let window = stats.window("2", None);
        assert_eq!(window.requests, 100, "the ring keeps the last 100");
        assert_eq!(window.errors, 10);
        assert!((window.error_rate - 0.1).abs() < 1e-12);
        // 1 ms (the 4xx) pushed out the first 1 ms sample: latencies are 1..=100.
        assert_eq!(window.p95_latency_ms, 95.0);
        assert_eq!(stats.totals("2"), (101, 10));
        assert_eq!(stats.window("3", None), RequestStats::default());
        let later = stats.window("2", Some(Instant::now() + Duration::from_secs(1)));
        assert_eq!(later.requests, 0);
    }

    #[test]
    fn agreement_tolerates_float_noise_only() {
        assert!(outputs_agree(
            &json!([1.0, {"a": 2}]),
            &json!([1.0, {"a": 2.0}])
        ));
        assert!(outputs_agree(&json!(0.1 + 0.2), &json!(0.3)));
        assert!(!outputs_agree(&json!(1.0), &json!(1.001)));
        assert!(!outputs_agree(&json!("a"), &json!("b")));
        assert!(!outputs_agree(&json!([1]), &json!([1, 2])));
    }

    #[test]
    fn shadow_comparison_counts_agreement_and_latency() {
        let tracker = ShadowTracker::default();
        for i in 0..4 {
            let primary = json!(i);
            let shadow = json!(if i % 2 == 0 { i } else { -1 });
            tracker.record(
                "3",
                &Mirrored {
                    shadow_output: Some(&shadow),
                    primary_output: &primary,
                    shadow_latency: Duration::from_millis(20),
                    primary_latency: Duration::from_millis(10),
                },
            );
        }
        tracker.record(
            "3",
            &Mirrored {
                shadow_output: None,
                primary_output: &json!(0),
                shadow_latency: Duration::ZERO,
                primary_latency: Duration::ZERO,
            },
        );
        tracker.skipped("3");
        let comparison = tracker.comparison("3");
        assert_eq!(comparison.compared, 4);
        assert_eq!(comparison.agreed, 2);
        assert_eq!(comparison.agreement_rate, Some(0.5));
        assert_eq!(comparison.shadow_errors, 1);
        assert_eq!(comparison.skipped, 1);
        assert!((comparison.shadow_mean_latency_ms - 20.0).abs() < 1e-9);
        assert!((comparison.primary_p95_latency_ms - 10.0).abs() < 1e-9);
    }
}
