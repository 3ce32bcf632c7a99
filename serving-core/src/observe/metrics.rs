//! The [`MetricSink`] trait: where request measurements and custom metrics go.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::control::trigger::Alert;
use crate::outcome::Outcome;
use crate::sync::Locked;

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

/// Receives measurements as they happen: the write side of metrics. Reading samples back is
/// [`MetricHistory`]'s, a separate trait, so that a sink that keeps no history need not
/// pretend to.
///
/// # Contract
/// - `record_request` and `record_metric` are called on the request path: they must not block
///   or fail; a sink that exports elsewhere buffers and drops (and counts what it drops)
///   rather than slowing predictions.
/// - Every call is one event: a sink counts each exactly once.
/// - Every `request_started` is followed by exactly one `request_finished` for the same
///   endpoint, even when the caller gives up on the request; both default to doing nothing.
/// - `recent_metric` is deprecated: it is what readers asked before [`MetricHistory`], and an
///   endpoint given no history reader still reads through it. It returns the samples of `key`
///   on `endpoint` logged at or after `since`, in the order they were recorded, or `None`
///   (the default) when the sink keeps no history.
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

    /// Records several served requests at once, as `record_request` would record each, in
    /// order: an endpoint predicting a chunk of requests (a batch run's rows) hands over the
    /// chunk's events together, so a sink that locks per event can lock once.
    fn record_requests(&self, events: &[RequestEvent]) {
        events.iter().for_each(|event| self.record_request(event));
    }

    /// Records one custom metric value.
    fn record_metric(&self, sample: &MetricSample);

    /// Counts one alert a trigger of the endpoint fired; does nothing by default.
    fn record_alert(&self, alert: &Alert) {
        let _ = alert;
    }

    /// The recent samples of a custom metric, when this sink keeps history.
    #[deprecated(
        since = "0.1.0",
        note = "read history through a `MetricHistory` (`InMemoryMetrics` is one); \
                give endpoints theirs with `ModelEndpointBuilder::metric_history`"
    )]
    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>> {
        let _ = (endpoint, key, since);
        None
    }
}

/// A type-erased metric sink.
pub type DynMetricSink = dyn MetricSink;

/// Reads back the custom metric samples that a [`MetricSink`] kept: the read side of metrics,
/// for whatever judges them (canary rules, triggers).
///
/// An endpoint reads its history through the one reader it was given
/// ([`ModelEndpointBuilder::metric_history`](crate::ModelEndpointBuilder::metric_history)),
/// never by asking the sinks of a [`FanOut`] in turn: a sink there that keeps no history must
/// not hide the events that another kept.
///
/// # Contract
/// - `samples` returns every sample of `key` on `endpoint` still held that was logged at or
///   after `since`, each once, in the order recorded; empty when there is none.
/// - What a reader holds is bounded; it documents how many samples it keeps.
/// - It is called off the request path (evaluations, polls) but may run while requests record:
///   it must not hold up writers for longer than a copy of the series.
pub trait MetricHistory: Debug + Send + Sync + 'static {
    /// The samples of `key` on `endpoint` logged at or after `since`, oldest first.
    fn samples(&self, endpoint: &str, key: &str, since: SystemTime) -> Vec<MetricSample>;
}

/// A type-erased metric history.
pub type DynMetricHistory = dyn MetricHistory;

