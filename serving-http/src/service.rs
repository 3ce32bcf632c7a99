//! [`WebService`]: the REST API around one or more endpoints.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::{Value, json};

use serving_core::{
    Arrival, Drain, DynBatchRuns, DynEndpoint, Endpoint, EndpointSpec, Error, PredictRequest,
    Refused, Result, new_request_id,
};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::Token;
use crate::config::WebServiceConfig;
use crate::error::ApiError;

/// The header carrying a request's id, accepted from the caller or generated. A caller's id
/// of more than 128 bytes is replaced by a generated one; one holding a control character is
/// a 400 naming the header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The header naming the model version that answered; on a request, it asks for that version
/// and bypasses the canary split.
pub const MODEL_VERSION_HEADER: &str = "x-model-version";

// Parsed once: a header name given as `&str` is parsed (and lowercased) on every use.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const MODEL_VERSION: HeaderName = HeaderName::from_static(MODEL_VERSION_HEADER);
const ROUTING_KEY: HeaderName = HeaderName::from_static(ROUTING_KEY_HEADER);
pub(crate) const TOKEN: HeaderName = HeaderName::from_static("cnvrg-api-key");
/// The header whose value makes the canary split sticky: the same key reaches the same version.
pub const ROUTING_KEY_HEADER: &str = "x-routing-key";
/// The environment variable that holds the admin token, when the builder is not given one.
pub const ADMIN_TOKEN_ENV: &str = "SERVING_ADMIN_TOKEN";

/// A web service: each endpoint answers `POST /api/v1/endpoints/{name}` with the original
/// product's wire format, behind its own token.
///
/// Use [`WebService::router`] to mount it in your own axum app, or [`WebService::serve`] to run
/// it standalone.
#[derive(Debug, Clone)]
pub struct WebService {
    pub(crate) state: Arc<ServiceState>,
    config: WebServiceConfig,
}

/// What every handler shares. Route modules (one file per concern) take it as axum state.
#[derive(Debug)]
pub(crate) struct ServiceState {
    pub(crate) endpoints: HashMap<String, Arc<Route>>,
    pub(crate) draining: AtomicBool,
    pub(crate) body_timeout: std::time::Duration,
    /// Authorizes the admin API (`Authorization: Bearer`); never a prediction token.
    pub(crate) admin_token: Token,
    pub(crate) observability: Option<crate::observability::Observability>,
    /// Runs the endpoints' feedback loops, when the builder was given them.
    pub(crate) feedback: Option<serving_core::FeedbackLoops>,
    /// Batch endpoints whose runs are served under `/api/v1/endpoints/{name}/batches`.
    pub(crate) batches: HashMap<String, crate::batches::BatchRoute>,
}

/// One served endpoint and its token.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) endpoint: Arc<DynEndpoint>,
    pub(crate) token: Option<Token>,
}

impl WebService {
    /// Starts building a web service.
    pub fn builder() -> WebServiceBuilder {
        WebServiceBuilder::default()
    }

    /// The token that authorizes calls to `endpoint`, if it requires one.
    pub fn token(&self, endpoint: &str) -> Option<&Token> {
        match self.state.endpoints.get(endpoint) {
            Some(route) => route.token.as_ref(),
            None => self.state.batches.get(endpoint)?.token.as_ref(),
        }
    }

