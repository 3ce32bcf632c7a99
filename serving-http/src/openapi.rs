//! The OpenAPI 3.1 document of the whole HTTP API, generated from the Rust types with `utoipa`
//! and served at `GET /openapi.json`.
//!
//! The paths live here, on small marker functions, rather than on the handlers: the handlers
//! stay plain axum, and one file says what the API promises. Request and response types carry
//! `#[derive(ToSchema)]` where they are defined (here for the bodies the handlers build with
//! `json!`). A unit test checks that every route the router serves is in the document.
//!
//! `/openapi.json` needs no token: it describes the API and holds no secret. It names the
//! served endpoints (as `/metrics` and the 401-versus-404 answers already do), so a client
//! generator or fuzzer can address them.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use serving_core::{
    AutoscaleBounds, Comparison, LifecycleEvent, LifecycleStatus, ModelVersion, RequestStats,
    Severity, TensorSpec, TriggerStatus,
};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::service::{ServiceState, WebService};

/// The security scheme of a prediction token in `Cnvrg-Api-Key`.
const PREDICTION_TOKEN: &str = "predictionToken";
/// The security scheme of a prediction token as `Authorization: Bearer` (OIP routes only).
const PREDICTION_BEARER: &str = "predictionBearer";
/// The security scheme of the admin token.
const ADMIN_TOKEN: &str = "adminToken";

impl WebService {
    /// The OpenAPI 3.1 document of this service's HTTP API, as served at `GET /openapi.json`:
    /// every route, its parameters, bodies, status codes, headers and security. The `name`
    /// path parameter lists the endpoints this service serves; `version` gives the versions
    /// they serve now, and the admin bodies' `version` those registered, as examples.
    ///
    /// It is JSON rather than `utoipa`'s types so that this crate's API does not depend on
    /// `utoipa`'s version; merge it into your own document as JSON.
    pub fn openapi(&self) -> Value {
        let mut names: Vec<&str> = self.state.endpoints.keys().map(String::as_str).collect();
        names.sort_unstable();
        let open = self
            .state
            .endpoints
            .values()
            .any(|route| route.token.is_none());
        let mut versions: Vec<String> = self
            .state
            .endpoints
            .values()
            .flat_map(|route| match route.endpoint.lifecycle() {
                Some(lifecycle) => lifecycle.routable_versions(),
                None => vec![route.endpoint.spec().model.version.clone()],
            })
            .collect();
        versions.sort_unstable();
        versions.dedup();
        // The versions an update or a shadow can deploy: those registered for the model.
        let mut registered = Vec::new();
        for lifecycle in self
            .state
            .endpoints
            .values()
            .filter_map(|route| route.endpoint.lifecycle())
        {
            if let Some(registry) = lifecycle.registry() {
                registered.extend(registry.versions(&lifecycle.export_spec().model.name));
            }
        }
        registered.sort_unstable();
        registered.dedup();
        let mut api = ApiDoc::openapi();
        api.merge(<crate::feedback::FeedbackDoc as OpenApi>::openapi());
        let mut document = serde_json::to_value(api).expect("an OpenAPI document serializes");
        bound_integers(&mut document);
        for body in ["Registered", "ShadowBody"] {
            let version = &mut document["components"]["schemas"][body]["properties"]["version"];
            if version.is_object() && !registered.is_empty() {
                version["examples"] = serde_json::json!(registered);
            }
        }
        for item in document["paths"]
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut())
        {
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut);
                for parameter in parameters.into_iter().flatten() {
                    if parameter["in"] == "path" && parameter["name"] == "name" && !names.is_empty()
                    {
                        parameter["schema"] = serde_json::json!({"type": "string", "enum": names});
                    }
                    if parameter["in"] == "path" && parameter["name"] == "version" {
                        // Examples, not an enum: versions come and go while the service runs.
                        parameter["schema"] =
                            serde_json::json!({"type": "string", "examples": versions});
                    }
                }
                let security = operation.get_mut("security").and_then(Value::as_array_mut);
                if let Some(security) = security.filter(|_| open) {
                    if security.iter().any(|s| s.get(PREDICTION_TOKEN).is_some()) {
                        // Some endpoint takes calls without a token.
                        security.push(serde_json::json!({}));
                    }
                }
            }
        }
        document
    }
}

