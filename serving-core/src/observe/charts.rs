//! [`ChartMetrics`]: per-minute aggregates of requests and custom metrics, for charts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::observe::metrics::{MetricSample, MetricSink, RequestEvent};
use crate::sync::Locked;

/// Keeps, per endpoint and model version, one aggregate per minute: request and error counts,
/// latency quantiles, and each custom metric's count, mean, min, max and last value.
///
/// Memory is bounded: at most [`ChartMetrics::with_retention`] minutes per series (60 by
/// default), at most [`ChartMetrics::with_max_series`] series (1,000 by default; samples of
/// further series are dropped and counted in [`ChartMetrics::dropped_series`]), and a latency
/// histogram of at most 256 buckets per minute (each bucket 9% wide, so quantiles are within
/// ±4.5%).
///
/// It keeps no raw samples, so it is no [`MetricHistory`](crate::MetricHistory): put an
/// [`InMemoryMetrics`](crate::InMemoryMetrics) beside it in a [`FanOut`](crate::FanOut) and give
/// endpoints that as their history, for canary rules and triggers.
#[derive(Debug)]
pub struct ChartMetrics {
    retention: i64,
    max_series: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    requests: HashMap<(Arc<str>, Arc<str>), Minutes<RequestMinute>>,
    metrics: HashMap<(String, String, String), Minutes<MetricMinute>>,
    dropped_series: u64,
}

impl ChartMetrics {
    /// Keeps 60 minutes of at most 1,000 series.
    pub fn new() -> Self {
        ChartMetrics {
            retention: 60,
            max_series: 1_000,
            state: Mutex::default(),
        }
    }

    /// Keeps `minutes` minutes per series (at least one).
    pub fn with_retention(mut self, minutes: u32) -> Self {
        self.retention = i64::from(minutes.max(1));
        self
    }

    /// Keeps at most `series` series (request series per endpoint and version, plus custom
    /// metric series per endpoint, version and key).
    pub fn with_max_series(mut self, series: usize) -> Self {
        self.max_series = series;
        self
    }

    /// How many minutes each series keeps.
    pub fn retention_minutes(&self) -> u32 {
        self.retention as u32
    }

    /// Samples dropped because they would have started a series beyond the limit.
    pub fn dropped_series(&self) -> u64 {
        self.state.locked().dropped_series
    }

    /// The charts of `endpoint` for the minutes starting at or after `since`, series sorted by
    /// model version and key, points oldest first. Minutes without requests are absent.
    pub fn charts(&self, endpoint: &str, since: SystemTime) -> Charts {
        let since = minute_of(since);
        let state = self.state.locked();
        let mut versions: Vec<VersionChart> = state
            .requests
            .iter()
            .filter(|((e, _), _)| **e == *endpoint)
            .map(|((_, version), minutes)| VersionChart {
                model_version: version.to_string(),
                points: minutes
                    .since(since)
                    .map(|(minute, m)| RequestPoint {
                        minute: minute * 60,
                        requests: m.requests,
                        errors: m.errors,
                        p50_ms: m.latency.quantile_ms(0.50),
                        p95_ms: m.latency.quantile_ms(0.95),
                        p99_ms: m.latency.quantile_ms(0.99),
                    })
                    .collect(),
            })
            .filter(|chart| !chart.points.is_empty())
            .collect();
        versions.sort_by(|a, b| a.model_version.cmp(&b.model_version));
        let mut metrics: Vec<MetricChart> = state
            .metrics
            .iter()
            .filter(|((e, _, _), _)| e == endpoint)
            .map(|((_, version, key), minutes)| MetricChart {
                key: key.clone(),
                model_version: version.clone(),
                points: minutes
                    .since(since)
                    .map(|(minute, m)| MetricPoint {
                        minute: minute * 60,
                        count: m.count,
                        mean: m.sum / m.count as f64,
                        min: m.min,
                        max: m.max,
                        last: m.last,
                    })
                    .collect(),
            })
            .filter(|chart| !chart.points.is_empty())
            .collect();
        metrics.sort_by(|a, b| (&a.key, &a.model_version).cmp(&(&b.key, &b.model_version)));
        Charts {
            endpoint: endpoint.to_owned(),
            now: minute_of(SystemTime::now()) * 60,
            retention_minutes: self.retention_minutes(),
            versions,
            metrics,
        }
    }
}