    /// The token that authorizes the admin API (`/api/v1/admin/...`), sent as
    /// `Authorization: Bearer <token>`.
    pub fn admin_token(&self) -> &Token {
        &self.state.admin_token
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &WebServiceConfig {
        &self.config
    }

    /// Every route, to mount inside another axum app or serve as they are: the
    /// [prediction](WebService::predict_router), [operations](WebService::ops_router) and
    /// [admin](WebService::admin_router) routers merged, with JSON answers for unknown routes
    /// and methods ([`WebService::with_fallbacks`]).
    pub fn router(&self) -> Router {
        Self::with_fallbacks(
            self.predict_router()
                .merge(self.ops_router())
                .merge(self.admin_router()),
        )
    }

    /// The prediction routes: `POST /api/v1/endpoints/{name}` and the Open Inference
    /// Protocol's (`/v2/...`, its health and metadata routes included).
    pub fn predict_router(&self) -> Router {
        // Each endpoint gets a literal route holding its `Route`, so that a prediction needs
        // no path parameter and no lookup; the parameter route answers unknown names.
        let mut router = Router::new();
        for (name, route) in &self.state.endpoints {
            let (state, route) = (Arc::clone(&self.state), Arc::clone(route));
            let predict = move |request: axum::extract::Request| async move {
                predict_on(&state, &route, request).await
            };
            router = router.route(&format!("/api/v1/endpoints/{name}"), post(predict));
        }
        self.part(
            router
                .route("/api/v1/endpoints/{name}", post(predict_unknown))
                .merge(crate::batches::routes())
                .merge(crate::oip::routes()),
        )
    }

    /// The operations routes: `GET /healthz`, `GET /readyz`, and those of its
    /// [`Observability`](crate::Observability): `/metrics`, `/dashboard`, the charts and logs
    /// APIs; and `GET /openapi.json`, the document of the whole API
    /// ([`WebService::openapi`]). With [`WebService::admin_router`], what a stream or batch
    /// process serves over
    /// HTTP beside its own transport.
    pub fn ops_router(&self) -> Router {
        self.part(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .merge(crate::observability::routes())
                .merge(crate::feedback::routes())
                .merge(crate::triggers::dashboard_routes())
                .merge(crate::openapi::routes(self)),
        )
    }

    /// The admin API under `/api/v1/admin/`: status, versions, rollouts, canary, shadow,
    /// autoscale, triggers.
    pub fn admin_router(&self) -> Router {
        self.part(
            crate::control::routes()
                .merge(crate::feedback::admin_routes())
                .merge(crate::triggers::routes()),
        )
    }

    /// `router` (parts of this service, merged, or an app's own) with the service's answers
    /// for an unknown route (404) and a method a route does not take (405), both
    /// `{"error": ...}`. Set them once, on the merged router: axum refuses to merge two
    /// routers that both have a fallback.
    pub fn with_fallbacks(router: Router) -> Router {
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
    }

    /// A part of the router, with the service's state and panic handling.
    fn part(&self, routes: Router<Arc<ServiceState>>) -> Router {
        routes
            .layer(CatchPanicLayer::custom(panic_response))
            .with_state(Arc::clone(&self.state))
    }

    /// Binds the configured address and serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.config.addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, reports not
    /// ready, and finishes the requests in flight before returning; connections still open
    /// after the drain timeout ([`WebServiceConfig::drain_timeout_secs`]) are closed.
    ///
    /// Every connection keeps to the configured limits: the header-read and idle timeouts, the
    /// connection cap and the head size (see [`WebServiceConfig`]).
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = Arc::clone(&self.state);
        let router = self.router();
        tracing::info!(addr = %listener.local_addr()?, "web service listening");
        // The core's drain sequence around hyper's bounded connection loop: it stops accepting
        // and finishes the requests in flight (until the drain deadline) once the drain
        // begins, then the sinks close.
        let drain = Drain::new();
        let (stopping, draining) = (drain.clone(), Arc::clone(&state));
        let limits = crate::server::Limits::of(&self.config);
        let served = crate::server::serve(listener, router, limits, async move {
            stopping.stopping().await;
            draining.draining.store(true, Ordering::Release);
        });
        drain
            .run(shutdown, served, state.observability.as_ref())
            .await;
        Ok(())
    }
}

/// Builds a [`WebService`].
#[derive(Debug, Default)]
pub struct WebServiceBuilder {
    config: WebServiceConfig,
    endpoints: Vec<(Arc<DynEndpoint>, Option<Token>)>,
    admin_token: Option<Token>,
    pub(crate) observability: Option<crate::observability::Observability>,
    pub(crate) feedback: Option<serving_core::FeedbackLoops>,
    batches: Vec<(String, Arc<DynBatchRuns>, Option<Token>, bool)>,
}

