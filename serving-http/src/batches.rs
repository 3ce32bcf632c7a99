//! `/api/v1/endpoints/{name}/batches`: batch runs over REST, behind the endpoint's prediction
//! token, for any [`BatchRuns`] attached with
//! [`WebServiceBuilder::batch_endpoint`](crate::WebServiceBuilder::batch_endpoint).
//!
//! | Route | Answer |
//! |---|---|
//! | `POST …/batches` `{"input_file", "output_file", "dataset"}` | 202 `{"id"}` |
//! | `GET …/batches` | 200 `{"runs": [...]}`, newest first |
//! | `GET …/batches/compare?ids=a,b` | 200 the runs side by side, with their differences |
//! | `GET …/batches/{id}` | 200 the run, with `progress` while it runs |
//! | `DELETE …/batches/{id}` | 200 the run, cancelled |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use serving_core::{Arrival, BatchRequest, BatchRun, DynBatchRuns, Error};

use crate::auth::Token;
use crate::error::ApiError;
use crate::service::{ServiceState, read_body};

/// Largest batch request body: three paths and two flags.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// One batch endpoint served over REST.
#[derive(Debug)]
pub(crate) struct BatchRoute {
    pub(crate) runs: Arc<DynBatchRuns>,
    pub(crate) token: Option<Token>,
}

type Shared = State<Arc<ServiceState>>;

pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    // `compare` is registered before `{id}`: a literal segment wins over a parameter.
    Router::new()
        .route("/api/v1/endpoints/{name}/batches", get(list).post(submit))
        .route("/api/v1/endpoints/{name}/batches/compare", get(compare))
        .route(
            "/api/v1/endpoints/{name}/batches/{id}",
            get(fetch).delete(cancel),
        )
}

/// The batch endpoint `name`, once the caller's token is checked.
fn authorized<'a>(
    state: &'a ServiceState,
    name: &str,
    headers: &HeaderMap,
) -> Result<&'a BatchRoute, ApiError> {
    let Some(route) = state.batches.get(name) else {
        // Another kind of endpoint of that name: its own token is checked first, so the
        // answer tells its kind only to a caller who may call it.
        return Err(match state.endpoints.get(name) {
            Some(other) if !crate::auth::carries(other.token.as_ref(), headers) => {
                Error::Unauthorized
            }
            Some(_) => Error::NotBatchEndpoint {
                endpoint: name.to_owned(),
            },
            None => Error::EndpointNotFound {
                endpoint: name.to_owned(),
            },
        }
        .into());
    };
    if !crate::auth::carries(route.token.as_ref(), headers) {
        return Err(Error::Unauthorized.into());
    }
    Ok(route)
}

/// A run as answered: its record and its progress.
fn run_body(run: &BatchRun) -> serde_json::Value {
    let mut body = serde_json::to_value(run).unwrap_or_else(|_| json!({}));
    body["progress"] = json!(run.progress());
    body
}

async fn submit(
    State(state): Shared,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let arrival = Arrival::now();
    let (parts, body) = request.into_parts();
    let route = authorized(&state, &name, &parts.headers)?;
    let body = read_body(body, MAX_BODY_BYTES, state.body_timeout, arrival).await?;
    let request: BatchRequest = serde_json::from_slice(&body).map_err(|error| {
        Error::invalid_request(format!(
            "expected {{\"input_file\", \"output_file\", \"dataset\"}}: {error}"
        ))
    })?;
    let id = route.runs.submit(&name, request).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response())
}

async fn list(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = authorized(&state, &name, &headers)?;
    let runs: Vec<_> = route.runs.list(&name).await?.iter().map(run_body).collect();
    Ok(axum::Json(json!({ "runs": runs })).into_response())
}

async fn fetch(
    State(state): Shared,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = authorized(&state, &name, &headers)?;
    let run = route.runs.get(&name, &id).await?;
    Ok(axum::Json(run_body(&run)).into_response())
}

async fn cancel(
    State(state): Shared,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = authorized(&state, &name, &headers)?;
    let run = route.runs.cancel(&name, &id).await?;
    Ok(axum::Json(run_body(&run)).into_response())
}

#[derive(Debug, Deserialize)]
struct CompareQuery {
    ids: Option<String>,
}

async fn compare(
    State(state): Shared,
    Path(name): Path<String>,
    Query(query): Query<CompareQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = authorized(&state, &name, &headers)?;
    let ids: Vec<String> = query
        .ids
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(Error::invalid_request("expected ?ids=a,b: the runs to compare").into());
    }
    let comparison = route.runs.compare(&name, &ids).await?;
    let runs: Vec<_> = comparison.runs.iter().map(run_body).collect();
    Ok(axum::Json(json!({ "runs": runs, "differences": comparison.differences })).into_response())
}
