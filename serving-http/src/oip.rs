//! Open Inference Protocol (KServe v2) REST routes, beside the original wire format. The
//! routes and the tensor mapping are documented in the crate docs ("Open Inference
//! Protocol").

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use serving_core::{
    Arrival, Error, Input, ModelSignature, PredictRequest, Prediction, TensorSpec, new_request_id,
};

use crate::auth::TOKEN_HEADER;
use crate::error::ApiError;
use crate::service::{
    MODEL_VERSION_HEADER, REQUEST_ID_HEADER, Route, ServiceState, authorize, caller_request_id,
    check_content_type, check_request_id, read_body, refuse, routed_request, usable_request_id,
};

type Shared = State<Arc<ServiceState>>;

/// The header of the binary tensor data extension, which is not supported (the server
/// metadata lists no extensions).
const BINARY_HEADER: &str = "inference-header-content-length";

/// The OIP routes, merged into the service's router.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        )
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "serving",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn ready(State(state): Shared) -> Response {
    let ready = !state.draining.load(Ordering::Acquire)
        && state.endpoints.values().all(|r| r.endpoint.is_ready());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

fn route<'a>(state: &'a ServiceState, name: &str) -> Result<&'a Route, ApiError> {
    state
        .endpoints
        .get(name)
        .map(|route| &**route)
        .ok_or_else(|| {
            Error::EndpointNotFound {
                endpoint: name.to_owned(),
            }
            .into()
        })
}

/// The prediction token from `Cnvrg-Api-Key`, or else from `Authorization: Bearer`.
fn authorize_oip(route: &Route, headers: &HeaderMap) -> Result<(), Error> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|v| HeaderValue::from_str(v.trim()).ok());
    authorize(route, headers.get(TOKEN_HEADER).or(bearer.as_ref()))
}

/// The versions that can be addressed, and whether `version` is one of them.
fn check_version(route: &Route, name: &str, version: Option<&str>) -> Result<(), ApiError> {
    let Some(version) = version else {
        return Ok(());
    };
    let known = match route.endpoint.lifecycle() {
        Some(lifecycle) => lifecycle.routable_versions().iter().any(|v| v == version),
        None => route.endpoint.spec().model.version == version,
    };
    if known {
        Ok(())
    } else {
        Err(Error::VersionNotFound {
            endpoint: name.to_owned(),
            version: version.to_owned(),
        }
        .into())
    }
}

/// The signature of `version`, or of the stable version.
fn signature(route: &Route, version: Option<&str>) -> Option<ModelSignature> {
    match (route.endpoint.lifecycle(), version) {
        (Some(lifecycle), Some(version)) => lifecycle.version(version)?.spec.signature,
        (Some(lifecycle), None) => lifecycle.export_spec().signature,
        (None, _) => route.endpoint.spec().signature.clone(),
    }
}

async fn model_ready(State(state): Shared, Path(name): Path<String>) -> Response {
    readiness(&state, &name, None)
}

async fn version_ready(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(&state, &name, Some(&version))
}

fn readiness(state: &ServiceState, name: &str, version: Option<&str>) -> Response {
    let outcome = route(state, name).and_then(|route| {
        check_version(route, name, version)?;
        Ok(route.endpoint.is_ready() && !state.draining.load(Ordering::Acquire))
    });
    match outcome {
        Ok(ready) => {
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(json!({ "name": name, "ready": ready }))).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn model_metadata(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &name, None, &headers).unwrap_or_else(IntoResponse::into_response)
}

async fn version_metadata(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &name, Some(&version), &headers).unwrap_or_else(IntoResponse::into_response)
}

fn metadata(
    state: &ServiceState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let route = route(state, name)?;
    authorize_oip(route, headers)?;
    check_version(route, name, version)?;
    let versions = route.endpoint.lifecycle().map_or_else(
        || vec![route.endpoint.spec().model.version.clone()],
        serving_core::Lifecycle::routable_versions,
    );
    let signature = signature(route, version).unwrap_or_default();
    let platform = if signature.platform.is_empty() {
        "serving".to_owned()
    } else {
        signature.platform
    };
    Ok(axum::Json(json!({
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": signature.inputs,
        "outputs": signature.outputs,
    }))
    .into_response())
}

