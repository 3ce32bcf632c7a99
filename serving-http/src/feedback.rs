//! Feedback loops over HTTP: the admin routes that start, list and stop an endpoint's loops
//! ([`FeedbackLoops`]), and the read-only list the dashboard's Logs tab shows.
//!
//! | Method | Path | Auth | Body | Does |
//! |---|---|---|---|---|
//! | POST | `/api/v1/admin/endpoints/{name}/feedback` | admin | `{"dataset", "schedule": "now" \| {"every_secs": N} \| {"cron": "…"}, "format"?: "csv" \| "jsonl"}` | starts a loop: `201` with its status, `id` included |
//! | GET | `/api/v1/admin/endpoints/{name}/feedback` | admin | | `{"feedback": [...]}`: every loop with its exports (file, records, time range) |
//! | GET | `/api/v1/admin/endpoints/{name}/feedback/{id}` | admin | | one loop |
//! | DELETE | `/api/v1/admin/endpoints/{name}/feedback/{id}` | admin | | stops it: it exports no more |
//! | GET | `/api/v1/endpoints/{name}/feedback` | the endpoint's token | | the list, for the dashboard |
//!
//! A bad body is a 400 that names the field (`dataset`, `schedule`, `schedule.every_secs`,
//! `schedule.cron`, `format`), as is a dataset whose store cannot be reached. Without
//! [`WebServiceBuilder::feedback_loops`] every route answers 404.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use serving_core::{Error, FeedbackLoopSpec, FeedbackLoops};

use crate::control::{Admin, AdminBody};
use crate::error::ApiError;
use crate::service::{Route, ServiceState, WebService, WebServiceBuilder};

type Shared = State<Arc<ServiceState>>;

impl WebServiceBuilder {
    /// Runs feedback loops with `loops`: those of each endpoint's spec
    /// ([`EndpointSpec::feedback`](serving_core::EndpointSpec::feedback)) start when the
    /// service is built, and the admin API starts, lists and stops more.
    pub fn feedback_loops(mut self, loops: FeedbackLoops) -> Self {
        self.feedback = Some(loops);
        self
    }
}

impl WebService {
    /// The feedback loops it runs, if any.
    pub fn feedback_loops(&self) -> Option<&FeedbackLoops> {
        self.state.feedback.as_ref()
    }
}

/// Starts the loops of every endpoint's spec; called by the builder.
pub(crate) fn start_spec_loops(
    loops: Option<&FeedbackLoops>,
    endpoints: &std::collections::HashMap<String, Arc<Route>>,
) -> serving_core::Result<()> {
    for (name, route) in endpoints {
        let spec = route.endpoint.spec();
        if spec.feedback.is_empty() {
            continue;
        }
        let Some(loops) = loops else {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "endpoint `{name}` has feedback loops; give the service FeedbackLoops \
                     (WebServiceBuilder::feedback_loops)"
                ),
            });
        };
        let timeout = spec.server.workers.timeout();
        for feedback in spec.feedback.clone() {
            loops.start_unchecked(name, timeout, feedback)?;
        }
    }
    Ok(())
}

/// The admin routes, merged into the admin router.
pub(crate) fn admin_routes() -> Router<Arc<ServiceState>> {
    let base = "/api/v1/admin/endpoints/{name}/feedback";
    Router::new()
        .route(base, get(list).post(start))
        .route(&format!("{base}/{{id}}"), get(one).delete(stop))
}

/// The dashboard's read-only list, behind the endpoint's token.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    Router::new().route("/api/v1/endpoints/{name}/feedback", get(dashboard_list))
}

/// The service's loops and the endpoint's route.
fn loops_of<'a>(
    state: &'a ServiceState,
    name: &str,
) -> Result<(&'a FeedbackLoops, &'a Route), ApiError> {
    let route = state
        .endpoints
        .get(name)
        .ok_or_else(|| Error::EndpointNotFound {
            endpoint: name.to_owned(),
        })?;
    let loops = state.feedback.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this service runs no feedback loops (WebServiceBuilder::feedback_loops)",
        )
    })?;
    Ok((loops, route))
}

fn no_loop(name: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("endpoint `{name}` has no feedback loop `{id}`"),
    )
}

async fn start(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let (loops, route) = loops_of(&state, &name)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid_request(format!("invalid JSON body: {e}")))?;
    let spec = FeedbackLoopSpec::from_value(value)?;
    let timeout = route.endpoint.spec().server.workers.timeout();
    let id = loops.start(&name, timeout, spec.clone()).await?;
    tracing::info!(
        target: "serving::admin",
        who = "admin",
        endpoint = %name,
        action = "feedback_start",
        before = "null",
        after = %json!({"id": id, "loop": spec}),
        "admin change"
    );
    let status = loops.get(&name, &id).ok_or_else(|| no_loop(&name, &id))?;
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

