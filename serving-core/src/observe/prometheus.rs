//! [`PrometheusMetrics`]: a [`MetricSink`] rendered as Prometheus text (what `GET /metrics`
//! serves).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::observe::charts::ChartMetrics;
use crate::observe::metrics::{MetricSample, MetricSink, RequestEvent};
use crate::observe::prediction_log::PredictionLog;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Counts requests, latencies, requests in flight, errors and custom metrics in Prometheus
/// form; [`PrometheusMetrics::render`] is what `GET /metrics` serves.
///
/// | Metric | Type | Labels |
/// |---|---|---|
/// | `serving_requests_total` | counter | `endpoint`, `model_version`, `status` |
/// | `serving_request_errors_total` | counter | `endpoint`, `model_version`, `class` (`client`: [`Outcome::is_client_fault`](crate::Outcome::is_client_fault), 4xx; `server`: [`Outcome::counts_as_failure`](crate::Outcome::counts_as_failure), 5xx) |
/// | `serving_request_duration_seconds` | histogram (1 ms to ~65 s) | `endpoint`, `model_version` |
/// | `serving_requests_in_flight` | gauge | `endpoint` |
/// | `serving_custom_metric` | gauge: last value logged | `endpoint`, `model_version`, `key` |
/// | `serving_custom_metric_samples_total` | counter | `endpoint`, `model_version`, `key` |
/// | `serving_custom_metric_series_dropped_total` | counter: samples of series past the limit | |
/// | `serving_prediction_log_written_total`, `_dropped_total`, `_failed_total` | counter | |
/// | `serving_prediction_log_queue_length`, `_queue_capacity` | gauge | |
/// | `serving_chart_series_dropped_total` | counter | |
/// | `serving_trigger_alerts_total` | counter: alerts fired | `endpoint`, `trigger` (its title), `severity` |
///
/// Custom metric keys come from user code, so their series are capped
/// ([`PrometheusMetrics::with_max_custom_series`], 1,000 by default) to bound memory and the
/// scrape's size.
#[derive(Debug)]
pub struct PrometheusMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<VersionLabels, Histogram>,
    in_flight: Family<EndpointLabels, Gauge>,
    /// The gauges of `in_flight` by endpoint name (a gauge's clones share its value).
    in_flight_by_name: RwLock<HashMap<String, Gauge>>,
    custom: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    custom_samples: Family<MetricLabels, Counter>,
    custom_dropped: Counter,
    custom_series: AtomicUsize,
    max_custom_series: usize,
    /// Registries a transport added ([`PrometheusMetrics::add_registry`]).
    added: RwLock<Vec<Registry>>,
    alerts: Family<AlertLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlertLabels {
    endpoint: String,
    trigger: String,
    severity: &'static str,
}

// The per-request label sets hold the event's shared names: made on every request, they
// allocate nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Arc<str>,
    model_version: Arc<str>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    endpoint: Arc<str>,
    model_version: Arc<str>,
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    endpoint: Arc<str>,
    model_version: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MetricLabels {
    endpoint: String,
    model_version: String,
    key: String,
}

type HistogramFamily = Family<VersionLabels, Histogram>;

