//! [`Observability`]: every prediction recorded, measured and visible, and the routes that show
//! it: `GET /metrics`, `GET /dashboard`, and the JSON and CSV APIs behind the dashboard.
//!
//! | Route | Auth | What |
//! |---|---|---|
//! | `GET /metrics` | none (meant for a Prometheus scraper inside the cluster) | Prometheus text; see [`PrometheusMetrics`] |
//! | `GET /dashboard` | none: the page holds no data, it asks for the endpoint and its token | the dashboard (charts, logs, CSV export) |
//! | `GET /api/v1/endpoints/{name}/charts` | the endpoint's token in `Cnvrg-Api-Key` | per-minute charts as JSON ([`Charts`]) |
//! | `GET /api/v1/endpoints/{name}/logs` | the endpoint's token | recorded predictions as JSON |
//! | `GET /api/v1/endpoints/{name}/logs.csv` | the endpoint's token | the same as CSV ([`CSV_COLUMNS`](serving_core::prediction_log::CSV_COLUMNS)) |
//!
//! `charts` takes `minutes` (the window, 60 by default). `logs` and `logs.csv` take the
//! original SDK's `get_predictions` parameters: `start_time` and `end_time` (RFC 3339 or
//! seconds since the epoch, half-open `[start, end)`), `model`, `model_version`, `status`
//! (`ok`, `error` or a code), `offset`, `size` (100 by default; at most 1,000 for `logs` and
//! 1,000,000 for `logs.csv`) and `order` (`asc`, the default, or `desc`); `minutes=N` is a
//! shorthand for a `start_time` N minutes ago. An unknown parameter is a 400 that lists the
//! valid ones.
//!
//! `logs` answers
//! `{"endpoint", "total", "offset", "size", "predictions": [{request_id, endpoint, model,
//! model_version, status, start_time, event_time, elapsed_ms, input, output, error, metrics,
//! params}]}` where `start_time` is RFC 3339, `event_time` seconds since the epoch (the
//! original product's name), and `input`/`output` the JSON values as logged.
//!
//! Recorded predictions become visible once the prediction log has written them: within its
//! flush interval (one second by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use serving_core::prediction_log::{
    Order, PredictionLog, PredictionPage, PredictionQuery, format_time, parse_time, write_csv,
};
use serving_core::{
    ChartMetrics, Charts, DynMetricSink, DynRecordSink, Error, FanOut, InMemoryMetrics,
    ModelEndpointBuilder, PredictionRecord, RecordFanOut, TracingRecords,
};

use crate::auth::TOKEN_HEADER;
use crate::dashboard;
use crate::error::ApiError;
use crate::prometheus::{METRICS_CONTENT_TYPE, PrometheusMetrics};
use crate::service::{Route, ServiceState, WebService, WebServiceBuilder};

/// The sinks that record, measure and chart endpoints, shared by every endpoint of a service.
///
/// Give each endpoint its sinks with [`Observability::instrument`] (or
/// [`Observability::metric_sink`] and [`Observability::record_sink`]), and the service the
/// whole with [`WebServiceBuilder::observability`]: the service then serves `/metrics`,
/// `/dashboard` and the charts and logs APIs, and closes the prediction log after its graceful
/// shutdown so that no recorded prediction is lost.
///
/// ```no_run
/// use serving_core::prediction_log::PredictionLog;
/// use serving_core::{predictor_fn, ModelEndpoint, Result};
/// use serving_http::{shutdown_signal, Observability, WebService};
///
/// # #[tokio::main] async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
/// let observability = Observability::new()
///     .with_prediction_log(PredictionLog::builder().build()?)
///     .with_log_lines(true);
/// let model = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
/// let endpoint = observability
///     .instrument(ModelEndpoint::builder("adder", model))
///     .build()?;
/// let service = WebService::builder()
///     .endpoint(endpoint)
///     .observability(observability)
///     .build()?;
/// service.serve(shutdown_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Observability {
    prometheus: Arc<PrometheusMetrics>,
    charts: Arc<ChartMetrics>,
    history: Arc<InMemoryMetrics>,
    prediction_log: Option<PredictionLog>,
    log_lines: bool,
    close_on_shutdown: bool,
}

impl Observability {
    /// Prometheus metrics, per-minute charts and recent history for triggers; no prediction
    /// log and no per-prediction log lines until added.
    pub fn new() -> Self {
        Observability {
            prometheus: Arc::new(PrometheusMetrics::new()),
            charts: Arc::new(ChartMetrics::new()),
            history: Arc::new(InMemoryMetrics::new()),
            prediction_log: None,
            log_lines: false,
            close_on_shutdown: true,
        }
    }