async fn infer(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    inference(&state, &name, None, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn version_infer(
    State(state): Shared,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    inference(&state, &name, Some(&version), &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `$inference_request`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct InferenceRequest {
    #[serde(default)]
    #[schema(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    id: Option<String>,
    #[schema(min_items = 1)]
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Vec<RequestOutput>,
}

/// `$request_input`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct RequestInput {
    name: String,
    #[schema(max_items = 32)]
    shape: Vec<u64>,
    #[schema(
        pattern = "^(BOOL|UINT8|UINT16|UINT32|UINT64|INT8|INT16|INT32|INT64|FP16|FP32|FP64|BYTES)$"
    )]
    datatype: String,
    #[schema(value_type = crate::openapi::TensorData)]
    data: Value,
}

/// `$request_output`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct RequestOutput {
    name: String,
}

async fn inference(
    state: &ServiceState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let arrival = Arrival::now();
    let route = route(state, name)?;
    let signature = signature(route, version);
    let (request, predict, request_id) = match admit(
        state,
        route,
        version,
        headers,
        body,
        signature.as_ref(),
        arrival,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err((error, request_id)) => return Err(refuse(route, error, &request_id, arrival)),
    };
    let prediction = predict_rows(route, predict, &request_id).await?;
    let requested: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
    let outputs = to_outputs(prediction.output, &requested, signature.as_ref())?;
    let mut response = axum::Json(json!({
        "model_name": name,
        "model_version": prediction.model_version,
        "id": request.id.unwrap_or(request_id),
        "outputs": outputs,
    }))
    .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&prediction.request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&prediction.model_version) {
        headers.insert(MODEL_VERSION_HEADER, value);
    }
    Ok(response)
}

/// Everything between an inference request's arrival and the model; a refusal carries the
/// request id it was known by.
async fn admit(
    state: &ServiceState,
    route: &Route,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    signature: Option<&ModelSignature>,
    arrival: Arrival,
) -> Result<(InferenceRequest, Requests, String), (Error, String)> {
    let header_id = caller_request_id(headers).map_err(|error| (error, new_request_id()))?;
    let refused = |error: Error| (error, header_id.clone().unwrap_or_else(new_request_id));
    authorize_oip(route, headers).map_err(refused)?;
    check_content_type(headers).map_err(refused)?;
    if headers.contains_key(BINARY_HEADER) {
        // Read as JSON, the binary tail would fail with a confusing "missing field `data`".
        return Err(refused(Error::invalid_request(format!(
            "the binary tensor data extension (`{BINARY_HEADER}`) is not supported: send \
             tensors as JSON `data` (Triton's clients: binary_data=False)"
        ))));
    }
    let spec = route.endpoint.spec();
    let limit = spec.server.workers.max_body_bytes;
    let bytes = read_body(body, limit, state.body_timeout, arrival)
        .await
        .map_err(refused)?;
    let request = parse_request(&bytes).map_err(refused)?;
    if let Some(id) = &request.id {
        check_request_id(id, "id").map_err(refused)?;
    }
    let request_id = request
        .id
        .clone()
        .filter(|id| usable_request_id(id))
        .or_else(|| header_id.clone())
        .unwrap_or_else(new_request_id);
    let rows = to_rows(&request.inputs, signature).map_err(|e| (e, request_id.clone()))?;
    let request_for = |input: Input, row_id: &str| {
        let mut predict = routed_request(input, headers, arrival).with_request_id(row_id);
        if let Some(version) = version {
            predict = predict.with_version(version);
        }
        predict
    };
    let predict = match rows {
        Rows::One(input) => Requests::One(request_for(input, &request_id)),
        Rows::Batch(inputs) => {
            let single = inputs.len() == 1;
            Requests::Batch(
                inputs
                    .into_iter()
                    .enumerate()
                    .map(|(row, input)| {
                        // A batch of one row (the clients' default) is logged as the request.
                        let row_id = if single {
                            request_id.clone()
                        } else {
                            format!("{request_id}-{row}")
                        };
                        let predict = request_for(input, &row_id);
                        // One request is one caller: its rows take the same side of a canary split.
                        if predict.routing_key.is_none() {
                            predict.with_routing_key(&request_id)
                        } else {
                            predict
                        }
                    })
                    .collect(),
            )
        }
    };
    Ok((request, predict, request_id))
}

