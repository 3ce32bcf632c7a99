//! The [`MetricSink`] trait: where request measurements and custom metrics go.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;

/// One served request, as measured by its endpoint.
///
/// Names are shared (`Arc<str>`): an event is made for every request, and cloning a name into a
/// sink's own key then costs no allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// The endpoint's name.
    pub endpoint: Arc<str>,
    /// The model version that answered (empty when none did, for example unauthorized).
    pub model_version: Arc<str>,
    /// The outcome's code ([`Outcome::code`]), numbered as HTTP numbers it for every
    /// endpoint kind.
    pub status: u16,
    /// How the request ended: what sinks classify it by.
    #[serde(default)]
    pub outcome: Outcome,
    /// Time from receipt to answer.
    pub latency: Duration,
    /// When the request arrived.
    pub at: SystemTime,
}

/// One value of a custom metric logged from user code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// The endpoint's name.
    pub endpoint: String,
    /// The model version whose prediction logged it.
    pub model_version: String,
    /// The metric's name (the original product's `cnvrg_metric_name`).
    pub key: String,
    /// Its value; always finite.
    pub value: f64,
    /// When it was logged.
    pub at: SystemTime,
}

/// Receives measurements as they happen.
///
/// # Contract
/// - `record_request` and `record_metric` are called on the request path: they must not block
///   or fail; a sink that exports elsewhere buffers and drops (and counts what it drops)
///   rather than slowing predictions.
/// - Every call is one event: a sink counts each exactly once.
/// - `recent_metric` returns the samples of `key` on `endpoint` logged at or after `since`, in
///   the order they were recorded, or `None` when the sink keeps no history. Triggers and
///   charts read through it.
/// - Every `request_started` is followed by exactly one `request_finished` for the same
///   endpoint, even when the caller gives up on the request; both default to doing nothing.
pub trait MetricSink: Debug + Send + Sync + 'static {
    /// A request to `endpoint` started (for an in-flight gauge).
    fn request_started(&self, endpoint: &str) {
        let _ = endpoint;
    }

    /// A request to `endpoint` that had started has finished, however it ended.
    fn request_finished(&self, endpoint: &str) {
        let _ = endpoint;
    }

    /// Records one served request.
    fn record_request(&self, event: &RequestEvent);

    /// Records one custom metric value.
    fn record_metric(&self, sample: &MetricSample);

    /// The recent samples of a custom metric, when this sink keeps history.
    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>>;
}

/// A type-erased metric sink.
pub type DynMetricSink = dyn MetricSink;

/// Keeps the most recent requests and metric samples in memory, for charts and triggers.
///
/// Bounded: each series keeps at most `capacity` entries and drops the oldest.
#[derive(Debug)]
pub struct InMemoryMetrics {
    capacity: usize,
    /// Recorded requests; names are the events' shared `Arc<str>`s, so recording copies no
    /// text.
    requests: Mutex<VecDeque<StoredRequest>>,
    series: Mutex<HashMap<(String, String), VecDeque<MetricSample>>>,
}

#[derive(Debug)]
struct StoredRequest {
    endpoint: Arc<str>,
    model_version: Arc<str>,
    status: u16,
    outcome: Outcome,
    latency: Duration,
    at: SystemTime,
}

impl InMemoryMetrics {
    /// Keeps up to 10,000 entries per series.
    pub fn new() -> Self {
        Self::with_capacity(10_000)
    }

    /// Keeps up to `capacity` entries per series (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        InMemoryMetrics {
            capacity: capacity.max(1),
            requests: Mutex::default(),
            series: Mutex::default(),
        }
    }

    /// The recorded requests still held, oldest first.
    pub fn requests(&self) -> Vec<RequestEvent> {
        lock(&self.requests)
            .iter()
            .map(|stored| RequestEvent {
                endpoint: Arc::clone(&stored.endpoint),
                model_version: Arc::clone(&stored.model_version),
                status: stored.status,
                outcome: stored.outcome,
                latency: stored.latency,
                at: stored.at,
            })
            .collect()
    }
}

impl Default for InMemoryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricSink for InMemoryMetrics {
    fn record_request(&self, event: &RequestEvent) {
        let mut requests = lock(&self.requests);
        let stored = StoredRequest {
            endpoint: Arc::clone(&event.endpoint),
            model_version: Arc::clone(&event.model_version),
            status: event.status,
            outcome: event.outcome,
            latency: event.latency,
            at: event.at,
        };
        if requests.len() == self.capacity {
            requests.pop_front();
        }
        requests.push_back(stored);
    }

    fn record_metric(&self, sample: &MetricSample) {
        let mut series = lock(&self.series);
        let entries = series
            .entry((sample.endpoint.clone(), sample.key.clone()))
            .or_default();
        push_bounded(entries, sample.clone(), self.capacity);
    }

    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>> {
        let series = lock(&self.series);
        let samples = series
            .get(&(endpoint.to_owned(), key.to_owned()))
            .map(|entries| entries.iter().filter(|s| s.at >= since).cloned().collect())
            .unwrap_or_default();
        Some(samples)
    }
}

/// Sends every event to each of several sinks; history comes from the first that keeps it.
#[derive(Debug, Clone, Default)]
pub struct FanOut {
    sinks: Vec<Arc<DynMetricSink>>,
}

impl FanOut {
    /// Fans out to `sinks`, in order.
    pub fn new(sinks: Vec<Arc<DynMetricSink>>) -> Self {
        FanOut { sinks }
    }
}

impl MetricSink for FanOut {
    fn request_started(&self, endpoint: &str) {
        self.sinks
            .iter()
            .for_each(|sink| sink.request_started(endpoint));
    }

    fn request_finished(&self, endpoint: &str) {
        self.sinks
            .iter()
            .for_each(|sink| sink.request_finished(endpoint));
    }

    fn record_request(&self, event: &RequestEvent) {
        self.sinks
            .iter()
            .for_each(|sink| sink.record_request(event));
    }

    fn record_metric(&self, sample: &MetricSample) {
        self.sinks
            .iter()
            .for_each(|sink| sink.record_metric(sample));
    }

    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>> {
        self.sinks
            .iter()
            .find_map(|sink| sink.recent_metric(endpoint, key, since))
    }
}

/// Reports a request as started until dropped, so that a request whose caller gave up (its
/// future dropped) is reported finished too.
pub(crate) struct InFlight<'a> {
    sink: &'a DynMetricSink,
    endpoint: &'a str,
}

impl<'a> InFlight<'a> {
    pub(crate) fn start(sink: &'a DynMetricSink, endpoint: &'a str) -> Self {
        sink.request_started(endpoint);
        InFlight { sink, endpoint }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sink.request_finished(self.endpoint);
    }
}

fn push_bounded<T>(entries: &mut VecDeque<T>, item: T, capacity: usize) {
    if entries.len() == capacity {
        entries.pop_front();
    }
    entries.push_back(item);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