    /// Records every prediction in `log`, serves it through the logs APIs, and exports its
    /// counters at `/metrics`. Configure before [`Observability::instrument`]: this starts a
    /// fresh Prometheus exposition.
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

    /// Whether the web service closes the prediction log after its graceful shutdown (on by
    /// default; turn it off when the log is shared with something that outlives the service).
    pub fn with_close_on_shutdown(mut self, on: bool) -> Self {
        self.close_on_shutdown = on;
        self
    }

    /// The sink for endpoints: recent history first (so triggers read it), then charts, then
    /// Prometheus.
    pub fn metric_sink(&self) -> Arc<DynMetricSink> {
        Arc::new(FanOut::new(vec![
            Arc::clone(&self.history) as Arc<DynMetricSink>,
            Arc::clone(&self.charts) as Arc<DynMetricSink>,
            Arc::clone(&self.prometheus) as Arc<DynMetricSink>,
        ]))
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

    /// Gives `builder` this observability's metric and record sinks.
    pub fn instrument(&self, builder: ModelEndpointBuilder) -> ModelEndpointBuilder {
        let builder = builder.metric_sink(self.metric_sink());
        match self.record_sink() {
            Some(records) => builder.record_sink(records),
            None => builder,
        }
    }

    /// The Prometheus exposition.
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

    /// Closes the prediction log if configured to; called by the web service after its
    /// graceful shutdown.
    pub(crate) async fn shutdown(&self) {
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
        let mut prometheus = PrometheusMetrics::new().with_chart_metrics(Arc::clone(&self.charts));
        if let Some(log) = &self.prediction_log {
            prometheus = prometheus.with_prediction_log(log.clone());
        }
        self.prometheus = Arc::new(prometheus);
    }
}

impl Default for Observability {
    fn default() -> Self {
        Self::new()
    }
}

impl WebService {
    /// The observability it serves, if any.
    pub fn observability(&self) -> Option<&Observability> {
        self.state.observability.as_ref()
    }
}

impl WebServiceBuilder {
    /// Serves `/metrics`, `/dashboard` and the charts and logs APIs from `observability`, and
    /// closes its prediction log after the graceful shutdown (see
    /// [`Observability::with_close_on_shutdown`]).
    pub fn observability(mut self, observability: Observability) -> Self {
        self.observability = Some(observability);
        self
    }
}

/// The routes of this module, merged into the service's router.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/endpoints/{name}/charts", get(charts))
        .route("/api/v1/endpoints/{name}/logs", get(logs))
        .route("/api/v1/endpoints/{name}/logs.csv", get(logs_csv))
        .merge(dashboard::routes())
}

fn observability(state: &ServiceState) -> Result<&Observability, ApiError> {
    state.observability.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "observability is not enabled on this service",
        )
    })
}

/// The endpoint named `name`, if the request carries its token.
fn authorize<'a>(
    state: &'a ServiceState,
    name: &str,
    headers: &HeaderMap,
) -> Result<&'a Route, ApiError> {
    let route = state
        .endpoints
        .get(name)
        .ok_or_else(|| Error::EndpointNotFound {
            endpoint: name.to_owned(),
        })?;
    if let Some(token) = &route.token {
        let given = headers
            .get(TOKEN_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !token.matches(given) {
            return Err(Error::Unauthorized.into());
        }
    }
    Ok(route)
}

async fn metrics(State(state): State<Arc<ServiceState>>) -> Result<Response, ApiError> {
    let text = observability(&state)?.prometheus.render();
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response())
}

async fn charts(
    State(state): State<Arc<ServiceState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<axum::Json<Charts>, ApiError> {
    let observability = observability(&state)?;
    authorize(&state, &name, &headers)?;
    let params = params(&uri, &["minutes"])?;
    let minutes = match params.get("minutes") {
        None => 60,
        Some(text) => text.parse::<u64>().ok().filter(|m| *m > 0).ok_or_else(|| {
            Error::invalid_request(format!(
                "minutes `{text}` must be a whole number above zero"
            ))
        })?,
    };
    let since = SystemTime::now() - Duration::from_secs(60 * (minutes - 1));
    Ok(axum::Json(observability.charts.charts(&name, since)))
}

const LOG_PARAMS: [&str; 9] = [
    "start_time",
    "end_time",
    "model",
    "model_version",
    "status",
    "offset",
    "size",
    "order",
    "minutes",
];

/// One recorded prediction as the logs API serves it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LogEntry {
    request_id: String,
    endpoint: String,
    model: String,
    model_version: String,
    status: u16,
    start_time: String,
    event_time: f64,
    elapsed_ms: f64,
    input: Option<Value>,
    output: Option<Value>,
    error: Option<String>,
    metrics: BTreeMap<String, f64>,
    params: BTreeMap<String, Value>,
}

