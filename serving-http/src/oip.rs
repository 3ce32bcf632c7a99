//! Open Inference Protocol (KServe v2) REST routes, beside the original wire format. The
//! routes and the tensor mapping are documented in the crate docs ("Open Inference
//! Protocol").
//!
//! Limits checked before any work on a tensor: a `shape` has at most [`MAX_RANK`] dimensions,
//! and the product of its dimensions (checked multiplication) is at most the body's size in
//! bytes, since every element of `data` takes at least one byte of JSON (the protocol lets a
//! shape claim more elements than `data` holds, never more than the body could). Either is a
//! 400 that names the limit.
//!
//! A batch (one input tensor of shape `[N, ...]`, see the crate docs) is N predictions, each
//! recorded as its own request: with N = 1 under the request's id, with N > 1 under
//! `<id>-<i>` for row `i` (from 0), so that the prediction log holds one record per row and
//! the caller finds them all by the id it got back. Rows of one request are routed together
//! (the request id is their routing key when the caller sent no `X-Routing-Key`), run at most
//! as many at once as a [`Runner`](serving_core::runner::Runner) would, and the first failing
//! row's error is the answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use serving_core::{
    Arrival, DynEndpoint, Error, Input, ModelSignature, PredictRequest, Prediction, TensorSpec,
    new_request_id,
};
use tokio::sync::Semaphore;

use crate::auth::TOKEN_HEADER;
use crate::error::ApiError;
use crate::service::{
    MODEL_VERSION_HEADER, REQUEST_ID_HEADER, Route, ServiceState, authorize, caller_request_id,
    check_content_type, check_request_id, read_body, refuse, routed_request, usable_request_id,
};

type Shared = State<Arc<ServiceState>>;

/// The header of the binary tensor data extension, which is not supported.
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
#[derive(Debug, Deserialize)]
struct InferenceRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Vec<RequestOutput>,
}

/// `$request_input`.
#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    data: Value,
}

/// `$request_output`.
#[derive(Debug, Deserialize)]
struct RequestOutput {
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
    let (request, predicts, request_id) = match admit(
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
    let (output, model_version) = match predicts {
        Predicts::One(predict) => {
            let prediction = route
                .endpoint
                .predict(predict)
                .await
                .map_err(|error| ApiError::from_core(&error, &request_id))?;
            (prediction.output, prediction.model_version)
        }
        Predicts::Rows(rows) => {
            let mut outputs = Vec::with_capacity(rows.len());
            let mut model_version = None;
            for result in predict_rows(&route.endpoint, rows).await {
                let prediction =
                    result.map_err(|error| ApiError::from_core(&error, &request_id))?;
                model_version.get_or_insert(prediction.model_version);
                outputs.push(prediction.output);
            }
            (stack(outputs), model_version.unwrap_or_default())
        }
    };
    let requested: Vec<&str> = request.outputs.iter().map(|o| o.name.as_str()).collect();
    let outputs = to_outputs(output, &requested, signature.as_ref())?;
    let mut response = axum::Json(json!({
        "model_name": name,
        "model_version": model_version,
        "id": request.id.unwrap_or_else(|| request_id.clone()),
        "outputs": outputs,
    }))
    .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&model_version) {
        headers.insert(MODEL_VERSION_HEADER, value);
    }
    Ok(response)
}

/// The predict calls an inference request makes.
#[derive(Debug)]
enum Predicts {
    /// One prediction.
    One(PredictRequest),
    /// One prediction per row of a batch, in row order.
    Rows(Vec<PredictRequest>),
}

/// Runs a batch's rows, at most as many at once as a core `Runner` would (the endpoint's
/// `threads` or `max_batch_size`, at most its `concurrency`), so that a batching predictor
/// gets them grouped into `predict_batch` calls. Each row runs in its own task: a caller that
/// hangs up does not cancel rows already started, so each of them is recorded.
async fn predict_rows(
    endpoint: &Arc<DynEndpoint>,
    rows: Vec<PredictRequest>,
) -> Vec<Result<Prediction, Error>> {
    if rows.len() == 1 {
        // A batch of one, the clients' default: no task to spawn.
        let row = rows.into_iter().next().expect("one row");
        return vec![endpoint.predict(row).await];
    }
    let workers = &endpoint.spec().server.workers;
    let at_once = workers
        .threads
        .max(workers.max_batch_size)
        .min(workers.concurrency)
        .max(1);
    let slots = Arc::new(Semaphore::new(at_once));
    let mut running = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let endpoint = Arc::clone(endpoint);
        running.push(tokio::spawn(async move {
            let _slot = slot;
            endpoint.predict(row).await
        }));
    }
    let mut results = Vec::with_capacity(running.len());
    for task in running {
        results.push(task.await.unwrap_or_else(|e| {
            Err(Error::Panicked {
                message: e.to_string(),
            })
        }));
    }
    results
}