/// The body as an `$inference_request`. It must be UTF-8 throughout, as JSON is: serde_json
/// reading bytes skips fields it ignores (a misspelled `outputs`) without checking them, so
/// a body that no JSON reader accepts would be answered (found by the `oip_body` fuzz target).
fn parse_request(body: &[u8]) -> Result<InferenceRequest, Error> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::invalid_request(format!("not an OIP inference request: {e}"))
    };
    let text = std::str::from_utf8(body).map_err(|e| invalid(&e))?;
    serde_json::from_str(text).map_err(|e| invalid(&e))
}

/// The inputs an infer body gives the model (see `crate::fuzz`).
pub(crate) fn decode_for_fuzz(body: &[u8]) -> Result<Vec<Input>, Error> {
    let request = parse_request(body)?;
    Ok(match to_rows(&request.inputs, None)? {
        Rows::One(input) => vec![input],
        Rows::Batch(rows) => rows,
    })
}

/// Maps an answer to output tensors and a stack of it to a batch's (see `crate::fuzz`).
pub(crate) fn outputs_for_fuzz(answer: Value) {
    let _ = to_outputs(answer.clone(), &[], None);
    let _ = to_outputs(stack_rows(vec![answer.clone(), answer]), &[], None);
}

/// What one inference request asks the endpoint for.
enum Requests {
    /// One prediction: the tensors are the input.
    One(PredictRequest),
    /// One prediction per row of the tensors' leading batch dimension.
    Batch(Vec<PredictRequest>),
}

/// The request's predictions; rows of a batch run at once, at most the endpoint's
/// `concurrency` of them, so a batching predictor gets them together in `predict_batch`.
async fn predict_rows(
    route: &Route,
    requests: Requests,
    request_id: &str,
) -> Result<Prediction, ApiError> {
    let endpoint = &route.endpoint;
    let rows = match requests {
        Requests::One(request) => {
            return endpoint
                .predict(request)
                .await
                .map_err(|error| ApiError::from_core(&error, request_id));
        }
        Requests::Batch(rows) => rows,
    };
    let concurrency = endpoint.spec().server.workers.concurrency.max(1);
    let predictions: Vec<Prediction> = futures::stream::iter(rows)
        .map(|row| endpoint.predict(row))
        .buffered(concurrency)
        .enumerate()
        .map(|(row, outcome)| {
            outcome.map_err(|error| {
                ApiError::from_core(&error, request_id).within(&format!("row {row}"))
            })
        })
        .try_collect()
        .await?;
    let model_version = predictions
        .first()
        .map(|p| p.model_version.clone())
        .unwrap_or_default();
    let elapsed = predictions
        .iter()
        .map(|p| p.elapsed)
        .max()
        .unwrap_or_default();
    Ok(Prediction {
        output: stack_rows(predictions.into_iter().map(|p| p.output).collect()),
        request_id: request_id.to_owned(),
        model_version,
        elapsed,
    })
}

/// Row outputs as one answer: objects with the same keys become one object of stacked
/// entries (one output tensor per key), anything else one stacked array.
fn stack_rows(rows: Vec<Value>) -> Value {
    let keys: Option<Vec<String>> = match rows.first() {
        Some(Value::Object(first)) => Some(first.keys().cloned().collect()),
        _ => None,
    };
    let same_keys = |keys: &[String]| {
        rows.iter().all(|row| {
            row.as_object()
                .is_some_and(|o| o.len() == keys.len() && keys.iter().all(|k| o.contains_key(k)))
        })
    };
    match keys {
        Some(keys) if same_keys(&keys) => {
            let mut stacked: Map<String, Value> = keys
                .iter()
                .map(|k| (k.clone(), Value::Array(Vec::new())))
                .collect();
            for row in rows {
                let Value::Object(entries) = row else {
                    unreachable!("checked above")
                };
                for (key, value) in entries {
                    if let Some(Value::Array(column)) = stacked.get_mut(&key) {
                        column.push(value);
                    }
                }
            }
            Value::Object(stacked)
        }
        _ => Value::Array(rows),
    }
}

/// The predictor's input from the request's tensors: one input, or one per row when every
/// tensor carries a leading batch dimension; see the crate docs ("Open Inference Protocol").
enum Rows {
    One(Input),
    Batch(Vec<Input>),
}

/// Most dimensions a tensor may have: beyond any model's, and it bounds the work a shape can
/// ask for before its elements are counted.
pub(crate) const MAX_RANK: usize = 32;

