//! [`Observability`]: every prediction recorded, measured and visible, and the routes that show
//! it: `GET /metrics`, `GET /dashboard`, and the JSON and CSV APIs behind the dashboard.
//!
//! | Route | Auth | What |
//! |---|---|---|
//! | `GET /metrics` | none (meant for a Prometheus scraper inside the cluster) | Prometheus text; see [`PrometheusMetrics`](crate::PrometheusMetrics) |
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
//! `{"endpoint", "total", "total_exact", "offset", "size", "predictions": [{request_id, endpoint, model,
//! model_version, status, start_time, event_time, elapsed_ms, input, output, error, metrics,
//! params}]}` where `start_time` is RFC 3339, `event_time` seconds since the epoch (the
//! original product's name), and `input`/`output` the JSON values as logged. A query reads
//! only what its page needs, so `total` is exact (`total_exact: true`) when the rest of the
//! log can be counted from its segments' names (the query filters by time alone), and
//! otherwise a lower bound that says more follow. At most
//! [`max_concurrent_queries`](serving_core::prediction_log::PredictionLogConfig::max_concurrent_queries)
//! queries read the log at once; the others wait. `logs.csv` is streamed as it is read, and
//! every cell that a spreadsheet would take for a formula starts with `'`.
//! A time or `minutes` out of range (before 1970, after 9999) is a 400 naming the parameter.
//!
//! Recorded predictions become visible once the prediction log has written them: within its
//! flush interval (one second by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use serving_core::observe::METRICS_CONTENT_TYPE;
/// The sinks, moved to the core so that every transport wires them alike; re-exported where
/// they were.
pub use serving_core::observe::Observability;
use serving_core::prediction_log::{
    Order, PredictionLog, PredictionPage, PredictionQuery, format_time, parse_time,
};
use serving_core::{Charts, Error, PredictionRecord};

use crate::dashboard;
use crate::error::ApiError;
use crate::service::{Route, ServiceState, WebService, WebServiceBuilder};

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
pub(crate) fn authorize<'a>(
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
    if !crate::auth::carries(route.token.as_ref(), headers) {
        return Err(Error::Unauthorized.into());
    }
    Ok(route)
}

async fn metrics(State(state): State<Arc<ServiceState>>) -> Result<Response, ApiError> {
    let text = observability(&state)?.prometheus().render();
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
    let since = match params.get("minutes") {
        None => minutes_ago(59).unwrap_or(SystemTime::UNIX_EPOCH),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|m| *m > 0)
            .and_then(|m| minutes_ago(m - 1))
            .ok_or_else(|| {
                Error::invalid_request(format!(
                    "minutes `{text}` must be a whole number above zero that reaches back no \
                     further than 1970"
                ))
            })?,
    };
    Ok(axum::Json(observability.charts().charts(&name, since)))
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
        "total_exact": page.total_exact,
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
    let log = prediction_log(&state)?;
    authorize(&state, &name, &headers)?;
    let query = log_query(&name, &uri, 1_000_000)?;
    // Streamed as the log is read: a million rows are never held at once.
    let csv = axum::body::Body::from_stream(log.query_csv(&query).await.map_err(internal)?);
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
    observability(state)?.prediction_log().ok_or_else(|| {
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
    // The parameter's name leads the reason, so the caller knows which one to fix.
    let time = |key: &str| -> Result<Option<SystemTime>, ApiError> {
        params.get(key).map_or(Ok(None), |text| {
            parse_time(text).map(Some).map_err(|error| {
                Error::invalid_request(format!("{key}: {}", reason(&error))).into()
            })
        })
    };
    let mut query = PredictionQuery::new(endpoint);
    query.start_time = time("start_time")?;
    if let Some(minutes) = params.get("minutes") {
        let start = minutes.parse().ok().and_then(minutes_ago).ok_or_else(|| {
            Error::invalid_request(format!(
                "minutes `{minutes}` must be a whole number that reaches back no further than 1970"
            ))
        })?;
        query.start_time = Some(start);
    }
    query.end_time = time("end_time")?;
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

/// The time `minutes` minutes ago, if it is after 1970 (earlier times are out of range of
/// some clocks and calendars: computing them panicked).
fn minutes_ago(minutes: u64) -> Option<SystemTime> {
    let seconds = minutes.checked_mul(60)?;
    SystemTime::now()
        .checked_sub(Duration::from_secs(seconds))
        .filter(|start| *start >= SystemTime::UNIX_EPOCH)
}

/// A core error's reason, without its kind's prefix.
fn reason(error: &Error) -> String {
    match error {
        Error::InvalidRequest { reason } => reason.clone(),
        other => other.to_string(),
    }
}

fn internal(error: Error) -> ApiError {
    tracing::error!(%error, "reading the prediction log failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "reading the prediction log failed; see the server log",
    )
}