impl PrometheusMetrics {
    /// An empty exposition with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 17)));
        let in_flight = Family::<EndpointLabels, Gauge>::default();
        let custom = Family::<MetricLabels, Gauge<f64, AtomicU64>>::default();
        let custom_samples = Family::<MetricLabels, Counter>::default();
        let custom_dropped = Counter::default();
        registry.register(
            "serving_requests",
            "Requests served, by endpoint, model version and HTTP status",
            requests.clone(),
        );
        registry.register(
            "serving_request_errors",
            "Failed requests, by class: client (4xx) or server (5xx)",
            errors.clone(),
        );
        registry.register(
            "serving_request_duration_seconds",
            "Time from receipt to answer",
            duration.clone(),
        );
        registry.register(
            "serving_requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        registry.register(
            "serving_custom_metric",
            "Last value of each custom metric logged from user code",
            custom.clone(),
        );
        registry.register(
            "serving_custom_metric_samples",
            "Custom metric values logged from user code",
            custom_samples.clone(),
        );
        registry.register(
            "serving_custom_metric_series_dropped",
            "Custom metric samples dropped because their series would pass the limit",
            custom_dropped.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "serving_trigger_alerts",
            "Alerts fired by triggers, by endpoint, trigger title and severity",
            alerts.clone(),
        );
        PrometheusMetrics {
            alerts,
            registry,
            requests,
            errors,
            duration,
            in_flight,
            in_flight_by_name: RwLock::default(),
            custom,
            custom_samples,
            custom_dropped,
            custom_series: AtomicUsize::new(0),
            max_custom_series: 1_000,
            added: RwLock::default(),
        }
    }

    /// Keeps at most `series` custom-metric series (endpoint, version and key).
    pub fn with_max_custom_series(mut self, series: usize) -> Self {
        self.max_custom_series = series;
        self
    }

    /// Also exports the counters of `log`: written, dropped and failed records, queue length.
    pub fn with_prediction_log(mut self, log: PredictionLog) -> Self {
        self.registry
            .register_collector(Box::new(PredictionLogCollector(log)));
        self
    }

    /// Also exports how many samples `charts` dropped at its series limit.
    pub fn with_chart_metrics(mut self, charts: Arc<ChartMetrics>) -> Self {
        self.registry
            .register_collector(Box::new(ChartCollector(charts)));
        self
    }

    /// The in-flight gauge of `endpoint`, found by name without building a label set (twice
    /// per request otherwise, an allocation each).
    fn in_flight_gauge(&self, endpoint: &str) -> Gauge {
        let known = self
            .in_flight_by_name
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(gauge) = known.get(endpoint) {
            return gauge.clone();
        }
        drop(known);
        let gauge = self
            .in_flight
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .clone();
        self.in_flight_by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(endpoint.to_owned(), gauge.clone());
        gauge
    }

    /// Also exports the metrics of `registry`: a transport's own (a Kafka stream's consumer
    /// lag, transactions, dead letters), registered once the exposition is shared.
    pub fn add_registry(&self, registry: Registry) {
        self.added
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(registry);
    }

    /// The exposition in Prometheus text format 0.0.4 ([`METRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        for registry in self.added.read().unwrap_or_else(|p| p.into_inner()).iter() {
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
                .expect("writing to a String cannot fail");
        }
        text
    }
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricSink for PrometheusMetrics {
    fn record_alert(&self, alert: &crate::Alert) {
        self.alerts
            .get_or_create(&AlertLabels {
                endpoint: alert.endpoint.clone(),
                trigger: alert.title.clone(),
                severity: alert.severity.as_str(),
            })
            .inc();
    }

    fn request_started(&self, endpoint: &str) {
        self.in_flight_gauge(endpoint).inc();
    }

    fn request_finished(&self, endpoint: &str) {
        self.in_flight_gauge(endpoint).dec();
    }

    fn record_request(&self, event: &RequestEvent) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: event.endpoint.clone(),
                model_version: event.model_version.clone(),
                status: event.status,
            })
            .inc();
        self.duration
            .get_or_create(&VersionLabels {
                endpoint: event.endpoint.clone(),
                model_version: event.model_version.clone(),
            })
            .observe(event.latency.as_secs_f64());
        let class = if event.outcome.is_client_fault() {
            "client"
        } else if event.outcome.counts_as_failure() {
            "server"
        } else {
            return;
        };
        self.errors
            .get_or_create(&ErrorLabels {
                endpoint: event.endpoint.clone(),
                model_version: event.model_version.clone(),
                class,
            })
            .inc();
    }

    fn record_metric(&self, sample: &MetricSample) {
        let labels = MetricLabels {
            endpoint: sample.endpoint.clone(),
            model_version: sample.model_version.clone(),
            key: sample.key.clone(),
        };
        if let Some(gauge) = self.custom.get(&labels) {
            gauge.set(sample.value);
        } else {
            // Reserve a slot first, so that racing new series cannot pass the limit.
            let reserved = self
                .custom_series
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max_custom_series).then_some(n + 1)
                })
                .is_ok();
            if !reserved {
                self.custom_dropped.inc();
                return;
            }
            self.custom.get_or_create(&labels).set(sample.value);
        }
        self.custom_samples.get_or_create(&labels).inc();
    }

    fn recent_metric(&self, _: &str, _: &str, _: SystemTime) -> Option<Vec<MetricSample>> {
        None
    }
}