impl WebServiceBuilder {
    /// Serves the batch runs of the batch endpoint `spec` names from `runs` (a
    /// `serving_batch::BatchService`) under `/api/v1/endpoints/{name}/batches` (see the
    /// routes in the [crate docs](crate)): submit, list, get, cancel, compare. Its token is
    /// found as a web endpoint's is, from `auth` in `spec`; see [`WebService::token`].
    pub fn batch_endpoint(mut self, spec: &EndpointSpec, runs: Arc<DynBatchRuns>) -> Self {
        let token = spec
            .auth
            .token_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|secret| !secret.is_empty())
            .map(Token::new);
        self.batches
            .push((spec.name.clone(), runs, token, spec.auth.required));
        self
    }

    /// As [`WebServiceBuilder::batch_endpoint`], behind the given token.
    pub fn batch_endpoint_with_token(
        mut self,
        name: impl Into<String>,
        runs: Arc<DynBatchRuns>,
        token: Token,
    ) -> Self {
        self.batches.push((name.into(), runs, Some(token), true));
        self
    }

    /// Serves `endpoint` (pass an `Arc` to keep a handle on it). Its token comes from the
    /// environment variable its spec names (`auth.token_env`), or is generated; see
    /// [`WebService::token`].
    pub fn endpoint(mut self, endpoint: impl Endpoint) -> Self {
        self.endpoints.push((Arc::new(endpoint), None));
        self
    }

    /// Serves `endpoint` behind the given token.
    pub fn endpoint_with_token(mut self, endpoint: impl Endpoint, token: Token) -> Self {
        self.endpoints.push((Arc::new(endpoint), Some(token)));
        self
    }

    /// The admin API's token; read from `SERVING_ADMIN_TOKEN`, or generated, when not given.
    /// It must differ from every prediction token.
    pub fn admin_token(mut self, token: Token) -> Self {
        self.admin_token = Some(token);
        self
    }

    /// Server-wide settings.
    pub fn config(mut self, config: WebServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the service; two endpoints with one name are an error.
    pub fn build(self) -> Result<WebService> {
        let mut endpoints = HashMap::new();
        for (endpoint, token) in self.endpoints {
            let name = endpoint.name().to_owned();
            let auth = &endpoint.spec().auth;
            let token = match (auth.required, token) {
                (false, _) => None,
                (true, Some(token)) => Some(token),
                (true, None) => Some(
                    auth.token_env
                        .as_deref()
                        .and_then(|var| std::env::var(var).ok())
                        .filter(|secret| !secret.is_empty())
                        .map_or_else(Token::generate, Token::new),
                ),
            };
            if endpoints
                .insert(name.clone(), Arc::new(Route { endpoint, token }))
                .is_some()
            {
                return Err(Error::InvalidSpec {
                    reason: format!("two endpoints are named `{name}`"),
                });
            }
        }
        let mut batches = HashMap::new();
        for (name, runs, token, required) in self.batches {
            let token = required.then(|| token.unwrap_or_else(Token::generate));
            let route = crate::batches::BatchRoute { runs, token };
            if batches.insert(name.clone(), route).is_some() {
                return Err(Error::InvalidSpec {
                    reason: format!("two batch endpoints are named `{name}`"),
                });
            }
        }
        let admin_token = self.admin_token.unwrap_or_else(|| {
            std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .filter(|secret| !secret.is_empty())
                .map_or_else(Token::generate, Token::new)
        });
        if endpoints
            .values()
            .filter_map(|route| route.token.as_ref())
            .chain(batches.values().filter_map(|route| route.token.as_ref()))
            .any(|token| token.matches(admin_token.expose().as_bytes()))
        {
            return Err(Error::InvalidSpec {
                reason: "the admin token must differ from every prediction token".into(),
            });
        }
        crate::feedback::start_spec_loops(self.feedback.as_ref(), &endpoints)?;
        Ok(WebService {
            state: Arc::new(ServiceState {
                endpoints,
                draining: AtomicBool::new(false),
                body_timeout: self.config.body_timeout(),
                admin_token,
                observability: self.observability,
                feedback: self.feedback,
                batches,
            }),
            config: self.config,
        })
    }
}