fn to_rows(inputs: &[RequestInput], signature: Option<&ModelSignature>) -> Result<Rows, Error> {
    if inputs.is_empty() {
        return Err(Error::invalid_request(
            "an inference request needs at least one input",
        ));
    }
    for tensor in inputs {
        check_shape(tensor)?;
    }
    let ordered: Vec<&RequestInput> = match signature.filter(|s| !s.inputs.is_empty()) {
        None => inputs.iter().collect(),
        Some(signature) => {
            if let Some(extra) = inputs
                .iter()
                .find(|i| !signature.inputs.iter().any(|s| s.name == i.name))
            {
                return Err(Error::invalid_request(format!(
                    "unknown input `{}`; the model takes: {}",
                    extra.name,
                    names(&signature.inputs)
                )));
            }
            signature
                .inputs
                .iter()
                .map(|declared| {
                    inputs
                        .iter()
                        .find(|i| i.name == declared.name)
                        .ok_or_else(|| {
                            Error::invalid_request(format!("missing input `{}`", declared.name))
                        })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let declared_rank = |tensor: &RequestInput| {
        signature
            .and_then(|s| s.inputs.iter().find(|d| d.name == tensor.name))
            .map(|d| d.shape.len())
            .filter(|rank| *rank > 0)
    };
    let batched = |tensor: &RequestInput| match declared_rank(tensor) {
        Some(rank) => tensor.shape.len() == rank + 1,
        None => tensor.shape.len() >= 2,
    };
    let mut values = ordered
        .iter()
        .map(|tensor| tensor_value(tensor))
        .collect::<Result<Vec<_>, _>>()?;
    let one = |mut values: Vec<Value>| {
        if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        }
    };
    if !ordered.iter().all(|tensor| batched(tensor)) {
        return Ok(Rows::One(Input::Json(one(values))));
    }
    let batch = ordered[0].shape[0];
    if batch == 0 {
        // No row would mean no prediction and no record of the request.
        return Err(Error::invalid_request(format!(
            "input `{}` is a batch of no rows (shape {:?})",
            ordered[0].name, ordered[0].shape
        )));
    }
    if let Some(other) = ordered.iter().find(|t| t.shape[0] != batch) {
        return Err(Error::invalid_request(format!(
            "input `{}` has a batch of {} rows but `{}` has {batch}: every input's leading \
             dimension is the batch and must agree",
            other.name, other.shape[0], ordered[0].name
        )));
    }
    let mut columns = Vec::with_capacity(values.len());
    for (tensor, value) in ordered.iter().zip(values.drain(..)) {
        match value {
            Value::Array(rows) if rows.len() as u64 == batch => columns.push(rows.into_iter()),
            _ => {
                return Err(Error::invalid_request(format!(
                    "input `{}` has shape {:?} but its data is not {batch} rows",
                    tensor.name, tensor.shape
                )));
            }
        }
    }
    Ok(Rows::Batch(
        (0..batch)
            .map(|_| {
                let row: Vec<Value> = columns.iter_mut().filter_map(Iterator::next).collect();
                Input::Json(one(row))
            })
            .collect(),
    ))
}

/// Refuses a shape before any work: too many dimensions, or more elements than a body the
/// size of the endpoint's limit could carry (checked, so no product overflows).
fn check_shape(tensor: &RequestInput) -> Result<(), Error> {
    if tensor.shape.len() > MAX_RANK {
        return Err(Error::invalid_request(format!(
            "input `{}` has {} dimensions; at most {MAX_RANK} are accepted",
            tensor.name,
            tensor.shape.len()
        )));
    }
    let elements = tensor
        .shape
        .iter()
        .try_fold(1u64, |product, dim| product.checked_mul(*dim))
        .filter(|elements| *elements <= MAX_ELEMENTS);
    if elements.is_none() {
        return Err(Error::invalid_request(format!(
            "input `{}` has shape {:?}, more than {MAX_ELEMENTS} elements",
            tensor.name, tensor.shape
        )));
    }
    Ok(())
}

/// Most elements a tensor's shape may count: each element takes at least two bytes of JSON
/// (`1,`), so no body within the largest accepted size holds more.
pub(crate) const MAX_ELEMENTS: u64 = 1 << 32;

fn names(tensors: &[TensorSpec]) -> String {
    tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One input tensor as a JSON value, its elements checked against its datatype.
fn tensor_value(tensor: &RequestInput) -> Result<Value, Error> {
    let mut flat = Vec::new();
    flatten(&tensor.data, &mut flat);
    let check = element_check(&tensor.datatype).ok_or_else(|| {
        Error::invalid_request(format!(
            "input `{}` has unknown datatype `{}`; valid datatypes are: {}",
            tensor.name,
            tensor.datatype,
            DATATYPES.join(", ")
        ))
    })?;
    if let Some(bad) = flat.iter().find(|v| !check(v)) {
        return Err(Error::invalid_request(format!(
            "input `{}` is {} but holds {bad}",
            tensor.name, tensor.datatype
        )));
    }
    let elements: u64 = tensor.shape.iter().product();
    let is_flat = tensor
        .data
        .as_array()
        .is_some_and(|a| !a.iter().any(Value::is_array));
    Ok(match &tensor.data {
        Value::Array(items) if is_flat && tensor.shape.is_empty() && items.len() == 1 => {
            items[0].clone()
        }
        Value::Array(items)
            if is_flat && tensor.shape.len() > 1 && items.len() as u64 == elements =>
        {
            reshape(items, &tensor.shape)
        }
        other => other.clone(),
    })
}

const DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

fn element_check(datatype: &str) -> Option<fn(&Value) -> bool> {
    fn unsigned(v: &Value, max: u64) -> bool {
        v.as_u64().is_some_and(|n| n <= max)
    }
    fn signed(v: &Value, min: i64, max: i64) -> bool {
        v.as_i64().is_some_and(|n| (min..=max).contains(&n))
    }
    Some(match datatype {
        "BOOL" => Value::is_boolean,
        "UINT8" => |v| unsigned(v, u8::MAX.into()),
        "UINT16" => |v| unsigned(v, u16::MAX.into()),
        "UINT32" => |v| unsigned(v, u32::MAX.into()),
        "UINT64" => Value::is_u64,
        "INT8" => |v| signed(v, i8::MIN.into(), i8::MAX.into()),
        "INT16" => |v| signed(v, i16::MIN.into(), i16::MAX.into()),
        "INT32" => |v| signed(v, i32::MIN.into(), i32::MAX.into()),
        "INT64" => Value::is_i64,
        "FP16" | "FP32" | "FP64" => Value::is_number,
        "BYTES" => Value::is_string,
        _ => return None,
    })
}

fn flatten<'a>(value: &'a Value, into: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, into)),
        scalar => into.push(scalar),
    }
}