async fn list(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (loops, _) = loops_of(&state, &name)?;
    Ok(axum::Json(FeedbackList {
        feedback: loops.list(&name),
    })
    .into_response())
}

async fn one(
    _: Admin,
    State(state): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (loops, _) = loops_of(&state, &name)?;
    let status = loops.get(&name, &id).ok_or_else(|| no_loop(&name, &id))?;
    Ok(axum::Json(status).into_response())
}

async fn stop(
    _: Admin,
    State(state): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (loops, _) = loops_of(&state, &name)?;
    let status = loops.stop(&name, &id).ok_or_else(|| no_loop(&name, &id))?;
    tracing::info!(
        target: "serving::admin",
        who = "admin",
        endpoint = %name,
        action = "feedback_stop",
        before = %json!({"id": id}),
        after = %json!({"id": id, "state": status.state}),
        "admin change"
    );
    Ok(axum::Json(status).into_response())
}

async fn dashboard_list(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::observability::authorize(&state, &name, &headers)?;
    let (loops, _) = loops_of(&state, &name)?;
    Ok(axum::Json(FeedbackList {
        feedback: loops.list(&name),
    })
    .into_response())
}

/// The spec to deploy `name` again holds its recurring loops that still run.
pub(crate) fn spec_loops(state: &ServiceState, name: &str, spec: &mut serving_core::EndpointSpec) {
    if let Some(loops) = &state.feedback {
        spec.feedback = loops.specs(name);
    }
}

/// A list of feedback loops: `{"feedback": [...]}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FeedbackList {
    /// Every loop of the endpoint, oldest first.
    feedback: Vec<serving_core::FeedbackLoopStatus>,
}

/// The OpenAPI paths of these routes, merged into the service's document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        paths::feedback_start,
        paths::feedback_list,
        paths::feedback_one,
        paths::feedback_stop,
        paths::feedback_dashboard
    ),
    components(schemas(
        FeedbackList,
        serving_core::FeedbackLoopSpec,
        serving_core::FeedbackLoopStatus,
        serving_core::FeedbackSchedule,
        serving_core::ExportFormat,
        serving_core::ExportSummary,
        serving_core::LoopState
    ))
)]
pub(crate) struct FeedbackDoc;

/// Markers that carry the paths' documentation.
#[allow(dead_code)]
mod paths {
    use super::FeedbackList;
    use crate::openapi::ErrorBody;
    use serving_core::{FeedbackLoopSpec, FeedbackLoopStatus};

    /// Starts a feedback loop: exports the endpoint's prediction log into a dataset now or on
    /// a schedule, each export holding the records since the previous one.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/feedback", tag = "admin",
        operation_id = "admin_feedback_start",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = FeedbackLoopSpec, content_type = "application/json"),
        responses(
            (status = 201, description = "Started; the body holds its `id`.", body = FeedbackLoopStatus),
            (status = 400, description = "A bad field (named), or a dataset that cannot be reached.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no feedback loops on this service.", body = ErrorBody),
            (status = 408, description = "The body did not arrive in time.", body = ErrorBody),
            (status = 413, description = "The body is over the endpoint's limit.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn feedback_start() {}

    /// The endpoint's feedback loops, each with its exports (file, records, time range).
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/feedback", tag = "admin",
        operation_id = "admin_feedback_list",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The loops.", body = FeedbackList),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no feedback loops on this service.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn feedback_list() {}

    /// One feedback loop.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/feedback/{id}", tag = "admin",
        operation_id = "admin_feedback_get",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("id" = String, Path, description = "The loop's id."),
        ),
        responses(
            (status = 200, description = "The loop.", body = FeedbackLoopStatus),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint or loop of that name, or no feedback loops on this service.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn feedback_one() {}

    /// Stops a feedback loop: it exports no more (an export under way finishes).
    #[utoipa::path(delete, path = "/api/v1/admin/endpoints/{name}/feedback/{id}", tag = "admin",
        operation_id = "admin_feedback_stop",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("id" = String, Path, description = "The loop's id."),
        ),
        responses(
            (status = 200, description = "Stopped (or already done).", body = FeedbackLoopStatus),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint or loop of that name, or no feedback loops on this service.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn feedback_stop() {}

    /// The endpoint's feedback loops, for the dashboard's Logs tab.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/feedback", tag = "observability",
        operation_id = "feedback",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The loops.", body = FeedbackList),
            (status = 401, description = "Missing or wrong prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no feedback loops on this service.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn feedback_dashboard() {}
}
