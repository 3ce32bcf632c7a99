//! The admin REST API: each endpoint's model lifecycle, behind the admin token. The routes are
//! documented in the crate docs ("Admin API"). Every change that succeeds writes one
//! `admin change` event on the `serving::admin` target with the fields `who` (`admin`),
//! `endpoint`, `action`, and `before` and `after` (stable version, candidate, shadow, canary
//! policy and autoscale bounds as JSON).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use serving_core::{
    Arrival, AutoscaleBounds, CanaryPolicy, Error, Lifecycle, ModelRef, WorkerSettings,
};

use crate::error::ApiError;
use crate::service::{ServiceState, read_body};

type Shared = State<Arc<ServiceState>>;

/// The admin routes, merged into the service's router.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    let base = "/api/v1/admin/endpoints/{name}";
    Router::new()
        .route("/api/v1/admin/endpoints", get(list))
        .route(base, get(status))
        .route(&format!("{base}/status"), get(status))
        .route(&format!("{base}/versions"), get(versions))
        .route(&format!("{base}/versions/{{version}}"), get(version))
        .route(&format!("{base}/events"), get(events))
        .route(&format!("{base}/spec"), get(spec))
        .route(&format!("{base}/update"), post(update))
        .route(&format!("{base}/canary"), post(canary))
        .route(&format!("{base}/canary/policy"), put(policy))
        .route(&format!("{base}/canary/evaluate"), post(evaluate))
        .route(&format!("{base}/promote"), post(promote))
        .route(&format!("{base}/rollback"), post(rollback))
        .route(&format!("{base}/shadow"), post(shadow).delete(stop_shadow))
        .route(&format!("{base}/shadow/share"), post(shadow_share))
        .route(
            &format!("{base}/autoscale"),
            get(autoscale).put(set_autoscale),
        )
}

/// Proof that the request carries the admin token.
pub(crate) struct Admin;

impl FromRequestParts<Arc<ServiceState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServiceState>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let unauthorized = |message: &str| {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"serving-admin\""),
            );
            response
        };
        let Some(given) = bearer else {
            return Err(unauthorized(
                "the admin API needs `Authorization: Bearer <admin token>`",
            ));
        };
        if state.admin_token.matches(given.as_bytes()) {
            return Ok(Admin);
        }
        let is_prediction_token = state
            .endpoints
            .values()
            .filter_map(|route| route.token.as_ref())
            .any(|token| token.matches(given.as_bytes()));
        if is_prediction_token {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a prediction token cannot manage endpoints; use the admin token",
            )
            .into_response());
        }
        Err(unauthorized("invalid admin token"))
    }
}

/// An admin request's body, read as a prediction's is: at most the named endpoint's
/// `max_body_bytes` (413 beyond), within the body timeout (408 after). Extracted after
/// [`Admin`], so that nothing is read before the token is checked.
pub(crate) struct AdminBody(pub(crate) Bytes);

impl FromRequest<Arc<ServiceState>> for AdminBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ServiceState>) -> Result<Self, ApiError> {
        let arrival = Arrival::now();
        let (mut parts, body) = request.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, state).await;
        let limit = params
            .ok()
            .and_then(|params| {
                let (_, name) = params.iter().find(|(key, _)| *key == "name")?;
                state.endpoints.get(name)
            })
            .map_or_else(
                || WorkerSettings::default().max_body_bytes,
                |route| route.endpoint.spec().server.workers.max_body_bytes,
            );
        let bytes = read_body(body, limit, state.body_timeout, arrival).await?;
        Ok(AdminBody(bytes))
    }
}

pub(crate) fn lifecycle<'a>(
    state: &'a ServiceState,
    name: &str,
) -> Result<&'a Lifecycle, ApiError> {
    let route = state
        .endpoints
        .get(name)
        .ok_or_else(|| Error::EndpointNotFound {
            endpoint: name.to_owned(),
        })?;
    route.endpoint.lifecycle().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("endpoint `{name}` has no model lifecycle to control"),
        )
    })
}

/// A JSON body in our error shape; an empty body is `T::default()` where `T` allows it.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    parse(text).map_err(|e| Error::invalid_request(format!("invalid JSON body: {e}")).into())
}