impl From<PredictionRecord> for LogEntry {
    fn from(record: PredictionRecord) -> Self {
        LogEntry {
            start_time: format_time(record.start_time),
            event_time: record
                .start_time
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            request_id: record.request_id,
            endpoint: record.endpoint,
            model: record.model,
            model_version: record.model_version,
            status: record.status,
            elapsed_ms: record.elapsed_ms,
            input: record.input,
            output: record.output,
            error: record.error,
            metrics: record.metrics,
            params: record.params,
        }
    }
}

/// The page of the prediction log that a `logs` or `logs.csv` request asks for, at most
/// `max_size` records, once the caller is authorized.
async fn query_log(
    state: &ServiceState,
    name: &str,
    headers: &HeaderMap,
    uri: &Uri,
    max_size: usize,
) -> Result<(PredictionQuery, PredictionPage), ApiError> {
    let log = prediction_log(state)?;
    authorize(state, name, headers)?;
    let query = log_query(name, uri, max_size)?;
    let page = log.query(&query).await.map_err(internal)?;
    Ok((query, page))
}

async fn logs(
    State(state): State<Arc<ServiceState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (query, page) = query_log(&state, &name, &headers, &uri, 1_000).await?;
    let body = serde_json::json!({
        "endpoint": name,
        "total": page.total,
        "offset": query.offset,
        "size": query.size,
        "predictions": page.records.into_iter().map(LogEntry::from).collect::<Vec<_>>(),
    });
    Ok(axum::Json(body).into_response())
}

async fn logs_csv(
    State(state): State<Arc<ServiceState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (_, page) = query_log(&state, &name, &headers, &uri, 1_000_000).await?;
    let mut csv = Vec::with_capacity(128 + page.records.len() * 256);
    write_csv(&page.records, &mut csv).map_err(internal)?;
    let disposition = format!("attachment; filename=\"{name}-predictions.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv,
    )
        .into_response())
}

fn prediction_log(state: &ServiceState) -> Result<&PredictionLog, ApiError> {
    observability(state)?
        .prediction_log
        .as_ref()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this service keeps no prediction log",
            )
        })
}

/// The query's parameters; an unknown one is an error that lists the valid ones.
fn params(uri: &Uri, valid: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| Error::invalid_request(format!("malformed query string: {e}")))?;
    let mut params = BTreeMap::new();
    for (key, value) in pairs {
        if !valid.contains(&key.as_str()) {
            return Err(Error::invalid_request(format!(
                "unknown parameter `{key}`; valid parameters are: {}",
                valid.join(", ")
            ))
            .into());
        }
        if !value.is_empty() {
            params.insert(key, value);
        }
    }
    Ok(params)
}

/// Parses the logs APIs' parameters; `minutes` is a shorthand for `start_time` that many
/// minutes ago.
fn log_query(endpoint: &str, uri: &Uri, max_size: usize) -> Result<PredictionQuery, ApiError> {
    let params = params(uri, &LOG_PARAMS)?;
    let number = |key: &str, default: usize| -> Result<usize, ApiError> {
        params.get(key).map_or(Ok(default), |text| {
            text.parse().map_err(|_| {
                Error::invalid_request(format!("{key} `{text}` must be a whole number")).into()
            })
        })
    };
    let mut query = PredictionQuery::new(endpoint);
    query.start_time = params
        .get("start_time")
        .map(|t| parse_time(t))
        .transpose()?;
    if let Some(minutes) = params.get("minutes") {
        let minutes: u64 = minutes.parse().map_err(|_| {
            Error::invalid_request(format!("minutes `{minutes}` must be a whole number"))
        })?;
        query.start_time = Some(SystemTime::now() - Duration::from_secs(60 * minutes));
    }
    query.end_time = params.get("end_time").map(|t| parse_time(t)).transpose()?;
    query.model = params.get("model").cloned();
    query.model_version = params.get("model_version").cloned();
    query.status = params.get("status").map(|s| s.parse()).transpose()?;
    query.order = params
        .get("order")
        .map(|o| o.parse())
        .transpose()?
        .unwrap_or(Order::OldestFirst);
    query.offset = number("offset", 0)?;
    query.size = number("size", 100)?;
    if query.size > max_size {
        return Err(Error::invalid_request(format!("size must be at most {max_size}")).into());
    }
    Ok(query)
}

fn internal(error: Error) -> ApiError {
    tracing::error!(%error, "reading the prediction log failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "reading the prediction log failed; see the server log",
    )
}