/// Gives every unsigned and small signed integer the range of its Rust type, which `format`
/// alone does not state (a value out of it is refused by the server), and spells its format
/// as the OpenAPI format registry does (`uint32`; utoipa writes `u-int32`).
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(schema) => {
            let format = schema.get("format").and_then(Value::as_str);
            let range: Option<(&str, i64, u64)> = match format {
                Some("u-int8" | "uint8") => Some(("uint8", 0, u8::MAX.into())),
                Some("u-int16" | "uint16") => Some(("uint16", 0, u16::MAX.into())),
                Some("u-int32" | "uint32") => Some(("uint32", 0, u32::MAX.into())),
                Some("u-int64" | "uint64") => Some(("uint64", 0, u64::MAX)),
                Some("int8") => Some(("int8", i8::MIN.into(), i8::MAX.unsigned_abs().into())),
                Some("int16") => Some(("int16", i16::MIN.into(), i16::MAX.unsigned_abs().into())),
                _ => None,
            };
            if let Some((format, minimum, maximum)) = range {
                schema.insert("format".into(), format.into());
                schema.entry("minimum").or_insert(minimum.into());
                schema.entry("maximum").or_insert(maximum.into());
            }
            schema.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// `GET /openapi.json`, the document rendered once.
pub(crate) fn routes(service: &WebService) -> Router<Arc<ServiceState>> {
    let body = Bytes::from(
        serde_json::to_vec(&service.openapi()).expect("an OpenAPI document always serializes"),
    );
    Router::new().route(
        "/openapi.json",
        get(move || async move {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "serving",
        description = "The web service of `serving`: predictions in the original product's wire \
            format and in the Open Inference Protocol (KServe v2), health and readiness, \
            Prometheus metrics, the dashboard and its charts and logs APIs, and the admin API \
            of each endpoint's model lifecycle.\n\nEvery error is `{\"error\": \"...\"}`. \
            Internal failures (500) are opaque and name the request id under which the cause \
            is logged.",
        license(name = "Apache-2.0"),
    ),
    paths(
        paths::predict,
        paths::healthz,
        paths::readyz,
        paths::openapi_json,
        paths::metrics,
        paths::charts,
        paths::logs,
        paths::logs_csv,
        paths::dashboard,
        paths::dashboard_slash,
        paths::dashboard_script,
        paths::dashboard_style,
        paths::oip_server,
        paths::oip_live,
        paths::oip_ready,
        paths::oip_model,
        paths::oip_version,
        paths::oip_model_ready,
        paths::oip_version_ready,
        paths::oip_infer,
        paths::oip_version_infer,
        paths::admin_list,
        paths::admin_endpoint,
        paths::admin_status,
        paths::admin_versions,
        paths::admin_version,
        paths::admin_events,
        paths::admin_spec,
        paths::admin_update,
        paths::admin_canary,
        paths::admin_policy,
        paths::admin_evaluate,
        paths::admin_promote,
        paths::admin_rollback,
        paths::admin_shadow,
        paths::admin_stop_shadow,
        paths::admin_shadow_share,
        paths::admin_autoscale,
        paths::admin_set_autoscale,
        paths::admin_add_trigger,
        paths::admin_triggers,
        paths::admin_remove_trigger,
        paths::triggers,
        paths::batch_submit,
        paths::batch_list,
        paths::batch_compare,
        paths::batch_get,
        paths::batch_cancel,
    ),
    components(schemas(ErrorBody, PredictionBody, PredictionResponse, TensorData, Timestamp)),
    modifiers(&Security),
    tags(
        (name = "predict", description = "Predictions in the original product's wire format."),
        (name = "oip", description = "The Open Inference Protocol (KServe v2) REST API."),
        (name = "ops", description = "Health, readiness, metrics and this document."),
        (name = "observability", description = "The dashboard and its charts and logs APIs."),
        (name = "admin", description = "Each endpoint's model lifecycle, behind the admin token."),
        (name = "batch", description = "A batch endpoint's runs, behind its prediction token."),
    )
)]
struct ApiDoc;

/// Registers the security schemes the routes name.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            PREDICTION_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::TOKEN_HEADER,
                "The endpoint's prediction token (generated, or read from the environment \
                 variable its spec names), as the original product's SDKs send it.",
            ))),
        );
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "The endpoint's prediction token as `Authorization: Bearer <token>`, as OIP \
             clients send it; `Cnvrg-Api-Key` wins when both are sent."
                .into(),
        );
        components.add_security_scheme(PREDICTION_BEARER, SecurityScheme::Http(bearer));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some(
            "The admin token (`WebService::admin_token`, or `SERVING_ADMIN_TOKEN`). A missing \
             or wrong token is 401 with `WWW-Authenticate`; a prediction token is 403."
                .into(),
        );
        components.add_security_scheme(ADMIN_TOKEN, SecurityScheme::Http(admin));
    }
}

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody {
    /// What went wrong; for a 500, the request id under which the cause is logged.
    error: String,
}

/// A prediction request: `{"input_params": X}`, or any other JSON value, which is then the
/// input itself (the original product's clients send both shapes).
pub(crate) struct PredictionBody;

impl PartialSchema for PredictionBody {
    fn schema() -> RefOr<Schema> {
        let wrapped = ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some("wrapped"))
            .property(
                "input_params",
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .description(Some(
                        "The input: for a predictor of k arguments, an array of k values (or one \
                     value when k is 1); Base64 text (or an array of it) when the endpoint takes \
                     files.",
                    )),
            )
            .required("input_params")
            .build();
        let bare = ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .title(Some("bare"))
            .description(Some("Any other JSON value: the input itself."))
            .build();
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(wrapped)
            .item(bare)
            .description(Some(
                "`{\"input_params\": X}`, or any other JSON value, which is then the input \
                 itself.",
            ))
            .into()
    }
}

impl ToSchema for PredictionBody {}

/// A tensor's elements: a scalar, or arrays of them nested to any depth (flat in row-major
/// order, or nested as the shape).
pub(crate) struct TensorData;

impl PartialSchema for TensorData {
    fn schema() -> RefOr<Schema> {
        let scalar = ObjectBuilder::new().schema_type(SchemaType::from_iter([
            Type::Boolean,
            Type::Number,
            Type::String,
        ]));
        let nested = utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name("TensorData"));
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(scalar)
            .item(nested)
            .description(Some(
                "Elements of the tensor's datatype: booleans for BOOL, integers in range for \
                 (U)INT*, numbers for FP*, strings for BYTES.",
            ))
            .into()
    }
}

impl ToSchema for TensorData {}

/// A time in a query: seconds since the epoch, or RFC 3339; empty is absent.
pub(crate) struct Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0))
                    // 9999-12-31T23:59:59Z.
                    .maximum(Some(253_402_300_799_u64 as usize)),
            )
            .item(ObjectBuilder::new().schema_type(Type::String).format(Some(
                utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime),
            )))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(0)),
            )
            .description(Some(
                "Seconds since the epoch or RFC 3339, from 1970 to 9999; empty is absent.",
            ))
            .into()
    }
}

impl ToSchema for Timestamp {}

/// The body of `POST .../shadow`: a registered version and the share of traffic to mirror.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShadowBody {
    /// The registered version.
    version: String,
    /// Its model; the stable version's when absent.
    model: Option<String>,
    /// What changed.
    description: Option<String>,
    /// The preprocess to run before it: the stable version's when absent, none when `null`.
    preprocess: Option<String>,
    /// Ignored here.
    #[schema(maximum = 100)]
    canary_percent: Option<u8>,
    /// The share of traffic to mirror, in percent.
    #[schema(maximum = 100)]
    percent: u8,
}

/// A prediction: `{"prediction": ...}`, whatever JSON the model returned.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PredictionResponse {
    /// The model's answer.
    prediction: Value,
}

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusBody {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(pattern = "^(ok|ready)$")]
    status: String,
}