/// Flat row-major `items` as nested arrays of `shape`, built from the innermost dimension
/// out (a loop, not recursion: a shape is attacker-chosen).
fn reshape(items: &[Value], shape: &[u64]) -> Value {
    let mut level: Vec<Value> = items.to_vec();
    for dim in shape.iter().skip(1).rev() {
        let width = usize::try_from(*dim).unwrap_or(usize::MAX).max(1);
        let mut rest = level.into_iter();
        let mut grouped = Vec::new();
        loop {
            let chunk: Vec<Value> = rest.by_ref().take(width).collect();
            if chunk.is_empty() {
                break;
            }
            grouped.push(Value::Array(chunk));
        }
        level = grouped;
    }
    Value::Array(level)
}

/// The answer as `$response_output`s; see the module docs.
fn to_outputs(
    output: Value,
    requested: &[&str],
    signature: Option<&ModelSignature>,
) -> Result<Vec<Value>, ApiError> {
    let declared = signature.map_or(&[][..], |s| s.outputs.as_slice());
    let named: Vec<(String, Value)> = match output {
        Value::Object(entries) => entries.into_iter().collect(),
        single => {
            let name = requested
                .first()
                .map(|n| (*n).to_owned())
                .or_else(|| declared.first().map(|t| t.name.clone()))
                .unwrap_or_else(|| "output0".to_owned());
            vec![(name, single)]
        }
    };
    if let Some(missing) = requested
        .iter()
        .find(|r| !named.iter().any(|(n, _)| n == *r))
    {
        return Err(
            Error::invalid_request(format!("the model produced no output `{missing}`")).into(),
        );
    }
    Ok(named
        .into_iter()
        .filter(|(name, _)| requested.is_empty() || requested.contains(&name.as_str()))
        .map(|(name, value)| {
            let declared = declared
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.datatype.as_str());
            output_tensor(name, value, declared)
        })
        .collect())
}