/// Row answers as one answer of N rows: objects with the same keys become one object of
/// N-element arrays (one output tensor per key), anything else an N-element array.
fn stack(rows: Vec<Value>) -> Value {
    let same_keys = match rows.first() {
        Some(Value::Object(first)) => rows.iter().all(|row| {
            matches!(row, Value::Object(o)
                if o.len() == first.len() && first.keys().all(|k| o.contains_key(k)))
        }),
        _ => false,
    };
    if !same_keys {
        return Value::Array(rows);
    }
    let mut columns = Map::new();
    for row in rows {
        let Value::Object(entries) = row else {
            continue;
        };
        for (key, value) in entries {
            if let Value::Array(column) = columns
                .entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                column.push(value);
            }
        }
    }
    Value::Object(columns)
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
) -> Result<(InferenceRequest, Predicts, String), (Error, String)> {
    let header_id = caller_request_id(headers).map_err(|error| (error, new_request_id()))?;
    let refused = |error: Error| (error, header_id.clone().unwrap_or_else(new_request_id));
    authorize_oip(route, headers).map_err(refused)?;
    check_content_type(headers).map_err(refused)?;
    let spec = route.endpoint.spec();
    let limit = spec.server.workers.max_body_bytes;
    let bytes = read_body(body, limit, state.body_timeout, arrival)
        .await
        .map_err(refused)?;
    if headers.contains_key(BINARY_HEADER) {
        return Err(refused(Error::invalid_request(format!(
            "the binary tensor data extension (`{BINARY_HEADER}`) is not supported: send \
             tensors as JSON `data` (Triton's clients: binary_data=False)"
        ))));
    }
    let request: InferenceRequest = serde_json::from_slice(&bytes).map_err(|e| {
        refused(Error::invalid_request(format!(
            "not an OIP inference request: {e}"
        )))
    })?;
    if let Some(id) = &request.id {
        check_request_id(id, "id").map_err(refused)?;
    }
    let request_id = request
        .id
        .clone()
        .filter(|id| usable_request_id(id))
        .or_else(|| header_id.clone())
        .unwrap_or_else(new_request_id);
    let inputs =
        to_inputs(&request.inputs, signature, bytes.len()).map_err(|e| (e, request_id.clone()))?;
    let predict = |input: Input, id: &str| {
        let predict = routed_request(input, headers, arrival).with_request_id(id);
        match version {
            Some(version) => predict.with_version(version),
            None => predict,
        }
    };
    let predicts = match inputs {
        Inputs::One(input) => Predicts::One(predict(input, &request_id)),
        Inputs::Rows(mut rows) if rows.len() == 1 => {
            Predicts::Rows(vec![predict(rows.remove(0), &request_id)])
        }
        Inputs::Rows(rows) => {
            let keyed = headers
                .get(crate::service::ROUTING_KEY_HEADER)
                .is_some_and(|v| !v.is_empty());
            Predicts::Rows(
                rows.into_iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let row = predict(row, &format!("{request_id}-{i}"));
                        if keyed {
                            row
                        } else {
                            row.with_routing_key(&request_id)
                        }
                    })
                    .collect(),
            )
        }
    };
    Ok((request, predicts, request_id))
}

/// Decodes an infer body as the route does, without a signature: the input of each
/// prediction it asks for, or the message the caller would get. For the fuzz target.
pub(crate) fn decode_infer_body(body: &[u8]) -> Result<Vec<Value>, String> {
    let request: InferenceRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let json = |input: Input| input.to_json();
    match to_inputs(&request.inputs, None, body.len()).map_err(|e| e.to_string())? {
        Inputs::One(input) => Ok(vec![json(input)]),
        Inputs::Rows(rows) => Ok(rows.into_iter().map(json).collect()),
    }
}

/// Most dimensions an input tensor's `shape` may have (Triton, numpy and ONNX allow 8 to 64).
pub(crate) const MAX_RANK: usize = 32;