impl Default for ChartMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricSink for ChartMetrics {
    fn record_request(&self, event: &RequestEvent) {
        let mut state = self.state.locked();
        let series_count = state.requests.len() + state.metrics.len();
        let key = (
            Arc::clone(&event.endpoint),
            Arc::clone(&event.model_version),
        );
        let Some(minutes) = series(&mut state.requests, key, series_count, self.max_series) else {
            state.dropped_series += 1;
            return;
        };
        if let Some(minute) = minutes.at(minute_of(event.at), self.retention) {
            minute.requests += 1;
            if event.outcome.is_error() {
                minute.errors += 1;
            }
            minute.latency.add(event.latency.as_secs_f64() * 1e6);
        }
    }

    fn record_metric(&self, sample: &MetricSample) {
        let mut state = self.state.locked();
        let series_count = state.requests.len() + state.metrics.len();
        let key = (
            sample.endpoint.clone(),
            sample.model_version.clone(),
            sample.key.clone(),
        );
        let Some(minutes) = series(&mut state.metrics, key, series_count, self.max_series) else {
            state.dropped_series += 1;
            return;
        };
        if let Some(minute) = minutes.at(minute_of(sample.at), self.retention) {
            if minute.count == 0 {
                minute.min = sample.value;
                minute.max = sample.value;
            }
            minute.count += 1;
            minute.sum += sample.value;
            minute.min = minute.min.min(sample.value);
            minute.max = minute.max.max(sample.value);
            minute.last = sample.value;
        }
    }
}

/// The series under `key`, created unless that would pass `max_series`.
fn series<K: std::hash::Hash + Eq, T: Default>(
    map: &mut HashMap<K, Minutes<T>>,
    key: K,
    count: usize,
    max_series: usize,
) -> Option<&mut Minutes<T>> {
    if !map.contains_key(&key) && count >= max_series {
        return None;
    }
    Some(map.entry(key).or_default())
}

/// One endpoint's charts, as served by `GET /api/v1/endpoints/{name}/charts`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charts {
    /// The endpoint's name.
    pub endpoint: String,
    /// The current minute, in seconds since the Unix epoch.
    pub now: i64,
    /// How many minutes each series keeps.
    pub retention_minutes: u32,
    /// Requests and latency, one series per model version.
    pub versions: Vec<VersionChart>,
    /// Custom metrics, one series per key and model version.
    pub metrics: Vec<MetricChart>,
}

/// Requests and latency of one model version, per minute.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionChart {
    /// The model version.
    pub model_version: String,
    /// One point per minute that saw requests, oldest first.
    pub points: Vec<RequestPoint>,
}

/// One minute of requests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestPoint {
    /// The minute's start, in seconds since the Unix epoch.
    pub minute: i64,
    /// Requests that arrived in it.
    pub requests: u64,
    /// Of which failed ([`Outcome::is_error`](crate::Outcome::is_error)).
    pub errors: u64,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency in milliseconds.
    pub p95_ms: f64,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: f64,
}

/// A custom metric of one model version, per minute.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricChart {
    /// The metric's name.
    pub key: String,
    /// The model version whose predictions logged it.
    pub model_version: String,
    /// One point per minute that saw samples, oldest first.
    pub points: Vec<MetricPoint>,
}

/// One minute of a custom metric.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The minute's start, in seconds since the Unix epoch.
    pub minute: i64,
    /// Samples logged in it.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// Their minimum.
    pub min: f64,
    /// Their maximum.
    pub max: f64,
    /// The last one logged.
    pub last: f64,
}

#[derive(Debug, Default)]
struct RequestMinute {
    requests: u64,
    errors: u64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct MetricMinute {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

/// Per-minute entries, oldest first, at most `retention` minutes behind the newest.
#[derive(Debug)]
struct Minutes<T> {
    entries: VecDeque<(i64, T)>,
}

impl<T> Default for Minutes<T> {
    fn default() -> Self {
        Minutes {
            entries: VecDeque::new(),
        }
    }
}

impl<T: Default> Minutes<T> {
    /// The entry of `minute`, created in order; `None` when it is older than the retention.
    fn at(&mut self, minute: i64, retention: i64) -> Option<&mut T> {
        let newest = self
            .entries
            .back()
            .map_or(minute, |(m, _)| (*m).max(minute));
        let cutoff = newest - retention + 1;
        while self.entries.front().is_some_and(|(m, _)| *m < cutoff) {
            self.entries.pop_front();
        }
        if minute < cutoff {
            return None;
        }
        // Late events (a long request) land a few entries from the back, at most.
        let position = self
            .entries
            .iter()
            .rposition(|(m, _)| *m <= minute)
            .map_or(0, |p| p + 1);
        if position == 0 || self.entries[position - 1].0 != minute {
            self.entries.insert(position, (minute, T::default()));
            return Some(&mut self.entries[position].1);
        }
        Some(&mut self.entries[position - 1].1)
    }

    fn since(&self, minute: i64) -> impl Iterator<Item = (i64, &T)> {
        self.entries
            .iter()
            .filter(move |(m, _)| *m >= minute)
            .map(|(m, t)| (*m, t))
    }
}

/// A sparse log-scale histogram of microseconds: bucket `i` holds values in
/// `[2^(i/8), 2^((i+1)/8))`, so at most 256 buckets cover 1 µs to over an hour.
#[derive(Debug, Default)]
struct Histogram {
    buckets: BTreeMap<u16, u64>,
    count: u64,
}

impl Histogram {
    const PER_OCTAVE: f64 = 8.0;

    fn add(&mut self, micros: f64) {
        let index = if micros <= 1.0 {
            0
        } else {
            ((micros.log2() * Self::PER_OCTAVE) as u16).min(255)
        };
        *self.buckets.entry(index).or_default() += 1;
        self.count += 1;
    }

    /// The `q` quantile in milliseconds: the geometric middle of the bucket holding it.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, count) in &self.buckets {
            seen += count;
            if seen >= rank {
                let middle = (f64::from(*index) + 0.5) / Self::PER_OCTAVE;
                return 2f64.powf(middle) / 1000.0;
            }
        }
        0.0
    }
}