fn output_tensor(name: String, value: Value, declared: Option<&str>) -> Value {
    let tensor = |shape: Vec<usize>, datatype: &str, data: Vec<Value>| {
        let mut object = Map::new();
        object.insert("name".into(), Value::String(name.clone()));
        object.insert("shape".into(), json!(shape));
        object.insert("datatype".into(), Value::String(datatype.to_owned()));
        object.insert("data".into(), Value::Array(data));
        Value::Object(object)
    };
    let shape = match &value {
        Value::Array(_) => rectangular_shape(&value),
        _ => Some(vec![1]),
    };
    let mut flat = Vec::new();
    flatten(&value, &mut flat);
    let inferred = infer_datatype(&flat);
    match (shape, inferred) {
        (Some(shape), Some(inferred)) => {
            let datatype = declared
                .filter(|d| element_check(d).is_some_and(|check| flat.iter().all(|v| check(v))))
                .unwrap_or(inferred);
            tensor(shape, datatype, flat.into_iter().cloned().collect())
        }
        _ => tensor(vec![1], "BYTES", vec![Value::String(value.to_string())]),
    }
}

/// The shape of a rectangular nest of arrays, `None` when ragged or mixed.
fn rectangular_shape(value: &Value) -> Option<Vec<usize>> {
    match value {
        Value::Array(items) => {
            let Some(first) = items.first() else {
                return Some(vec![0]);
            };
            let inner = match first {
                Value::Array(_) => rectangular_shape(first)?,
                _ => Vec::new(),
            };
            for item in items {
                let same = match item {
                    Value::Array(_) => {
                        rectangular_shape(item).as_ref() == Some(&inner) && !inner.is_empty()
                    }
                    Value::Object(_) => false,
                    _ => inner.is_empty(),
                };
                if !same {
                    return None;
                }
            }
            Some(std::iter::once(items.len()).chain(inner).collect())
        }
        _ => Some(Vec::new()),
    }
}