/// Forwards to the pointee, every method included.
macro_rules! forward_metrics {
    ($pointer:ident) => {
        #[deny(clippy::missing_trait_methods)]
        impl<S: MetricSink + ?Sized> MetricSink for $pointer<S> {
            fn request_started(&self, endpoint: &str) {
                (**self).request_started(endpoint)
            }

            fn request_finished(&self, endpoint: &str) {
                (**self).request_finished(endpoint)
            }

            fn record_request(&self, event: &RequestEvent) {
                (**self).record_request(event)
            }

            fn record_requests(&self, events: &[RequestEvent]) {
                (**self).record_requests(events)
            }

            fn record_metric(&self, sample: &MetricSample) {
                (**self).record_metric(sample)
            }

            fn record_alert(&self, alert: &Alert) {
                (**self).record_alert(alert)
            }

            #[allow(deprecated)]
            fn recent_metric(
                &self,
                endpoint: &str,
                key: &str,
                since: SystemTime,
            ) -> Option<Vec<MetricSample>> {
                (**self).recent_metric(endpoint, key, since)
            }
        }

        #[deny(clippy::missing_trait_methods)]
        impl<H: MetricHistory + ?Sized> MetricHistory for $pointer<H> {
            fn samples(&self, endpoint: &str, key: &str, since: SystemTime) -> Vec<MetricSample> {
                (**self).samples(endpoint, key, since)
            }
        }
    };
}

forward_metrics!(Arc);
forward_metrics!(Box);

/// The history of an endpoint given a metric sink but no history reader: read through the
/// sink's deprecated `recent_metric`, as before [`MetricHistory`] existed.
#[derive(Debug)]
pub(crate) struct SinkHistory(pub(crate) Arc<DynMetricSink>);

#[deny(clippy::missing_trait_methods)]
impl MetricHistory for SinkHistory {
    fn samples(&self, endpoint: &str, key: &str, since: SystemTime) -> Vec<MetricSample> {
        #[allow(deprecated)]
        self.0
            .recent_metric(endpoint, key, since)
            .unwrap_or_default()
    }
}

/// Keeps the most recent requests and metric samples in memory, for charts and triggers: a
/// [`MetricSink`] and the [`MetricHistory`] that reads back what it kept.
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
        self.requests
            .locked()
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
        self.record_requests(std::slice::from_ref(event));
    }

    fn record_requests(&self, events: &[RequestEvent]) {
        let mut requests = self.requests.locked();
        for event in events {
            if requests.len() == self.capacity {
                requests.pop_front();
            }
            requests.push_back(StoredRequest {
                endpoint: Arc::clone(&event.endpoint),
                model_version: Arc::clone(&event.model_version),
                status: event.status,
                outcome: event.outcome,
                latency: event.latency,
                at: event.at,
            });
        }
    }

    fn record_metric(&self, sample: &MetricSample) {
        let mut series = self.series.locked();
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
        Some(self.samples(endpoint, key, since))
    }
}

impl MetricHistory for InMemoryMetrics {
    fn samples(&self, endpoint: &str, key: &str, since: SystemTime) -> Vec<MetricSample> {
        let series = self.series.locked();
        series
            .get(&(endpoint.to_owned(), key.to_owned()))
            .map(|entries| entries.iter().filter(|s| s.at >= since).cloned().collect())
            .unwrap_or_default()
    }
}

/// Sends every event to each of several sinks, in order.
///
/// It reads no history itself (its deprecated `recent_metric` answers from the first sink with
/// samples): give endpoints a [`MetricHistory`] beside it.
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

#[deny(clippy::missing_trait_methods)]
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

    fn record_requests(&self, events: &[RequestEvent]) {
        self.sinks
            .iter()
            .for_each(|sink| sink.record_requests(events));
    }

    fn record_metric(&self, sample: &MetricSample) {
        self.sinks
            .iter()
            .for_each(|sink| sink.record_metric(sample));
    }

    fn record_alert(&self, alert: &Alert) {
        self.sinks.iter().for_each(|sink| sink.record_alert(alert));
    }

    #[allow(deprecated)]
    fn recent_metric(
        &self,
        endpoint: &str,
        key: &str,
        since: SystemTime,
    ) -> Option<Vec<MetricSample>> {
        // A sink that keeps no history may still answer "nothing": it must not hide what a
        // later one kept.
        let mut nothing = None;
        for sink in &self.sinks {
            match sink.recent_metric(endpoint, key, since) {
                Some(samples) if !samples.is_empty() => return Some(samples),
                Some(empty) => nothing = nothing.or(Some(empty)),
                None => {}
            }
        }
        nothing
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