fn minute_of(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 60) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(version: &str, status: u16, ms: u64, at: SystemTime) -> RequestEvent {
        let outcome = if status == 200 {
            crate::Outcome::Ok
        } else {
            crate::Outcome::ModelFailure
        };
        RequestEvent {
            endpoint: "iris".into(),
            model_version: version.into(),
            status,
            outcome,
            latency: Duration::from_millis(ms),
            at,
        }
    }

    fn minute(n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(29_627_280 * 60 + n * 60 + 7)
    }

    #[test]
    fn aggregates_per_minute_and_version() {
        let charts = ChartMetrics::new();
        for ms in 1..=100 {
            charts.record_request(&request("1", 200, ms, minute(0)));
        }
        charts.record_request(&request("1", 500, 5, minute(1)));
        charts.record_request(&request("2", 200, 5, minute(1)));
        // A late event from an earlier minute lands in its own minute.
        charts.record_request(&request("1", 200, 5, minute(0)));
        for value in [0.5, 0.7, 0.6] {
            charts.record_metric(&MetricSample {
                endpoint: "iris".into(),
                model_version: "1".into(),
                key: "confidence".into(),
                value,
                at: minute(1),
            });
        }
        let got = charts.charts("iris", minute(0));
        assert_eq!(got.versions.len(), 2);
        let v1 = &got.versions[0].points;
        assert_eq!(v1.len(), 2);
        assert_eq!((v1[0].requests, v1[0].errors), (101, 0));
        assert_eq!((v1[1].requests, v1[1].errors), (1, 1));
        assert_eq!(v1[0].minute % 60, 0);
        for (quantile, expected) in [
            (v1[0].p50_ms, 50.0),
            (v1[0].p95_ms, 95.0),
            (v1[0].p99_ms, 99.0),
        ] {
            assert!(
                (quantile / expected - 1.0).abs() < 0.05,
                "{quantile} vs {expected}"
            );
        }
        let metric = &got.metrics[0];
        assert_eq!(
            (metric.key.as_str(), metric.points.len()),
            ("confidence", 1)
        );
        let point = &metric.points[0];
        assert_eq!(
            (point.count, point.min, point.max, point.last),
            (3, 0.5, 0.7, 0.6)
        );
        assert!((point.mean - 0.6).abs() < 1e-9);
        assert!(charts.charts("other", minute(0)).versions.is_empty());
        assert_eq!(charts.charts("iris", minute(1)).versions[0].points.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let charts = ChartMetrics::new().with_retention(3).with_max_series(2);
        for n in 0..10 {
            charts.record_request(&request("1", 200, 1, minute(n)));
        }
        charts.record_request(&request("1", 200, 1, minute(2)));
        let points = &charts.charts("iris", minute(0)).versions[0].points;
        let minutes: Vec<i64> = points
            .iter()
            .map(|p| (p.minute - points[0].minute) / 60)
            .collect();
        assert_eq!(minutes, [0, 1, 2], "only the last three minutes");
        charts.record_request(&request("2", 200, 1, minute(9)));
        charts.record_request(&request("3", 200, 1, minute(9)));
        assert_eq!(charts.dropped_series(), 1);
        assert_eq!(charts.charts("iris", minute(0)).versions.len(), 2);
    }

    #[test]
    fn conforms() {
        crate::conformance::metric_sink(&ChartMetrics::new());
    }
}