/// What a request's tensors ask of the predictor.
#[derive(Debug, PartialEq)]
enum Inputs {
    /// One prediction of this input.
    One(Input),
    /// One prediction per row of the batch dimension.
    Rows(Vec<Input>),
}

/// Refuses a shape of more than [`MAX_RANK`] dimensions or more elements than a body of
/// `body_bytes` can hold, before anything is built from it.
fn check_shape(tensor: &RequestInput, body_bytes: usize) -> Result<(), Error> {
    if tensor.shape.len() > MAX_RANK {
        return Err(Error::invalid_request(format!(
            "input `{}` has {} dimensions; a shape has at most {MAX_RANK}",
            tensor.name,
            tensor.shape.len()
        )));
    }
    let elements = tensor
        .shape
        .iter()
        .try_fold(1u64, |product, &dim| product.checked_mul(dim));
    let limit = body_bytes as u64;
    match elements {
        Some(elements) if elements <= limit => Ok(()),
        _ => Err(Error::invalid_request(format!(
            "input `{}` has a shape of more elements than its body could hold: at most {limit} \
             (one per byte of the body)",
            tensor.name
        ))),
    }
}

/// The predictor's input(s) from the request's tensors; see the crate docs. `body_bytes`
/// bounds the element count of every shape.
fn to_inputs(
    inputs: &[RequestInput],
    signature: Option<&ModelSignature>,
    body_bytes: usize,
) -> Result<Inputs, Error> {
    for tensor in inputs {
        check_shape(tensor, body_bytes)?;
    }
    if let [tensor] = inputs
        && is_batch(tensor, signature)
    {
        return batch_rows(tensor, signature).map(Inputs::Rows);
    }
    to_input(inputs, signature).map(Inputs::One)
}

/// Whether a lone tensor is a batch: rank 2 or more, unless the signature declares that input
/// with the same rank and a fixed first dimension (a model whose one input is a matrix).
fn is_batch(tensor: &RequestInput, signature: Option<&ModelSignature>) -> bool {
    if tensor.shape.len() < 2 {
        return false;
    }
    let declared = signature.and_then(|s| s.inputs.iter().find(|d| d.name == tensor.name));
    !declared.is_some_and(|d| d.shape.len() == tensor.shape.len() && d.shape[0] != -1)
}

/// A batch tensor's rows, each one prediction's input.
fn batch_rows(
    tensor: &RequestInput,
    signature: Option<&ModelSignature>,
) -> Result<Vec<Input>, Error> {
    // Checked as a lone input would be (signature names included).
    let Input::Json(value) = to_input(std::slice::from_ref(tensor), signature)? else {
        unreachable!("to_input gives JSON");
    };
    let batch = tensor.shape[0];
    if batch == 0 {
        return Err(Error::invalid_request(format!(
            "input `{}` is a batch of no rows (shape {:?})",
            tensor.name, tensor.shape
        )));
    }
    let elements: u64 = tensor.shape.iter().product();
    let flat = tensor
        .data
        .as_array()
        .is_some_and(|a| !a.iter().any(Value::is_array));
    match value {
        Value::Array(rows)
            if rows.len() as u64 == batch
                && (!flat || tensor.data.as_array().map(Vec::len) == Some(elements as usize)) =>
        {
            Ok(rows.into_iter().map(Input::Json).collect())
        }
        _ => Err(Error::invalid_request(format!(
            "input `{}` of shape {:?} is a batch of {batch} rows, but its data does not hold \
             {batch} rows of {} element(s)",
            tensor.name,
            tensor.shape,
            tensor.shape[1..].iter().product::<u64>()
        ))),
    }
}

/// The predictor's input from the request's tensors; see the module docs.
fn to_input(inputs: &[RequestInput], signature: Option<&ModelSignature>) -> Result<Input, Error> {
    if inputs.is_empty() {
        return Err(Error::invalid_request(
            "an inference request needs at least one input",
        ));
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
    let mut values = ordered
        .into_iter()
        .map(tensor_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Input::Json(if values.len() == 1 {
        values.remove(0)
    } else {
        Value::Array(values)
    }))
}

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

/// The scalars of nested arrays in row-major order; iterative, whatever the nesting.
fn flatten<'a>(value: &'a Value, into: &mut Vec<&'a Value>) {
    let mut pending = vec![std::slice::from_ref(value).iter()];
    while let Some(level) = pending.last_mut() {
        match level.next() {
            None => {
                pending.pop();
            }
            Some(Value::Array(items)) => pending.push(items.iter()),
            Some(scalar) => into.push(scalar),
        }
    }
}