/// One page of the prediction log.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsPage {
    /// The endpoint.
    endpoint: String,
    /// How many predictions match in all, before `offset` and `size`; a lower bound when
    /// `total_exact` is false.
    total: u64,
    /// Whether `total` is exact: the query filters by time alone, so the rest of the log is
    /// counted from its segments' names without reading them.
    total_exact: bool,
    /// The page's offset.
    offset: u64,
    /// The page's largest size.
    size: u64,
    /// The predictions of this page, in the query's order.
    predictions: Vec<crate::observability::LogEntry>,
}

/// `$metadata_server_response`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerMetadata {
    /// `serving`.
    name: String,
    /// The server's version.
    version: String,
    /// Supported protocol extensions (none).
    extensions: Vec<String>,
}

/// `{"live": true}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Live {
    /// Always true while the process answers.
    live: bool,
}

/// `{"ready": bool}`: every endpoint ready and the server not shutting down.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ready {
    /// Whether the server takes inference requests.
    ready: bool,
}

/// `$ready_model_response`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelReady {
    /// The model (endpoint) name.
    name: String,
    /// Whether it takes inference requests.
    ready: bool,
}

/// `$metadata_model_response`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelMetadata {
    /// The model (endpoint) name.
    name: String,
    /// The versions that can be addressed.
    versions: Vec<String>,
    /// The model's framework, `serving` unless its signature names one.
    platform: String,
    /// The declared inputs (empty without a signature).
    inputs: Vec<TensorSpec>,
    /// The declared outputs (empty without a signature).
    outputs: Vec<TensorSpec>,
}

/// `$inference_response`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferenceResponse {
    /// The model (endpoint) name.
    model_name: String,
    /// The version that answered.
    model_version: String,
    /// The request's `id`, else its request id.
    id: String,
    /// The output tensors.
    outputs: Vec<ResponseOutput>,
}

/// `$response_output`: a tensor, its elements flattened in row-major order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseOutput {
    /// The output's name.
    name: String,
    /// Its shape (a scalar is `[1]`).
    shape: Vec<u64>,
    /// Its element type.
    #[schema(
        pattern = "^(BOOL|UINT8|UINT16|UINT32|UINT64|INT8|INT16|INT32|INT64|FP16|FP32|FP64|BYTES)$"
    )]
    datatype: String,
    /// Its elements.
    data: Vec<Value>,
}

/// An endpoint in the admin list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointSummary {
    /// Its name.
    name: String,
    /// Whether it takes requests.
    ready: bool,
    /// Its stable version, when it has a lifecycle.
    stable: Option<String>,
    /// Its candidate and its share, during a rollout.
    candidate: Option<CandidateShare>,
}

/// A candidate version and its share of traffic.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CandidateShare {
    /// The version.
    version: String,
    /// Its share, in percent.
    percent: u8,
}

/// `{"id": ...}`: the id of a batch run just submitted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchId {
    /// The run's id.
    id: String,
}

/// `{"runs": [...]}`: a batch endpoint's runs, newest first, each with its `progress`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchList {
    /// The runs.
    runs: Vec<serving_core::BatchRun>,
}

/// `{"endpoints": [...]}`, by name.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointList {
    /// The served endpoints.
    endpoints: Vec<EndpointSummary>,
}

/// A JSON object whose fields the Rust docs of its type describe.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // A schema only.
pub(crate) struct Object {}

/// What a change answers: the version concerned and the status after it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Changed {
    /// The version the change concerns.
    version: String,
    /// The lifecycle's status after it.
    status: LifecycleStatus,
}

/// `{"versions": [...]}`: the version history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Versions {
    /// Oldest first.
    versions: Vec<ModelVersion>,
}

/// One version with its recent request stats.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionDetail {
    /// The version.
    #[serde(flatten)]
    version: ModelVersion,
    /// Its recent requests.
    recent: RequestStats,
}

/// `{"events": [...]}`: lifecycle events, decisions of the automated canary included.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Events {
    /// Oldest first.
    events: Vec<LifecycleEvent>,
}

/// Replica bounds and the replicas applied.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Autoscale {
    /// The bounds.
    bounds: AutoscaleBounds,
    /// Replicas applied by the autoscaler.
    replicas: u32,
}

/// A trigger to add: a rule and an action.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // A schema only: the handler reads a `TriggerSpec`.
pub(crate) struct TriggerBody {
    /// The trigger's name.
    #[schema(min_length = 1)]
    title: String,
    /// `info` by default.
    #[serde(default)]
    severity: Severity,
    /// A key logged with `log_metric` (`petal_length_cm` or `custom:petal_length_cm`), or a
    /// built-in measurement: `error_rate`, `p95_latency_ms`, `mean_latency_ms`,
    /// `requests_per_minute`.
    #[schema(min_length = 1)]
    metric: String,
    /// How the metric is compared with the threshold.
    comparison: Comparison,
    /// The value compared against.
    threshold: f64,
    /// How often the condition is polled, in seconds (at most a year).
    #[schema(minimum = 1, maximum = 31_536_000)]
    every_secs: u64,
    /// Samples (or, for a built-in measurement, requests) one poll needs; 1 by default.
    #[serde(default)]
    #[schema(minimum = 1)]
    min_events: u32,
    /// Watch only this model version.
    #[serde(default)]
    #[schema(min_length = 1)]
    model_version: Option<String>,
    /// Re-arm this long after firing (at most a year), instead of when the condition clears.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_536_000)]
    cooldown_secs: Option<u64>,
    /// What it does when it fires.
    action: TriggerActionBody,
}

/// A trigger's action.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)] // A schema only.
pub(crate) enum TriggerActionBody {
    /// POSTs the alert as JSON; signed with `X-Serving-Signature: sha256=<hex HMAC-SHA256 of
    /// the body>` when `secret` is set.
    Webhook {
        /// An `http://` or `https://` URL.
        url: String,
        /// The HMAC key.
        #[serde(default)]
        secret: Option<String>,
    },
    /// Emails the alert through the server's SMTP server (`$SERVING_SMTP_URL`).
    Email {
        /// The recipients.
        #[schema(min_items = 1)]
        to: Vec<String>,
    },
}