/// `text` as a `T`, a whole number written as a float (`50.0`, as Python's `json` writes
/// floats) taken as that integer: JSON Schema counts it as one, and so does the API's
/// OpenAPI document.
pub(crate) fn parse<T: DeserializeOwned>(text: &[u8]) -> serde_json::Result<T> {
    fn whole(value: &mut Value) {
        match value {
            Value::Number(number) => {
                if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
                    // Within ±2^53 every whole float is exactly its integer.
                    if float.fract() == 0.0 && float.abs() <= 9_007_199_254_740_992.0 {
                        let integer = float as i64;
                        *number = integer.into();
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(whole),
            Value::Object(entries) => entries.values_mut().for_each(whole),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_slice(text)?;
    whole(&mut value);
    serde_json::from_value(value)
}

/// What an admin change can alter, as one JSON value for the audit line.
fn snapshot(lifecycle: &Lifecycle) -> Value {
    let share = |(version, percent): (String, u8)| json!({"version": version, "percent": percent});
    json!({
        "stable": lifecycle.stable_version(),
        "candidate": lifecycle.candidate().map(share),
        "shadow": lifecycle.shadow().map(share),
        "canary_policy": lifecycle.canary_policy(),
        "autoscale": lifecycle.autoscale(),
    })
}

/// Writes the audit line of an admin change that succeeded: who (the admin token's holder),
/// which endpoint, what, and the state before and after, as structured fields on the
/// `serving::admin` target.
fn audit(lifecycle: &Lifecycle, action: &str, before: &Value) {
    let after = snapshot(lifecycle);
    tracing::info!(
        target: "serving::admin",
        who = "admin",
        endpoint = lifecycle.endpoint(),
        action,
        before = %before,
        after = %after,
        "admin change"
    );
}

async fn changed(lifecycle: &Lifecycle, version: String) -> Response {
    let status = lifecycle.status().await;
    axum::Json(json!({ "version": version, "status": status })).into_response()
}

async fn list(_: Admin, State(state): Shared) -> Response {
    let mut endpoints: Vec<Value> = state
        .endpoints
        .iter()
        .map(|(name, route)| {
            let lifecycle = route.endpoint.lifecycle();
            json!({
                "name": name,
                "ready": route.endpoint.is_ready(),
                "stable": lifecycle.map(Lifecycle::stable_version),
                "candidate": lifecycle.and_then(Lifecycle::candidate).map(|(v, p)| json!({"version": v, "percent": p})),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    axum::Json(json!({ "endpoints": endpoints })).into_response()
}

async fn status(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    Ok(axum::Json(lifecycle.status().await).into_response())
}

async fn versions(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    Ok(axum::Json(json!({ "versions": lifecycle.versions() })).into_response())
}

async fn version(
    _: Admin,
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let found = lifecycle.version(&version).ok_or(Error::VersionNotFound {
        endpoint: name,
        version: version.clone(),
    })?;
    let mut body = serde_json::to_value(found).unwrap_or_default();
    body["recent"] = serde_json::to_value(lifecycle.stats(&version)).unwrap_or_default();
    Ok(axum::Json(body).into_response())
}

async fn events(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    Ok(axum::Json(json!({ "events": lifecycle.events() })).into_response())
}

async fn spec(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let mut spec = lifecycle.export_spec();
    crate::feedback::spec_loops(&state, &name, &mut spec);
    Ok(axum::Json(spec).into_response())
}

/// A registered version to deploy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registered {
    version: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// The preprocess to run before it: the stable version's when absent, none when `null`.
    #[serde(default, with = "serde_with_null")]
    #[schema(value_type = Option<String>)]
    preprocess: Option<Option<String>>,
    #[serde(default)]
    #[schema(maximum = 100)]
    canary_percent: Option<u8>,
    #[serde(default)]
    #[schema(maximum = 100)]
    percent: Option<u8>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(deserializer).map(Some)
    }
}

fn registered_update(
    lifecycle: &Lifecycle,
    wanted: &Registered,
) -> Result<serving_core::ModelUpdate, ApiError> {
    let registry = lifecycle.registry().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "endpoint `{}` has no model registry; roll out new predictor code through the Rust API",
                lifecycle.endpoint()
            ),
        )
    })?;
    let stable = lifecycle.export_spec();
    let model = ModelRef::new(
        wanted.model.clone().unwrap_or(stable.model.name),
        wanted.version.clone(),
    );
    let preprocess = match &wanted.preprocess {
        None => stable.preprocess,
        Some(explicit) => explicit.clone(),
    };
    let update = registry.update(&model, preprocess.as_deref())?;
    Ok(match &wanted.description {
        Some(description) => update.description(description.clone()),
        None => update,
    })
}

async fn update(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let wanted: Registered = body(&bytes)?;
    let update = registered_update(lifecycle, &wanted)?;
    let version = lifecycle.update_model(update, wanted.canary_percent)?;
    audit(lifecycle, "update", &before);
    let mut response = changed(lifecycle, version).await;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Percent {
    #[schema(maximum = 100)]
    percent: u8,
}

async fn canary(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let Percent { percent } = body(&bytes)?;
    lifecycle.set_canary(percent)?;
    audit(lifecycle, "canary", &before);
    let candidate = lifecycle.candidate().map(|c| c.0).unwrap_or_default();
    Ok(changed(lifecycle, candidate).await)
}

async fn policy(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let policy: Option<CanaryPolicy> =
        parse(&bytes).map_err(|e| Error::invalid_request(format!("invalid canary policy: {e}")))?;
    lifecycle.set_canary_policy(policy)?;
    audit(lifecycle, "canary_policy", &before);
    Ok(changed(lifecycle, lifecycle.stable_version()).await)
}

async fn evaluate(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let evaluation = lifecycle.evaluate_canary().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no candidate under an automated canary policy to evaluate",
        )
    })?;
    // The evaluation acts on its result (promote or roll back) like the periodic one.
    audit(lifecycle, "canary_evaluate", &before);
    Ok(axum::Json(evaluation).into_response())
}