/// `BOOL`, `INT64`, `FP64` or `BYTES` when every element is of that kind.
fn infer_datatype(flat: &[&Value]) -> Option<&'static str> {
    if flat.iter().all(|v| v.is_boolean()) {
        Some("BOOL")
    } else if flat.iter().all(|v| v.is_i64()) {
        Some("INT64")
    } else if flat.iter().all(|v| v.is_number()) {
        Some("FP64")
    } else if flat.iter().all(|v| v.is_string()) {
        Some("BYTES")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_input(
        inputs: &[RequestInput],
        signature: Option<&ModelSignature>,
    ) -> Result<Input, Error> {
        match to_rows(inputs, signature)? {
            Rows::One(input) => Ok(input),
            Rows::Batch(rows) => panic!("expected one input, got a batch of {}", rows.len()),
        }
    }

    fn input(name: &str, shape: Vec<u64>, datatype: &str, data: Value) -> RequestInput {
        RequestInput {
            name: name.into(),
            shape,
            datatype: datatype.into(),
            data,
        }
    }

    #[test]
    fn tensors_become_positional_arguments() {
        let one = [input("x", vec![4], "FP32", json!([5.1, 3.5, 1.4, 0.2]))];
        assert_eq!(
            to_input(&one, None).unwrap(),
            Input::Json(json!([5.1, 3.5, 1.4, 0.2]))
        );
        let two = [
            input("a", vec![2, 2], "UINT32", json!([1, 2, 3, 4])),
            input("b", vec![], "BYTES", json!(["hi"])),
        ];
        assert_eq!(
            to_input(&two, None).unwrap(),
            Input::Json(json!([[[1, 2], [3, 4]], "hi"]))
        );
        let signature = ModelSignature {
            inputs: vec![
                TensorSpec::new("b", "BYTES", vec![]),
                TensorSpec::new("a", "UINT32", vec![2, 2]),
            ],
            ..ModelSignature::default()
        };
        assert_eq!(
            to_input(&two, Some(&signature)).unwrap(),
            Input::Json(json!(["hi", [[1, 2], [3, 4]]]))
        );
        let unknown = [input("c", vec![1], "BOOL", json!([true]))];
        assert!(to_input(&unknown, Some(&signature)).is_err());
    }

    #[test]
    fn a_leading_batch_dimension_is_one_input_per_row() {
        let batch = |inputs: &[RequestInput], signature| match to_rows(inputs, signature).unwrap() {
            Rows::Batch(rows) => rows,
            Rows::One(input) => panic!("expected a batch, got one input {input:?}"),
        };
        // What Triton's and KServe's clients send for one row of a four-argument model.
        let one_row = [input("x", vec![1, 4], "FP32", json!([5.1, 3.5, 1.4, 0.2]))];
        assert_eq!(
            batch(&one_row, None),
            [Input::Json(json!([5.1, 3.5, 1.4, 0.2]))]
        );
        let nested = [input(
            "x",
            vec![2, 2],
            "FP32",
            json!([[1.0, 2.0], [3.0, 4.0]]),
        )];
        assert_eq!(
            batch(&nested, None),
            [
                Input::Json(json!([1.0, 2.0])),
                Input::Json(json!([3.0, 4.0]))
            ]
        );
        let two = [
            input("a", vec![2, 1], "INT64", json!([1, 2])),
            input("b", vec![2, 1], "BYTES", json!(["x", "y"])),
        ];
        assert_eq!(
            batch(&two, None),
            [
                Input::Json(json!([[1], ["x"]])),
                Input::Json(json!([[2], ["y"]]))
            ]
        );
        // A signature that declares the rank sent takes the tensor whole.
        let matrix = ModelSignature {
            inputs: vec![TensorSpec::new("x", "FP32", vec![-1, 2])],
            ..ModelSignature::default()
        };
        assert!(matches!(
            to_rows(&nested, Some(&matrix)).unwrap(),
            Rows::One(_)
        ));
        let per_row = ModelSignature {
            inputs: vec![TensorSpec::new("x", "FP32", vec![4])],
            ..ModelSignature::default()
        };
        assert_eq!(batch(&one_row, Some(&per_row)).len(), 1);
        let disagree = [
            input("a", vec![2, 1], "INT64", json!([1, 2])),
            input("b", vec![3, 1], "INT64", json!([1, 2, 3])),
        ];
        let error = to_rows(&disagree, None).err().unwrap().to_string();
        assert!(error.contains("leading dimension"), "{error}");
        let short = [input("x", vec![3, 2], "INT64", json!([[1, 2]]))];
        let error = to_rows(&short, None).err().unwrap().to_string();
        assert!(error.contains("not 3 rows"), "{error}");
        // Found by the random-shape test: an accepted request must predict (and record) something.
        let empty = [input("x", vec![0, 4], "FP32", json!([]))];
        let error = to_rows(&empty, None).err().unwrap().to_string();
        assert!(error.contains("no rows"), "{error}");
    }

    /// Random shapes and data through the parser: it never panics, and what it accepts obeys
    /// the bounds and the batch rule. A cheap stable stand-in for the `oip_body` fuzz target.
    #[test]
    fn random_shapes_obey_the_bounds_and_the_batch_rule() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _ in 0..5_000 {
            let rank = next(40) as usize;
            let shape: Vec<u64> = (0..rank)
                .map(|_| match next(20) {
                    0 => u64::MAX - next(3),
                    1 => 0,
                    _ => 1 + next(4),
                })
                .collect();
            let data: Vec<Value> = (0..next(30)).map(|i| json!(i)).collect();
            let body = json!({"inputs": [{"name": "x", "shape": shape, "datatype": "INT64", "data": data}]});
            let elements = shape.iter().try_fold(1u64, |p, &d| p.checked_mul(d));
            match decode_for_fuzz(&serde_json::to_vec(&body).unwrap()) {
                Ok(inputs) => {
                    assert!(rank <= MAX_RANK, "{shape:?}");
                    assert!(elements.is_some_and(|e| e <= MAX_ELEMENTS), "{shape:?}");
                    if rank >= 2 {
                        assert_eq!(inputs.len() as u64, shape[0], "{shape:?}");
                    } else {
                        assert_eq!(inputs.len(), 1, "{shape:?}");
                    }
                    if rank >= 2 && elements == Some(data.len() as u64) {
                        let row: u64 = shape[1..].iter().product();
                        for input in &inputs {
                            let mut flat = Vec::new();
                            let value = input.to_json();
                            flatten(&value, &mut flat);
                            assert_eq!(flat.len() as u64, row, "{shape:?}");
                        }
                    }
                }
                Err(error) => assert!(
                    rank > MAX_RANK
                        || elements.is_none_or(|e| e > MAX_ELEMENTS)
                        || (rank >= 2
                            && (elements == Some(0) || elements != Some(data.len() as u64))),
                    "{shape:?} with {} elements: {error}",
                    data.len()
                ),
            }
        }
    }

    #[test]
    fn a_body_must_be_utf8_even_in_fields_it_ignores() {
        let mut body =
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"ouptuts":"s?"}"#
                .to_vec();
        let at = body.iter().position(|b| *b == b'?').unwrap();
        body[at] = 0x86;
        let error = decode_for_fuzz(&body).err().unwrap().to_string();
        assert!(error.contains("not an OIP inference request"), "{error}");
    }

    #[test]
    fn shapes_are_bounded_before_any_work() {
        let deep = [input("x", vec![1; 7_000], "FP32", json!([5.1]))];
        let error = to_rows(&deep, None).err().unwrap().to_string();
        assert!(error.contains("at most 32"), "{error}");
        let huge = [input("x", vec![u64::MAX, 2], "FP32", json!([5.1]))];
        let error = to_rows(&huge, None).err().unwrap().to_string();
        assert!(error.contains("elements"), "{error}");
        let at_limit = [input("x", vec![1; MAX_RANK], "FP32", json!([5.1]))];
        assert!(to_rows(&at_limit, None).is_ok());
    }

    #[test]
    fn reshape_nests_row_major_without_recursion() {
        let items: Vec<Value> = (0..6).map(|n| json!(n)).collect();
        assert_eq!(reshape(&items, &[2, 3]), json!([[0, 1, 2], [3, 4, 5]]));
        assert_eq!(reshape(&items, &[3, 2]), json!([[0, 1], [2, 3], [4, 5]]));
        assert_eq!(reshape(&items, &[1, 2, 3]), json!([[[0, 1, 2], [3, 4, 5]]]));
        assert_eq!(reshape(&items, &[6]), json!([0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn rows_stack_into_one_answer() {
        assert_eq!(stack_rows(vec![json!(1), json!(2)]), json!([1, 2]));
        assert_eq!(
            stack_rows(vec![json!({"p": 1, "q": "a"}), json!({"p": 2, "q": "b"})]),
            json!({"p": [1, 2], "q": ["a", "b"]})
        );
        assert_eq!(
            stack_rows(vec![json!({"p": 1}), json!({"q": 2})]),
            json!([{"p": 1}, {"q": 2}])
        );
    }

    #[test]
    fn elements_must_fit_the_datatype() {
        for (datatype, data) in [
            ("UINT8", json!([256])),
            ("UINT32", json!([-1])),
            ("INT8", json!([1.5])),
            ("BOOL", json!([1])),
            ("BYTES", json!([1])),
            ("FP32", json!(["x"])),
            ("COMPLEX", json!([1])),
        ] {
            let error = to_input(&[input("x", vec![1], datatype, data)], None).unwrap_err();
            assert_eq!(error.status(), 400, "{datatype}: {error}");
        }
    }

    #[test]
    fn outputs_take_shape_datatype_and_names() {
        let outputs = to_outputs(json!([[1, 2], [3, 4], [5, 6]]), &[], None).unwrap();
        assert_eq!(
            outputs,
            vec![
                json!({"name": "output0", "shape": [3, 2], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]})
            ]
        );
        let outputs =
            to_outputs(json!({"label": "setosa", "score": 0.5}), &["score"], None).unwrap();
        assert_eq!(
            outputs,
            vec![json!({"name": "score", "shape": [1], "datatype": "FP64", "data": [0.5]})]
        );
        let ragged = to_outputs(json!([[1], [2, 3]]), &[], None).unwrap();
        assert_eq!(ragged[0]["datatype"], "BYTES");
        assert_eq!(ragged[0]["data"], json!(["[[1],[2,3]]"]));
        assert!(to_outputs(json!(1), &["a", "b"], None).is_err());
        let signature = ModelSignature {
            outputs: vec![TensorSpec::new("probabilities", "FP32", vec![-1])],
            ..ModelSignature::default()
        };
        let declared = to_outputs(json!([0.25, 0.75]), &[], Some(&signature)).unwrap();
        assert_eq!(declared[0]["name"], "probabilities");
        assert_eq!(declared[0]["datatype"], "FP32");
    }
}