/// `{"id": ...}`: the trigger added.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerAdded {
    /// Its id, for `DELETE …/triggers/{id}`.
    id: String,
}

/// `{"triggers": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerList {
    /// In the order added.
    triggers: Vec<TriggerStatus>,
}

/// `{"id": ..., "removed": true}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerRemoved {
    /// The trigger removed.
    id: String,
    /// Always true.
    removed: bool,
}

/// The marker functions that carry the paths; nothing calls them.
#[allow(dead_code)]
mod paths {
    use serving_core::{AutoscaleBounds, CanaryEvaluation, CanaryPolicy, Charts, LifecycleStatus};

    use super::{
        Autoscale, Changed, EndpointList, ErrorBody, Events, InferenceResponse, Live, LogsPage,
        ModelMetadata, ModelReady, PredictionBody, PredictionResponse, Ready, ServerMetadata,
        ShadowBody, StatusBody, Timestamp, TriggerAdded, TriggerBody, TriggerList, TriggerRemoved,
        VersionDetail, Versions,
    };
    use crate::control::{Percent, Registered, RollbackTo};
    use crate::oip::InferenceRequest;

    /// Predicts one input in the original product's wire format.
    ///
    /// The token goes in `Cnvrg-Api-Key` and is checked before the body is read.
    #[utoipa::path(
        post,
        path = "/api/v1/endpoints/{name}",
        tag = "predict",
        operation_id = "predict",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("x-request-id" = Option<String>, Header, description = "The request's id: 1 to 128 bytes, else one is generated; a control character in it is a 400.", pattern = "^[^\\u0000-\\u001f\\u007f]*$"),
            ("x-routing-key" = Option<String>, Header, description = "Makes the canary split sticky: the same key reaches the same version."),
            ("x-model-version" = Option<String>, Header, description = "Asks for this version (stable, candidate or shadow), bypassing the split."),
        ),
        request_body(content = PredictionBody, content_type = "application/json"),
        responses(
            (status = 200, description = "The prediction.", body = PredictionResponse, headers(
                ("x-request-id" = String, description = "The request's id."),
                ("x-model-version" = String, description = "The version that answered."),
            )),
            (status = 400, description = "Malformed input: empty body, invalid JSON, or undecodable Base64 files.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the endpoint's limit.", body = ErrorBody),
            (status = 415, description = "The body is not JSON.", body = ErrorBody),
            (status = 422, description = "The predictor rejected the input (argument count or type).", body = ErrorBody),
            (status = 500, description = "The predictor failed or panicked; the cause is logged under the request id.", body = ErrorBody),
            (status = 503, description = "Not ready, or overloaded.", body = ErrorBody, headers(
                ("retry-after" = String, description = "Seconds to wait."),
            )),
            (status = 504, description = "The predictor did not answer within the endpoint's timeout.", body = ErrorBody),
        ),
        security(("predictionToken" = []))
    )]
    fn predict() {}

    /// Liveness: the process answers.
    #[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
        responses((status = 200, description = "Alive.", body = StatusBody)))]
    fn healthz() {}

    /// Readiness: every endpoint ready and the server not shutting down.
    #[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz",
        responses(
            (status = 200, description = "Ready.", body = StatusBody),
            (status = 503, description = "Shutting down, or naming the endpoints not ready.", body = ErrorBody),
        ))]
    fn readyz() {}

    /// This document.
    #[utoipa::path(get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
        responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object)))]
    fn openapi_json() {}

    /// Prometheus metrics (no token: meant for a scraper inside the cluster).
    #[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
        responses(
            (status = 200, description = "The Prometheus text exposition.", body = String,
                content_type = "text/plain"),
            (status = 404, description = "Observability is not enabled on this service.", body = ErrorBody),
        ))]
    fn metrics() {}

    /// Per-minute request, latency and custom-metric charts.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/charts", tag = "observability",
        operation_id = "charts",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("minutes" = Option<u64>, Query, description = "The window, in minutes (60 by default).", minimum = 1),
        ),
        responses(
            (status = 200, description = "The charts.", body = Charts),
            (status = 400, description = "An unknown or out-of-range parameter.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or observability is not enabled.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn charts() {}

    /// Recorded predictions, as JSON.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/logs", tag = "observability",
        operation_id = "logs",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("start_time" = Option<Timestamp>, Query, description = "From (inclusive): RFC 3339 or seconds since the epoch."),
            ("end_time" = Option<Timestamp>, Query, description = "Until (exclusive): RFC 3339 or seconds since the epoch."),
            ("model" = Option<String>, Query, description = "Only this model."),
            ("model_version" = Option<String>, Query, description = "Only this model version."),
            ("status" = Option<String>, Query, description = "`ok`, `error`, or an HTTP status code.", pattern = "^(|ok|error|[1-5][0-9][0-9])$"),
            ("offset" = Option<u64>, Query, description = "Predictions to skip (0 by default)."),
            ("size" = Option<u64>, Query, description = "The page's size (100 by default).", maximum = 1000),
            ("order" = Option<String>, Query, description = "`asc` (oldest first, the default) or `desc`.", pattern = "^(|asc|desc|oldest_first|newest_first)$"),
            ("minutes" = Option<u64>, Query, description = "Shorthand for a `start_time` that many minutes ago."),
        ),
        responses(
            (status = 200, description = "One page of the prediction log.", body = LogsPage),
            (status = 400, description = "An unknown or out-of-range parameter.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no prediction log.", body = ErrorBody),
            (status = 500, description = "Reading the prediction log failed; the cause is logged.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn logs() {}

    /// Recorded predictions, as CSV (the columns of `serving_core::prediction_log::CSV_COLUMNS`).
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/logs.csv", tag = "observability",
        operation_id = "logs_csv",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("start_time" = Option<Timestamp>, Query, description = "From (inclusive): RFC 3339 or seconds since the epoch."),
            ("end_time" = Option<Timestamp>, Query, description = "Until (exclusive): RFC 3339 or seconds since the epoch."),
            ("model" = Option<String>, Query, description = "Only this model."),
            ("model_version" = Option<String>, Query, description = "Only this model version."),
            ("status" = Option<String>, Query, description = "`ok`, `error`, or an HTTP status code.", pattern = "^(|ok|error|[1-5][0-9][0-9])$"),
            ("offset" = Option<u64>, Query, description = "Predictions to skip (0 by default)."),
            ("size" = Option<u64>, Query, description = "The page's size (100 by default).", maximum = 1000000),
            ("order" = Option<String>, Query, description = "`asc` (oldest first, the default) or `desc`.", pattern = "^(|asc|desc|oldest_first|newest_first)$"),
            ("minutes" = Option<u64>, Query, description = "Shorthand for a `start_time` that many minutes ago."),
        ),
        responses(
            (status = 200, description = "The predictions as CSV, with a header row.", body = String,
                content_type = "text/csv", headers(
                ("content-disposition" = String, description = "`attachment; filename=\"<name>-predictions.csv\"`."),
            )),
            (status = 400, description = "An unknown or out-of-range parameter.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no prediction log.", body = ErrorBody),
            (status = 500, description = "Reading the prediction log failed; the cause is logged.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn logs_csv() {}

    /// The dashboard page (no token: it holds no data, it asks for the endpoint and token).
    #[utoipa::path(get, path = "/dashboard", tag = "observability", operation_id = "dashboard",
        responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
    fn dashboard() {}

    /// The dashboard page.
    #[utoipa::path(get, path = "/dashboard/", tag = "observability", operation_id = "dashboard_slash",
        responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
    fn dashboard_slash() {}

    /// The dashboard's script.
    #[utoipa::path(get, path = "/dashboard/app.js", tag = "observability", operation_id = "dashboard_script",
        responses((status = 200, description = "The script.", body = String, content_type = "text/javascript")))]
    fn dashboard_script() {}

    /// The dashboard's style sheet.
    #[utoipa::path(get, path = "/dashboard/style.css", tag = "observability", operation_id = "dashboard_style",
        responses((status = 200, description = "The style sheet.", body = String, content_type = "text/css")))]
    fn dashboard_style() {}

    /// OIP server metadata.
    #[utoipa::path(get, path = "/v2", tag = "oip", operation_id = "oip_server_metadata",
        responses((status = 200, description = "Server metadata.", body = ServerMetadata)))]
    fn oip_server() {}

    /// OIP server liveness.
    #[utoipa::path(get, path = "/v2/health/live", tag = "oip", operation_id = "oip_live",
        responses((status = 200, description = "Alive.", body = Live)))]
    fn oip_live() {}

    /// OIP server readiness.
    #[utoipa::path(get, path = "/v2/health/ready", tag = "oip", operation_id = "oip_ready",
        responses(
            (status = 200, description = "Ready.", body = Ready),
            (status = 503, description = "Not ready, or shutting down.", body = Ready),
        ))]
    fn oip_ready() {}

    /// OIP model metadata.
    #[utoipa::path(get, path = "/v2/models/{name}", tag = "oip", operation_id = "oip_model_metadata",
        params(("name" = String, Path, description = "The model (endpoint).")),
        responses(
            (status = 200, description = "Model metadata.", body = ModelMetadata),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No model of that name.", body = ErrorBody),
        ),
        security(("predictionToken" = []), ("predictionBearer" = [])))]
    fn oip_model() {}

    /// OIP metadata of one model version.
    #[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "oip",
        operation_id = "oip_version_metadata",
        params(
            ("name" = String, Path, description = "The model (endpoint)."),
            ("version" = String, Path, description = "A version that can be addressed."),
        ),
        responses(
            (status = 200, description = "Model metadata.", body = ModelMetadata),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No model or version of that name.", body = ErrorBody),
        ),
        security(("predictionToken" = []), ("predictionBearer" = [])))]
    fn oip_version() {}

    /// OIP model readiness (no token).
    #[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "oip", operation_id = "oip_model_ready",
        params(("name" = String, Path, description = "The model (endpoint).")),
        responses(
            (status = 200, description = "Ready.", body = ModelReady),
            (status = 404, description = "No model of that name.", body = ErrorBody),
            (status = 503, description = "Not ready, or shutting down.", body = ModelReady),
        ))]
    fn oip_model_ready() {}

    /// OIP readiness of one model version (no token).
    #[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "oip",
        operation_id = "oip_version_ready",
        params(
            ("name" = String, Path, description = "The model (endpoint)."),
            ("version" = String, Path, description = "A version that can be addressed."),
        ),
        responses(
            (status = 200, description = "Ready.", body = ModelReady),
            (status = 404, description = "No model or version of that name.", body = ErrorBody),
            (status = 503, description = "Not ready, or shutting down.", body = ModelReady),
        ))]
    fn oip_version_ready() {}

    /// OIP inference; the split (sticky with `x-routing-key`) chooses the version. A leading
    /// batch dimension (`[N, k]` for a k-argument model) is N predictions and N output rows.
    #[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "oip", operation_id = "oip_infer",
        params(
            ("name" = String, Path, description = "The model (endpoint)."),
            ("x-request-id" = Option<String>, Header, description = "The request's id when the body has no `id`; a control character in it is a 400.", pattern = "^[^\\u0000-\\u001f\\u007f]*$"),
            ("x-routing-key" = Option<String>, Header, description = "Makes the canary split sticky."),
        ),
        request_body(content = InferenceRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The output tensors.", body = InferenceResponse, headers(
                ("x-request-id" = String, description = "The request's id."),
                ("x-model-version" = String, description = "The version that answered."),
            )),
            (status = 400, description = "Not an inference request, a shape of more than 32 dimensions or too many elements, rows that disagree on the batch size, elements not of their datatype, or an output the model did not produce.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No model of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the endpoint's limit.", body = ErrorBody),
            (status = 415, description = "The body is not JSON.", body = ErrorBody),
            (status = 422, description = "The predictor rejected the input.", body = ErrorBody),
            (status = 500, description = "The predictor failed or panicked.", body = ErrorBody),
            (status = 503, description = "Not ready, or overloaded.", body = ErrorBody, headers(
                ("retry-after" = String, description = "Seconds to wait."),
            )),
            (status = 504, description = "The predictor did not answer in time.", body = ErrorBody),
        ),
        security(("predictionToken" = []), ("predictionBearer" = [])))]
    fn oip_infer() {}

    /// OIP inference on one version, bypassing the split.
    #[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "oip",
        operation_id = "oip_version_infer",
        params(
            ("name" = String, Path, description = "The model (endpoint)."),
            ("version" = String, Path, description = "A version that can be addressed."),
            ("x-request-id" = Option<String>, Header, description = "The request's id when the body has no `id`; a control character in it is a 400.", pattern = "^[^\\u0000-\\u001f\\u007f]*$"),
        ),
        request_body(content = InferenceRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "The output tensors.", body = InferenceResponse, headers(
                ("x-request-id" = String, description = "The request's id."),
                ("x-model-version" = String, description = "The version that answered."),
            )),
            (status = 400, description = "Not an inference request, a shape of more than 32 dimensions or too many elements, rows that disagree on the batch size, elements not of their datatype, or an output the model did not produce.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No model or version of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the endpoint's limit.", body = ErrorBody),
            (status = 415, description = "The body is not JSON.", body = ErrorBody),
            (status = 422, description = "The predictor rejected the input.", body = ErrorBody),
            (status = 500, description = "The predictor failed or panicked.", body = ErrorBody),
            (status = 503, description = "Not ready, or overloaded.", body = ErrorBody, headers(
                ("retry-after" = String, description = "Seconds to wait."),
            )),
            (status = 504, description = "The predictor did not answer in time.", body = ErrorBody),
        ),
        security(("predictionToken" = []), ("predictionBearer" = [])))]
    fn oip_version_infer() {}

    /// Every endpoint, by name.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints", tag = "admin", operation_id = "admin_list",
        responses(
            (status = 200, description = "The endpoints.", body = EndpointList),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_list() {}

    /// An endpoint's lifecycle status.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}", tag = "admin",
        operation_id = "admin_endpoint",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "Versions serving, shares, stats, shadow comparison, canary.", body = LifecycleStatus),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_endpoint() {}

    /// An endpoint's lifecycle status.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/status", tag = "admin",
        operation_id = "admin_status",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "Versions serving, shares, stats, shadow comparison, canary.", body = LifecycleStatus),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_status() {}

    /// The version history.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/versions", tag = "admin",
        operation_id = "admin_versions",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The versions.", body = Versions),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_versions() {}

    /// One version with its recent request stats.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/versions/{version}", tag = "admin",
        operation_id = "admin_version",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("version" = String, Path, description = "The version."),
        ),
        responses(
            (status = 200, description = "The version.", body = VersionDetail),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint or version of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_version() {}

    /// Lifecycle events, decisions of the automated canary included.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/events", tag = "admin",
        operation_id = "admin_events",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The events.", body = Events),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_events() {}

    /// The spec to deploy the endpoint again (`serving_core::EndpointSpec`).
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/spec", tag = "admin",
        operation_id = "admin_spec",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The spec.", body = Object),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_spec() {}

    /// Rolls out a version registered in the endpoint's model registry.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/update", tag = "admin",
        operation_id = "admin_update",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = Registered, content_type = "application/json"),
        responses(
            (status = 201, description = "Deployed, as stable or as candidate.", body = Changed),
            (status = 400, description = "An invalid body, or a model version or preprocess not in the registry.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "No lifecycle or registry, or an update in progress.", body = ErrorBody),
            (status = 500, description = "Building the version failed; the cause is logged.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_update() {}

    /// Sets the candidate's share of traffic.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/canary", tag = "admin",
        operation_id = "admin_canary",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = Percent, content_type = "application/json"),
        responses(
            (status = 200, description = "The share is set.", body = Changed),
            (status = 400, description = "An invalid body.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or no candidate.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_canary() {}

    /// Sets (or, with `null`, clears) the automated canary's rules.
    #[utoipa::path(put, path = "/api/v1/admin/endpoints/{name}/canary/policy", tag = "admin",
        operation_id = "admin_canary_policy",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = Option<CanaryPolicy>, content_type = "application/json"),
        responses(
            (status = 200, description = "The policy is set.", body = Changed),
            (status = 400, description = "An invalid policy.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_policy() {}

    /// Evaluates the automated canary now.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/canary/evaluate", tag = "admin",
        operation_id = "admin_canary_evaluate",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The evaluation.", body = CanaryEvaluation),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or no candidate under an automated policy.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_evaluate() {}

    /// Makes the candidate stable.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/promote", tag = "admin",
        operation_id = "admin_promote",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "Promoted.", body = Changed),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or no candidate.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_promote() {}

    /// Drops the candidate, or reverts to the previous (or named) version.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/rollback", tag = "admin",
        operation_id = "admin_rollback",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = RollbackTo, content_type = "application/json"),
        responses(
            (status = 200, description = "Rolled back.", body = Changed),
            (status = 400, description = "An invalid body.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint or version of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or nothing to roll back to.", body = ErrorBody),
            (status = 500, description = "Rebuilding the version failed; the cause is logged.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_rollback() {}

    /// Mirrors a share of traffic to a registered version.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/shadow", tag = "admin",
        operation_id = "admin_shadow",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = ShadowBody, content_type = "application/json"),
        responses(
            (status = 201, description = "Mirroring.", body = Changed),
            (status = 400, description = "An invalid body, or a model version or preprocess not in the registry.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "No lifecycle or registry, or a shadow already runs.", body = ErrorBody),
            (status = 500, description = "Building the version failed; the cause is logged.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_shadow() {}

    /// Stops mirroring.
    #[utoipa::path(delete, path = "/api/v1/admin/endpoints/{name}/shadow", tag = "admin",
        operation_id = "admin_stop_shadow",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "Stopped.", body = Changed),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or no shadow.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_stop_shadow() {}

    /// Sets the shadow's share of mirrored traffic.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/shadow/share", tag = "admin",
        operation_id = "admin_shadow_share",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = Percent, content_type = "application/json"),
        responses(
            (status = 200, description = "The share is set.", body = Changed),
            (status = 400, description = "An invalid body.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "No lifecycle, or no shadow.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_shadow_share() {}

    /// The replica bounds and the replicas applied.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/autoscale", tag = "admin",
        operation_id = "admin_autoscale",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The bounds.", body = Autoscale),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
            (status = 500, description = "The autoscaler failed; the cause is logged.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_autoscale() {}

    /// Submits a batch run: the input CSV predicted row by row into the output file of the
    /// dataset.
    #[utoipa::path(post, path = "/api/v1/endpoints/{name}/batches", tag = "batch",
        operation_id = "batch_submit",
        params(("name" = String, Path, description = "The batch endpoint.")),
        request_body(content = serving_core::BatchRequest, content_type = "application/json"),
        responses(
            (status = 202, description = "Accepted; the run goes on in the background.", body = super::BatchId),
            (status = 400, description = "Not a batch request, or an output path outside the dataset.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No batch endpoint or no dataset of that name.", body = ErrorBody),
            (status = 409, description = "The output exists and `overwrite` is not set.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn batch_submit() {}

    /// The endpoint's batch runs, newest first.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/batches", tag = "batch",
        operation_id = "batch_list",
        params(("name" = String, Path, description = "The batch endpoint.")),
        responses(
            (status = 200, description = "The runs.", body = super::BatchList),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No batch endpoint of that name.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn batch_list() {}

    /// Runs side by side, and for pairs over the same input how many predictions differ.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/batches/compare", tag = "batch",
        operation_id = "batch_compare",
        params(
            ("name" = String, Path, description = "The batch endpoint."),
            ("ids" = String, Query, description = "The runs' ids, comma-separated."),
        ),
        responses(
            (status = 200, description = "The runs and their differences.", body = serving_core::BatchComparison),
            (status = 400, description = "No ids.", body = ErrorBody),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No batch endpoint or no run of that id.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn batch_compare() {}

    /// One batch run, with its `progress` (0 to 1) while it runs.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/batches/{id}", tag = "batch",
        operation_id = "batch_get",
        params(
            ("name" = String, Path, description = "The batch endpoint."),
            ("id" = String, Path, description = "The run."),
        ),
        responses(
            (status = 200, description = "The run.", body = serving_core::BatchRun),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No batch endpoint or no run of that id.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn batch_get() {}

    /// Cancels a batch run: it stops, and writes no output.
    #[utoipa::path(delete, path = "/api/v1/endpoints/{name}/batches/{id}", tag = "batch",
        operation_id = "batch_cancel",
        params(
            ("name" = String, Path, description = "The batch endpoint."),
            ("id" = String, Path, description = "The run."),
        ),
        responses(
            (status = 200, description = "The run, cancelled (or as it ended).", body = serving_core::BatchRun),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No batch endpoint or no run of that id.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn batch_cancel() {}

    /// Sets the replica bounds.
    #[utoipa::path(put, path = "/api/v1/admin/endpoints/{name}/autoscale", tag = "admin",
        operation_id = "admin_set_autoscale",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = AutoscaleBounds, content_type = "application/json"),
        responses(
            (status = 200, description = "The bounds are set.", body = Autoscale),
            (status = 400, description = "Invalid bounds (`min_replicas` over `max_replicas`, or `max_replicas` zero).", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
            (status = 500, description = "The autoscaler failed; the cause is logged.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_set_autoscale() {}

    /// Adds a trigger: polled every `every_secs`, it fires its action when the condition
    /// holds (see `TriggerRule`), then waits to re-arm.
    #[utoipa::path(post, path = "/api/v1/admin/endpoints/{name}/triggers", tag = "admin",
        operation_id = "admin_add_trigger",
        params(("name" = String, Path, description = "The endpoint.")),
        request_body(content = TriggerBody, content_type = "application/json"),
        responses(
            (status = 201, description = "Added and polling.", body = TriggerAdded),
            (status = 400, description = "A bad rule, naming the field: an unknown metric kind, a threshold that is not a number, `every_secs` 0, an unknown action type, a bad email address or URL, an email action without an SMTP server.", body = ErrorBody),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 408, description = "The body did not arrive within the body timeout.", body = ErrorBody),
            (status = 413, description = "The body is over the limit of the prediction routes.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_add_trigger() {}

    /// The endpoint's triggers, each with its rule, state, counters and recent alerts.
    #[utoipa::path(get, path = "/api/v1/admin/endpoints/{name}/triggers", tag = "admin",
        operation_id = "admin_triggers",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The triggers.", body = TriggerList),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_triggers() {}

    /// Stops and removes a trigger.
    #[utoipa::path(delete, path = "/api/v1/admin/endpoints/{name}/triggers/{id}", tag = "admin",
        operation_id = "admin_remove_trigger",
        params(
            ("name" = String, Path, description = "The endpoint."),
            ("id" = String, Path, description = "The trigger."),
        ),
        responses(
            (status = 200, description = "Removed.", body = TriggerRemoved),
            (status = 401, description = "Missing or wrong admin token.", body = ErrorBody, headers(
                ("www-authenticate" = String, description = "`Bearer realm=\"serving-admin\"`."),
            )),
            (status = 403, description = "A prediction token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name, or no such trigger.", body = ErrorBody),
            (status = 409, description = "The endpoint has no model lifecycle.", body = ErrorBody),
        ),
        security(("adminToken" = [])))]
    fn admin_remove_trigger() {}

    /// The endpoint's triggers as the dashboard's Triggers tab shows them, behind its
    /// prediction token: each with its rule, state, counters and recent alerts.
    #[utoipa::path(get, path = "/api/v1/endpoints/{name}/triggers", tag = "observability",
        operation_id = "triggers",
        params(("name" = String, Path, description = "The endpoint.")),
        responses(
            (status = 200, description = "The triggers.", body = TriggerList),
            (status = 401, description = "Missing or wrong token.", body = ErrorBody),
            (status = 404, description = "No endpoint of that name.", body = ErrorBody),
        ),
        security(("predictionToken" = [])))]
    fn triggers() {}
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use serving_core::{ModelEndpoint, Result, predictor_fn};
    use tower::ServiceExt as _;

    use super::*;

    fn service() -> WebService {
        let model = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
        let endpoint = ModelEndpoint::builder("echo", model).build().unwrap();
        WebService::builder().endpoint(endpoint).build().unwrap()
    }

    /// Every `(METHOD, path)` the document lists.
    fn documented(document: &Value) -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        routes
    }

    /// The text of the call that opens just before `from`, up to its closing parenthesis.
    fn call_arguments(source: &str, from: usize) -> &str {
        let mut depth = 1;
        for (at, c) in source[from..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &source[from..from + at];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced `.route(` call");
    }

    /// The first string literal in `text`.
    fn literal(text: &str) -> Option<&str> {
        let start = text.find('"')? + 1;
        let end = start + text[start..].find('"')?;
        Some(&text[start..end])
    }

    /// Every `(METHOD, path)` that a `.route(path, method(..)...)` call in this crate's
    /// sources declares, read from the source so that a new route cannot be left out.
    fn declared_in(dir: &Path, routes: &mut BTreeSet<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                declared_in(&path, routes);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("openapi.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            let base = source
                .find("let base = ")
                .and_then(|at| literal(&source[at..]));
            let mut rest = 0;
            while let Some(at) = source[rest..].find(".route(") {
                let open = rest + at + ".route(".len();
                let arguments = call_arguments(&source, open);
                rest = open;
                let (target, handlers) = arguments
                    .split_once(',')
                    .unwrap_or_else(|| panic!("a route without handlers in {path:?}"));
                let target = target.trim();
                let route = if target == "base" {
                    base.expect("`base` is declared").to_owned()
                } else {
                    let text = literal(target)
                        .unwrap_or_else(|| panic!("unreadable route `{target}` in {path:?}"));
                    let text = text.replace("{base}", base.unwrap_or("{base}"));
                    if target.starts_with("&format!") {
                        text.replace("{{", "{").replace("}}", "}")
                    } else {
                        text
                    }
                };
                for method in ["get", "post", "put", "delete", "patch"] {
                    let called = handlers
                        .match_indices(&format!("{method}("))
                        .any(|(at, _)| {
                            !handlers[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                        });
                    if called {
                        routes.insert((method.to_ascii_uppercase(), route.clone()));
                    }
                }
            }
        }
    }

    #[test]
    fn every_route_the_router_declares_is_documented_and_no_other() {
        let mut declared = BTreeSet::new();
        declared_in(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut declared,
        );
        declared.insert(("GET".into(), "/openapi.json".into()));
        let documented = documented(&service().openapi());
        assert!(declared.len() > 30, "found too few routes: {declared:?}");
        let missing: Vec<_> = declared.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&declared).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "documented routes the router lacks: {stale:?}"
        );
    }

    #[tokio::test]
    async fn every_documented_operation_reaches_a_handler() {
        let service = service();
        let router = service.router();
        for (method, path) in documented(&service.openapi()) {
            let uri = path.replace("{name}", "echo").replace("{version}", "1");
            let request = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(
                !(status == StatusCode::NOT_FOUND
                    && body.as_ref() == br#"{"error":"no such route"}"#),
                "{method} {uri} reached the fallback"
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_its_security_and_error_shape() {
        let document = service().openapi();
        assert_eq!(document["openapi"], "3.1.0");
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes[PREDICTION_TOKEN]["in"], "header");
        assert_eq!(schemes[PREDICTION_TOKEN]["name"], crate::TOKEN_HEADER);
        assert_eq!(schemes[ADMIN_TOKEN]["scheme"], "bearer");
        assert_eq!(schemes[PREDICTION_BEARER]["scheme"], "bearer");
        let error = &document["components"]["schemas"]["ErrorBody"];
        assert_eq!(error["required"], serde_json::json!(["error"]));
        let predict = &document["paths"]["/api/v1/endpoints/{name}"]["post"];
        let statuses: Vec<&str> = predict["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for status in [
            "200", "400", "401", "404", "408", "413", "415", "422", "500", "503",
        ] {
            assert!(statuses.contains(&status), "predict lacks {status}");
        }
        assert_eq!(
            predict["security"],
            serde_json::json!([{ PREDICTION_TOKEN: [] }])
        );
        let shape = &document["components"]["schemas"]["RequestInput"]["properties"]["shape"];
        assert_eq!(
            shape["maxItems"],
            crate::oip::MAX_RANK,
            "the rank the server accepts"
        );
        // Integers carry their Rust type's range, and the API's where it is narrower.
        let bounds = &document["components"]["schemas"]["AutoscaleBounds"]["properties"];
        assert_eq!(bounds["max_replicas"]["format"], "uint32");
        assert_eq!(bounds["max_replicas"]["minimum"], 1);
        assert_eq!(bounds["max_replicas"]["maximum"], u32::MAX);
        let percent = &document["components"]["schemas"]["Percent"]["properties"]["percent"];
        assert_eq!(percent["minimum"], 0);
        assert_eq!(percent["maximum"], 100);
    }

    #[test]
    fn an_endpoint_without_a_token_makes_the_token_optional() {
        let model = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
        let mut spec =
            serving_core::EndpointSpec::new("open", serving_core::ModelRef::new("open", "1"));
        spec.auth.required = false;
        let endpoint = ModelEndpoint::builder("open", model)
            .spec(spec)
            .build()
            .unwrap();
        let service = WebService::builder().endpoint(endpoint).build().unwrap();
        let document = service.openapi();
        let predict = &document["paths"]["/api/v1/endpoints/{name}"]["post"];
        assert_eq!(
            predict["security"],
            serde_json::json!([{ PREDICTION_TOKEN: [] }, {}])
        );
        let admin = &document["paths"]["/api/v1/admin/endpoints"]["get"];
        assert_eq!(admin["security"], serde_json::json!([{ ADMIN_TOKEN: [] }]));
    }
}