async fn promote(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let version = lifecycle.promote()?;
    audit(lifecycle, "promote", &before);
    Ok(changed(lifecycle, version).await)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackTo {
    #[serde(default)]
    version: Option<String>,
}

async fn rollback(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let RollbackTo { version } = body(&bytes)?;
    let stable = match version {
        Some(version) => {
            lifecycle.rollback_to(&version)?;
            version
        }
        None => lifecycle.rollback()?,
    };
    audit(lifecycle, "rollback", &before);
    Ok(changed(lifecycle, stable).await)
}

async fn shadow(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let wanted: Registered = body(&bytes)?;
    let percent = wanted
        .percent
        .ok_or_else(|| Error::invalid_request("`percent` is required"))?;
    let update = registered_update(lifecycle, &wanted)?;
    let version = lifecycle.shadow_model(update, percent)?;
    audit(lifecycle, "shadow", &before);
    let mut response = changed(lifecycle, version).await;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

async fn shadow_share(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let Percent { percent } = body(&bytes)?;
    lifecycle.set_shadow(percent)?;
    audit(lifecycle, "shadow_share", &before);
    let shadow = lifecycle.shadow().map(|s| s.0).unwrap_or_default();
    Ok(changed(lifecycle, shadow).await)
}

async fn stop_shadow(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let shadow = lifecycle.shadow().map(|s| s.0).unwrap_or_default();
    lifecycle.stop_shadow()?;
    audit(lifecycle, "stop_shadow", &before);
    Ok(changed(lifecycle, shadow).await)
}

async fn autoscale(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let replicas = lifecycle.replicas().await?;
    Ok(
        axum::Json(json!({ "bounds": lifecycle.autoscale(), "replicas": replicas }))
            .into_response(),
    )
}

async fn set_autoscale(
    _: Admin,
    State(state): Shared,
    Path(name): Path<String>,
    AdminBody(bytes): AdminBody,
) -> Result<Response, ApiError> {
    let lifecycle = lifecycle(&state, &name)?;
    let before = snapshot(lifecycle);
    let bounds: AutoscaleBounds = body(&bytes)?;
    let replicas = lifecycle.set_autoscale(bounds).await?;
    audit(lifecycle, "autoscale", &before);
    Ok(
        axum::Json(json!({ "bounds": lifecycle.autoscale(), "replicas": replicas }))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let Percent { percent } = parse(br#"{"percent": 50.0}"#).unwrap();
        assert_eq!(percent, 50);
        let bounds: AutoscaleBounds =
            parse(br#"{"min_replicas": 0.0, "max_replicas": 3}"#).unwrap();
        assert_eq!(bounds, AutoscaleBounds::new(0, 3).unwrap());
        assert!(parse::<Percent>(br#"{"percent": 50.5}"#).is_err());
        assert!(parse::<Percent>(br#"{"percent": 300.0}"#).is_err());
        assert!(parse::<Percent>(br#"{"percent": "50"}"#).is_err());
    }
}