/// `POST /api/v1/endpoints/{name}` for a name no endpoint has: each endpoint has a literal
/// route of its own, which the router prefers to this one.
async fn predict_unknown(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let request_id = caller_request_id(&headers)
        .ok()
        .flatten()
        .unwrap_or_else(new_request_id);
    let error = Error::EndpointNotFound { endpoint: name };
    with_request_id(
        ApiError::from_core(&error, &request_id).into_response(),
        &request_id,
    )
}

/// Serves one prediction request on `route`.
async fn predict_on(
    state: &ServiceState,
    route: &Route,
    request: axum::extract::Request,
) -> Response {
    let arrival = Arrival::now();
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let request_id = match caller_request_id(headers) {
        Ok(id) => id.unwrap_or_else(new_request_id),
        Err(error) => {
            let request_id = new_request_id();
            let response = refuse(route, error, &request_id, arrival);
            return with_request_id(response.into_response(), &request_id);
        }
    };
    match serve_prediction(state, route, headers, body, &request_id, arrival).await {
        Ok(response) => response,
        Err(error) => with_request_id(error.into_response(), &request_id),
    }
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Whether a request id chosen by the caller can be used: not empty, at most 128 bytes.
pub(crate) fn usable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128
}

/// The answer to a request refused before the model, recorded on its endpoint: its text
/// cropped to the endpoint's `max_value_chars` as the endpoint crops every error, so that
/// no answer or record echoes a huge input whole.
pub(crate) fn refuse(route: &Route, error: Error, request_id: &str, arrival: Arrival) -> ApiError {
    let max_chars = route.endpoint.spec().logging.max_value_chars;
    let error = serving_core::crop_error(error, max_chars);
    let response = ApiError::from_core(&error, request_id);
    route
        .endpoint
        .refused(Refused::new(request_id, error, arrival));
    response
}

/// Refuses a caller-chosen request id that holds a control character (ESC, CR, LF, tab, …):
/// ids end up in log lines, CSV exports and the dashboard, where such characters forge lines
/// or drive terminals. `source` names where the id came from (`x-request-id`, `id`). Every
/// transport that takes ids from callers checks them here.
pub(crate) fn check_request_id(id: &str, source: &str) -> Result<(), Error> {
    if id.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!(
            "`{source}` must not hold control characters"
        )));
    }
    Ok(())
}

/// The request id the caller sent in `x-request-id`, when it is usable; an error when it
/// holds control characters.
pub(crate) fn caller_request_id(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(id) = headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    check_request_id(id, REQUEST_ID_HEADER)?;
    Ok(usable_request_id(id).then(|| id.to_owned()))
}

async fn serve_prediction(
    state: &ServiceState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    arrival: Arrival,
) -> Result<Response, ApiError> {
    let request = match admit(state, route, headers, body, request_id, arrival).await {
        Ok(request) => request,
        Err(error) => return Err(refuse(route, error, request_id, arrival)),
    };
    match route.endpoint.predict(request).await {
        Ok(prediction) => {
            let mut response = prediction_response(&prediction.output);
            let headers = response.headers_mut();
            // The id is ours now: hand its bytes to the header without copying them.
            if let Ok(value) =
                HeaderValue::from_maybe_shared(bytes::Bytes::from(prediction.request_id))
            {
                headers.insert(REQUEST_ID, value);
            }
            if let Ok(value) = HeaderValue::from_str(&prediction.model_version) {
                headers.insert(MODEL_VERSION, value);
            }
            Ok(response)
        }
        Err(error) => Err(ApiError::from_core(&error, request_id)),
    }
}

