//! The admin API of an endpoint's triggers, behind the admin token (beside [`crate::control`],
//! whose extractors it shares): add, list with state and recent alerts, remove.
//!
//! | Method | Path | Body | Does |
//! |---|---|---|---|
//! | POST | `/api/v1/admin/endpoints/{name}/triggers` | a [`TriggerSpec`] | adds it: `201 {"id"}` |
//! | GET | `/api/v1/admin/endpoints/{name}/triggers` | | `{"triggers": [...]}`, each with state and recent alerts |
//! | DELETE | `/api/v1/admin/endpoints/{name}/triggers/{id}` | | stops and removes it |
//!
//! `GET /api/v1/endpoints/{name}/triggers` lists the same behind the endpoint's prediction
//! token, for the dashboard's Triggers tab. A bad rule is a 400 whose message names the field. Each change writes an `admin change`
//! line on the `serving::admin` target, as the lifecycle routes do.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Value, json};
use serving_core::{Error, Lifecycle, TriggerSpec};

use crate::control::{Admin, AdminBody, lifecycle, parse};
use crate::error::ApiError;
use crate::service::ServiceState;

type Shared = State<Arc<ServiceState>>;

/// The dashboard's read-only view of the triggers, behind the endpoint's prediction token (as
/// its charts and logs are): merged into the operations router.
pub(crate) fn dashboard_routes() -> Router<Arc<ServiceState>> {
    Router::new().route("/api/v1/endpoints/{name}/triggers", get(dashboard_list))
}

async fn dashboard_list(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = crate::observability::authorize(&state, &name, &headers)?;
    let triggers = route
        .endpoint
        .lifecycle()
        .map(Lifecycle::triggers)
        .unwrap_or_default();
    Ok(axum::Json(json!({ "triggers": triggers })).into_response())
}

/// The trigger routes, merged into the admin router.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    let base = "/api/v1/admin/endpoints/{name}";
    Router::new()
        .route(&format!("{base}/triggers"), get(list).post(add))
        .route(&format!("{base}/triggers/{{id}}"), delete(remove))
}

fn audit(lifecycle: &Lifecycle, action: &str, id: &str, trigger: &Value) {
    tracing::info!(
        target: "serving::admin",
        who = "admin",
        endpoint = lifecycle.endpoint(),
        action,
        trigger_id = id,
        trigger = %trigger,
        "admin change"
    );
}

/// A bad rule is the caller's: a 400 that names the field.
fn refused(error: Error) -> ApiError {
    match error {
        Error::InvalidSpec { reason } => Error::invalid_request(reason).into(),
        other => other.into(),
    }
}

async fn add(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    // Whole floats (`10.0`) are integers, as JSON Schema counts them.
    let value: Value =
        parse(&bytes).map_err(|e| Error::invalid_request(format!("trigger: invalid JSON: {e}")))?;
    let spec = TriggerSpec::from_value(value).map_err(refused)?;
    let listed = spec.action.kind();
    let id = lifecycle.add_trigger_spec(spec.clone()).map_err(refused)?;
    audit(
        lifecycle,
        "add_trigger",
        &id,
        &json!({"title": spec.rule.title, "metric": spec.rule.metric, "action": listed}),
    );
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response())
}

async fn list(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    Ok(axum::Json(json!({ "triggers": lifecycle.triggers() })).into_response())
}

async fn remove(
    _: Admin,
    State(state): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    lifecycle.remove_trigger(&id)?;
    audit(lifecycle, "remove_trigger", &id, &Value::Null);
    Ok(axum::Json(json!({ "id": id, "removed": true })).into_response())
}