/// Flat row-major `items` as nested arrays of `shape` (whose product is `items.len()`), built
/// from the innermost dimension out: no recursion, whatever the rank.
fn reshape(items: &[Value], shape: &[u64]) -> Value {
    if items.is_empty() {
        return Value::Array(Vec::new());
    }
    let mut level = items.to_vec();
    for &dim in shape.iter().skip(1).rev() {
        let dim = usize::try_from(dim).unwrap_or(usize::MAX).max(1);
        let mut grouped = Vec::with_capacity(level.len() / dim);
        let mut rest = level.into_iter();
        loop {
            let chunk: Vec<Value> = rest.by_ref().take(dim).collect();
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

    fn rows(inputs: Inputs) -> Vec<Value> {
        match inputs {
            Inputs::Rows(rows) => rows.into_iter().map(|r| r.to_json()).collect(),
            Inputs::One(one) => panic!("not a batch: {one:?}"),
        }
    }

    #[test]
    fn a_leading_dimension_is_a_batch_of_rows() {
        let iris = [5.1, 3.5, 1.4, 0.2];
        let one = [input("x", vec![1, 4], "FP32", json!(iris))];
        assert_eq!(rows(to_inputs(&one, None, 100).unwrap()), vec![json!(iris)]);
        let three = [input(
            "x",
            vec![3, 4],
            "FP32",
            json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
        )];
        assert_eq!(
            rows(to_inputs(&three, None, 100).unwrap()),
            vec![
                json!([1, 2, 3, 4]),
                json!([5, 6, 7, 8]),
                json!([9, 10, 11, 12])
            ]
        );
        // Nested data, as some clients send it, gives the same rows.
        let nested = [input("x", vec![2, 2], "INT64", json!([[1, 2], [3, 4]]))];
        assert_eq!(
            rows(to_inputs(&nested, None, 100).unwrap()),
            vec![json!([1, 2]), json!([3, 4])]
        );
        let cube = [input("x", vec![2, 1, 2], "INT64", json!([1, 2, 3, 4]))];
        assert_eq!(
            rows(to_inputs(&cube, None, 100).unwrap()),
            vec![json!([[1, 2]]), json!([[3, 4]])]
        );
        // Rank 1 is still one prediction of positional arguments.
        let flat = [input("x", vec![4], "FP32", json!(iris))];
        assert_eq!(
            to_inputs(&flat, None, 100).unwrap(),
            Inputs::One(Input::Json(json!(iris)))
        );
        // A signature that fixes the first dimension makes the tensor one input (a matrix).
        let matrix = ModelSignature {
            inputs: vec![TensorSpec::new("x", "INT64", vec![2, 2])],
            ..ModelSignature::default()
        };
        assert_eq!(
            to_inputs(&nested, Some(&matrix), 100).unwrap(),
            Inputs::One(Input::Json(json!([[1, 2], [3, 4]])))
        );
        let batched = ModelSignature {
            inputs: vec![TensorSpec::new("x", "INT64", vec![-1, 2])],
            ..ModelSignature::default()
        };
        assert_eq!(
            rows(to_inputs(&nested, Some(&batched), 100).unwrap()).len(),
            2
        );
        for (shape, data) in [(vec![3, 4], json!([1, 2, 3])), (vec![0, 4], json!([]))] {
            let error = to_inputs(&[input("x", shape, "INT64", data)], None, 100).unwrap_err();
            assert_eq!(error.status(), 400, "{error}");
            assert!(error.to_string().contains("batch"), "{error}");
        }
    }

    #[test]
    fn rows_answers_stack_into_n_row_outputs() {
        let labels = stack(vec![json!("setosa"), json!("virginica")]);
        assert_eq!(
            to_outputs(labels, &[], None).unwrap(),
            vec![
                json!({"name": "output0", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]})
            ]
        );
        let vectors = stack(vec![json!([1, 2]), json!([3, 4]), json!([5, 6])]);
        assert_eq!(
            to_outputs(vectors, &[], None).unwrap()[0]["shape"],
            json!([3, 2])
        );
        let named = stack(vec![
            json!({"label": "a", "score": 0.5}),
            json!({"label": "b", "score": 0.25}),
        ]);
        assert_eq!(named, json!({"label": ["a", "b"], "score": [0.5, 0.25]}));
        let mixed = stack(vec![json!({"a": 1}), json!({"b": 1})]);
        assert_eq!(mixed, json!([{"a": 1}, {"b": 1}]));
    }

    #[test]
    fn shapes_are_bounded_before_any_work() {
        let deep = input("x", vec![1; 7_000], "FP32", json!([5.1]));
        let error = to_inputs(&[deep], None, 21_000).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.to_string().contains("at most 32"), "{error}");
        let widest = input("x", vec![1; MAX_RANK], "FP32", json!([5.1]));
        assert!(to_inputs(&[widest], None, 100).is_ok());
        for shape in [vec![u64::MAX, 2], vec![1 << 32, 1 << 32], vec![101]] {
            let error = to_inputs(&[input("x", shape, "FP32", json!([1]))], None, 100).unwrap_err();
            assert!(error.to_string().contains("at most 100"), "{error}");
        }
        // The protocol's own example: a shape may claim more elements than `data` holds.
        assert!(to_inputs(&[input("x", vec![3], "BOOL", json!([true]))], None, 100).is_ok());
    }

    #[test]
    fn the_7000_dimension_body_is_refused_without_overflowing_the_stack() {
        let ones = vec!["1"; 7_000].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"x","shape":[{ones}],"datatype":"FP32","data":[5.1]}}]}}"#
        );
        let error = decode_infer_body(body.as_bytes()).unwrap_err();
        assert!(error.contains("at most 32"), "{error}");
    }

    #[test]
    fn reshape_and_flatten_are_inverse_at_every_rank() {
        let items: Vec<Value> = (0..24).map(|i| json!(i)).collect();
        for shape in [vec![24], vec![2, 12], vec![2, 3, 4], vec![1, 2, 1, 3, 4, 1]] {
            let nested = reshape(&items, &shape);
            let mut flat = Vec::new();
            flatten(&nested, &mut flat);
            assert_eq!(
                flat.into_iter().cloned().collect::<Vec<_>>(),
                items,
                "{shape:?}"
            );
            assert_eq!(
                rectangular_shape(&nested).unwrap(),
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>()
            );
        }
        assert_eq!(reshape(&[], &[2, 0]), json!([]));
        // Deep nesting flattens without recursion.
        let mut deep = json!(1);
        for _ in 0..10_000 {
            deep = Value::Array(vec![deep]);
        }
        let mut flat = Vec::new();
        flatten(&deep, &mut flat);
        assert_eq!(flat, [&json!(1)]);
        // Dropping a 10,000-deep value recurses in serde_json; unwrap it level by level.
        while let Value::Array(mut items) = deep {
            deep = items.pop().unwrap_or(Value::Null);
        }
    }

    /// Random shapes and data through the parser: it never panics, and what it accepts obeys
    /// the limits and the batch rule. A cheap stand-in for the fuzz target on stable.
    #[test]
    fn random_shapes_obey_the_limits_and_the_batch_rule() {
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
            let bytes = serde_json::to_vec(&body).unwrap();
            let elements = shape.iter().try_fold(1u64, |p, &d| p.checked_mul(d));
            match decode_infer_body(&bytes) {
                Ok(predictions) => {
                    assert!(rank <= MAX_RANK, "{shape:?}");
                    assert!(
                        elements.is_some_and(|e| e <= bytes.len() as u64),
                        "{shape:?}"
                    );
                    if rank >= 2 {
                        assert_eq!(predictions.len() as u64, shape[0], "{shape:?}");
                        let row: u64 = shape[1..].iter().product();
                        for prediction in &predictions {
                            let mut flat = Vec::new();
                            flatten(prediction, &mut flat);
                            assert_eq!(flat.len() as u64, row, "{shape:?}");
                        }
                    } else {
                        assert_eq!(predictions.len(), 1);
                    }
                }
                Err(error) => assert!(
                    rank > MAX_RANK
                        || elements.is_none_or(|e| e > bytes.len() as u64)
                        || (rank >= 2
                            && (elements == Some(0) || elements != Some(data.len() as u64))),
                    "{shape:?} with {} elements: {error}",
                    data.len()
                ),
            }
        }
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