#[derive(Debug)]
struct PredictionLogCollector(PredictionLog);

impl Collector for PredictionLogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        for (name, help, value) in [
            (
                "serving_prediction_log_written",
                "Prediction records written to the store",
                stats.written,
            ),
            (
                "serving_prediction_log_dropped",
                "Prediction records dropped because the queue was full or the log closed",
                stats.dropped,
            ),
            (
                "serving_prediction_log_failed",
                "Prediction records whose segment could not be written",
                stats.failed,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "serving_prediction_log_queue_length",
                "Prediction records waiting to be written",
                stats.queued,
            ),
            (
                "serving_prediction_log_queue_capacity",
                "Prediction records the queue holds before it drops",
                stats.capacity,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ChartCollector(Arc<ChartMetrics>);

impl Collector for ChartCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.dropped_series());
        counter.encode(encoder.encode_descriptor(
            "serving_chart_series_dropped",
            "Chart samples dropped because their series would pass the limit",
            None,
            counter.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use std::time::Duration;

    #[test]
    fn renders_requests_errors_latency_and_custom_metrics() {
        let metrics = PrometheusMetrics::new().with_max_custom_series(1);
        let event = |outcome: Outcome| RequestEvent {
            endpoint: "iris".into(),
            model_version: "2".into(),
            status: outcome.code(),
            outcome,
            latency: Duration::from_millis(3),
            at: SystemTime::now(),
        };
        metrics.record_request(&event(Outcome::Ok));
        metrics.record_request(&event(Outcome::Ok));
        metrics.record_request(&event(Outcome::RejectedInput));
        metrics.record_request(&event(Outcome::Timeout));
        metrics.request_started("iris");
        let sample = |key: &str| MetricSample {
            endpoint: "iris".into(),
            model_version: "2".into(),
            key: key.into(),
            value: 0.25,
            at: SystemTime::now(),
        };
        metrics.record_metric(&sample("confidence"));
        metrics.record_metric(&sample("too-many"));
        let text = metrics.render();
        for line in [
            r#"serving_requests_total{endpoint="iris",model_version="2",status="200"} 2"#,
            r#"serving_requests_total{endpoint="iris",model_version="2",status="422"} 1"#,
            r#"serving_requests_total{endpoint="iris",model_version="2",status="504"} 1"#,
            r#"serving_request_errors_total{endpoint="iris",model_version="2",class="client"} 1"#,
            r#"serving_request_errors_total{endpoint="iris",model_version="2",class="server"} 1"#,
            r#"serving_request_duration_seconds_count{endpoint="iris",model_version="2"} 4"#,
            r#"serving_requests_in_flight{endpoint="iris"} 1"#,
            r#"serving_custom_metric{endpoint="iris",model_version="2",key="confidence"} 0.25"#,
            "serving_custom_metric_series_dropped_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        metrics.request_finished("iris");
        assert!(
            metrics
                .render()
                .contains("serving_requests_in_flight{endpoint=\"iris\"} 0\n")
        );
    }

    #[test]
    fn conforms() {
        crate::conformance::metric_sink(&PrometheusMetrics::new());
    }
}