/// `{"prediction": output}`, written straight into the body (no intermediate JSON map).
fn prediction_response(output: &Value) -> Response {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(b"{\"prediction\":");
    serde_json::to_writer(&mut body, output).expect("a JSON value always serializes");
    body.push(b'}');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Checks the prediction token, when the endpoint requires one.
pub(crate) fn authorize(route: &Route, given: Option<&HeaderValue>) -> Result<(), Error> {
    if let Some(token) = &route.token {
        let given = given.map(HeaderValue::as_bytes).unwrap_or_default();
        if !token.matches(given) {
            return Err(Error::Unauthorized);
        }
    }
    Ok(())
}

/// Everything between a request's arrival and the model: auth, content type, body, decoding.
async fn admit(
    state: &ServiceState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    arrival: Arrival,
) -> Result<PredictRequest, Error> {
    authorize(route, headers.get(&TOKEN))?;
    check_content_type(headers)?;
    let spec = route.endpoint.spec();
    let limit = spec.server.workers.max_body_bytes;
    let body = read_body(body, limit, state.body_timeout, arrival).await?;
    let input = parse_input(&body)?;
    let (input, files) = serving_core::wire::decode_files(input, spec.files)?.into_parts();
    let mut request = routed_request(input, headers, arrival).with_request_id(request_id);
    if !files.is_empty() {
        request = request.with_resource(files);
    }
    Ok(request)
}

/// A request for `input` that arrived at `arrival`, with the routing key and pinned version its
/// headers carry.
pub(crate) fn routed_request(
    input: serving_core::Input,
    headers: &HeaderMap,
    arrival: Arrival,
) -> PredictRequest {
    let header = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let mut request = PredictRequest::new(input).with_arrival(arrival);
    if let Some(key) = header(&ROUTING_KEY) {
        request = request.with_routing_key(key);
    }
    if let Some(version) = header(&MODEL_VERSION) {
        request = request.with_version(version);
    }
    request
}

pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = content_type
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let json_suffix = essence
        .len()
        .checked_sub(5)
        .and_then(|at| essence.get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"));
    if essence.eq_ignore_ascii_case("application/json") || json_suffix {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType {
            content_type: essence.to_ascii_lowercase(),
        })
    }
}

/// The body, at most `limit` bytes, read within `timeout` of the request's arrival.
pub(crate) async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    arrival: Arrival,
) -> Result<bytes::Bytes, Error> {
    // A body announced (Content-Length) larger than the limit is refused before it is read.
    if axum::body::HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(Error::PayloadTooLarge { limit });
    }
    let collect = Limited::new(body, limit).collect();
    let deadline = tokio::time::Instant::from_std(arrival.started) + timeout;
    match tokio::time::timeout_at(deadline, collect).await {
        Err(_) => Err(Error::BodyTimeout { after: timeout }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::PayloadTooLarge { limit })
        }
        Ok(Err(error)) => Err(Error::invalid_request(format!(
            "could not read the request body: {error}"
        ))),
    }
}

/// The body's input: `input_params` when the body is wrapped in it, else the body itself
/// ([`serving_core::wire::parse_body`], shared by every transport).
pub(crate) fn parse_input(body: &[u8]) -> Result<Value, Error> {
    serving_core::wire::parse_body(body)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<ServiceState>>) -> Response {
    let not_ready: Vec<&str> = state
        .endpoints
        .values()
        .filter(|route| !route.endpoint.is_ready())
        .map(|route| route.endpoint.name())
        .collect();
    if state.draining.load(Ordering::Acquire) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !not_ready.is_empty() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", not_ready.join(", ")),
        )
        .into_response();
    }
    axum::Json(json!({ "status": "ready" })).into_response()
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
    .into_response()
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "request handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_header_names_are_the_documented_ones() {
        assert_eq!(TOKEN, HeaderName::try_from(crate::TOKEN_HEADER).unwrap());
        assert_eq!(REQUEST_ID.as_str(), REQUEST_ID_HEADER);
    }
}
