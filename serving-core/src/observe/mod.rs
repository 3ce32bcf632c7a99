//! The transport-neutral half of observability: the sinks every endpoint is wired to
//! ([`Observability`]), the Prometheus exposition ([`PrometheusMetrics`], feature
//! `prometheus`), the drain sequence on shutdown ([`Drain`]) and the signal that starts it
//! ([`shutdown_signal`]).
//!
//! They live in the core, not in `serving-http`, so that a Kafka worker or a batch runner
//! wires, exports and drains exactly as the web service does without depending on axum. The
//! HTTP routes that show them (`/metrics`, the dashboard, the charts and logs APIs) stay in
//! `serving-http`. Prometheus is behind the `prometheus` feature because it is the core's only
//! dependency that a program embedding an endpoint may not want; `serving-http` enables it.

pub(crate) mod charts;
mod drain;
pub(crate) mod metrics;
pub mod prediction_log;
#[cfg(feature = "prometheus")]
mod prometheus;
pub(crate) mod record;
pub(crate) mod record_sinks;
mod signal;

pub use drain::{Drain, Tracked};
#[cfg(feature = "prometheus")]
pub use prometheus::{METRICS_CONTENT_TYPE, PrometheusMetrics};
pub use signal::shutdown_signal;

use std::sync::Arc;

use crate::endpoint::ModelEndpointBuilder;
use crate::observe::charts::ChartMetrics;
use crate::observe::metrics::{DynMetricHistory, DynMetricSink, FanOut, InMemoryMetrics};
use crate::observe::prediction_log::PredictionLog;
use crate::observe::record::DynRecordSink;
use crate::observe::record_sinks::{RecordFanOut, TracingRecords};

/// The sinks that record, measure and chart endpoints, shared by every endpoint of a process.
///
/// Give each endpoint its sinks with [`Observability::instrument`] (or
/// [`Observability::metric_sink`] and [`Observability::record_sink`]); a transport then shows
/// them (the web service serves `/metrics`, `/dashboard` and the charts and logs APIs) and
/// closes the prediction log at the end of its [`Drain`], so that no recorded prediction is
/// lost.
///
/// ```
/// use serving_core::observe::Observability;
/// use serving_core::{predictor_fn, Endpoint, ModelEndpoint, PredictRequest, Result};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let observability = Observability::new().with_log_lines(true);
/// let model = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
/// let endpoint = observability
///     .instrument(ModelEndpoint::builder("adder", model))
///     .build()?;
/// endpoint.predict(PredictRequest::new(serde_json::json!([1.0, 2.0]))).await?;
/// assert_eq!(observability.history().requests().len(), 1);
/// observability.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Observability {
    #[cfg(feature = "prometheus")]
    prometheus: Arc<PrometheusMetrics>,
    charts: Arc<ChartMetrics>,
    history: Arc<InMemoryMetrics>,
    prediction_log: Option<PredictionLog>,
    log_lines: bool,
    close_on_shutdown: bool,
}

impl Observability {
    /// Prometheus metrics (with the `prometheus` feature), per-minute charts and recent
    /// history for triggers; no prediction log and no per-prediction log lines until added.
    pub fn new() -> Self {
        Observability {
            #[cfg(feature = "prometheus")]
            prometheus: Arc::new(PrometheusMetrics::new()),
            charts: Arc::new(ChartMetrics::new()),
            history: Arc::new(InMemoryMetrics::new()),
            prediction_log: None,
            log_lines: false,
            close_on_shutdown: true,
        }
    }

    /// Records every prediction in `log` (a transport may serve it, as the web service's logs
    /// APIs do), and exports its counters with the Prometheus metrics. Configure before
    /// [`Observability::instrument`]: this starts a fresh Prometheus exposition.
    pub fn with_prediction_log(mut self, log: PredictionLog) -> Self {
        self.prediction_log = Some(log);
        self.rebuild_prometheus();
        self
    }

    /// Keeps charts as `charts` is configured (retention, series limit). Configure before
    /// [`Observability::instrument`].
    pub fn with_charts(mut self, charts: ChartMetrics) -> Self {
        self.charts = Arc::new(charts);
        self.rebuild_prometheus();
        self
    }

    /// Also writes one structured log line per prediction ([`TracingRecords`]).
    pub fn with_log_lines(mut self, on: bool) -> Self {
        self.log_lines = on;
        self
    }

    /// Whether [`Observability::close`] (the end of a transport's drain) closes the prediction
    /// log (on by default; turn it off when the log is shared with something that outlives
    /// the transport).
    pub fn with_close_on_shutdown(mut self, on: bool) -> Self {
        self.close_on_shutdown = on;
        self
    }

    /// The sink for endpoints: recent history, charts and Prometheus. Canary rules and
    /// triggers read the history itself ([`Observability::history`]), which
    /// [`Observability::instrument`] gives endpoints as their
    /// [`metric_history`](ModelEndpointBuilder::metric_history).
    pub fn metric_sink(&self) -> Arc<DynMetricSink> {
        let sinks: Vec<Arc<DynMetricSink>> = vec![
            Arc::clone(&self.history) as Arc<DynMetricSink>,
            Arc::clone(&self.charts) as Arc<DynMetricSink>,
            #[cfg(feature = "prometheus")]
            {
                Arc::clone(&self.prometheus) as Arc<DynMetricSink>
            },
        ];
        Arc::new(FanOut::new(sinks))
    }

    /// The record sink for endpoints, when there is a prediction log or log lines are on.
    pub fn record_sink(&self) -> Option<Arc<DynRecordSink>> {
        let mut sinks: Vec<Arc<DynRecordSink>> = Vec::new();
        if self.log_lines {
            sinks.push(Arc::new(TracingRecords));
        }
        if let Some(log) = &self.prediction_log {
            sinks.push(Arc::new(log.clone()));
        }
        match sinks.len() {
            0 => None,
            1 => sinks.pop(),
            _ => Some(Arc::new(RecordFanOut::new(sinks))),
        }
    }

    /// Gives `builder` this observability's metric and record sinks, and its history as the
    /// endpoint's metric history.
    pub fn instrument(&self, builder: ModelEndpointBuilder) -> ModelEndpointBuilder {
        let builder = builder
            .metric_sink(self.metric_sink())
            .metric_history(Arc::clone(&self.history) as Arc<DynMetricHistory>);
        match self.record_sink() {
            Some(records) => builder.record_sink(records),
            None => builder,
        }
    }

    /// The Prometheus exposition.
    #[cfg(feature = "prometheus")]
    pub fn prometheus(&self) -> &Arc<PrometheusMetrics> {
        &self.prometheus
    }

    /// The per-minute charts.
    pub fn charts(&self) -> &Arc<ChartMetrics> {
        &self.charts
    }

    /// The recent history of requests and custom metrics.
    pub fn history(&self) -> &Arc<InMemoryMetrics> {
        &self.history
    }

    /// The prediction log, if any.
    pub fn prediction_log(&self) -> Option<&PredictionLog> {
        self.prediction_log.as_ref()
    }

    /// Closes the sinks that hold data (the prediction log writes what it holds), if
    /// configured to ([`Observability::with_close_on_shutdown`]): the last step of a
    /// [`Drain`], after the work in flight has finished.
    pub async fn close(&self) {
        let Some(log) = self
            .prediction_log
            .as_ref()
            .filter(|_| self.close_on_shutdown)
        else {
            return;
        };
        match log.close().await {
            Ok(()) => tracing::info!(stats = ?log.stats(), "prediction log closed"),
            Err(error) => tracing::error!(%error, "prediction log closed with losses"),
        }
    }

    /// Re-registers the collectors; metrics are only counted once endpoints are instrumented,
    /// so a fresh exposition loses nothing.
    fn rebuild_prometheus(&mut self) {
        #[cfg(feature = "prometheus")]
        {
            let mut prometheus =
                PrometheusMetrics::new().with_chart_metrics(Arc::clone(&self.charts));
            if let Some(log) = &self.prediction_log {
                prometheus = prometheus.with_prediction_log(log.clone());
            }
            self.prometheus = Arc::new(prometheus);
        }
    }
}

impl Default for Observability {
    fn default() -> Self {
        Self::new()
    }
}
