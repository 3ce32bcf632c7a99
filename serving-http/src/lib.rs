//! The web-service endpoint of `serving`: a REST API around a model, in the original product's
//! wire format, on axum.
//!
//! ```text
//! POST /api/v1/endpoints/{name}
//! Cnvrg-Api-Key: <token>
//! Content-Type: application/json
//!
//! {"input_params": [5.1, 3.5, 1.4, 0.2]}   →   200 {"prediction": "setosa"}
//! ```
//!
//! A body not wrapped in `input_params` is taken as the input itself. Errors are
//! `{"error": "..."}`: 400 malformed input, 401 missing or wrong token, 404 unknown endpoint,
//! 408 body too slow, 413 body over the endpoint's limit, 415 not JSON, 422 input the predictor
//! rejected, 500 predictor failure or panic, 503 not ready or overloaded (with `Retry-After`),
//! 504 predictor timeout. Error texts are cropped to the endpoint's
//! [`max_value_chars`](serving_core::LoggingSpec::max_value_chars), as logged values are.
//! `GET /healthz` and `GET /readyz` report liveness and readiness.
//!
//! `GET /openapi.json` serves an OpenAPI 3.1 document of every route below, generated from
//! the Rust types ([`WebService::openapi`]); it needs no token (it holds no secret).
//!
//! With an [`Observability`] ([`WebServiceBuilder::observability`]) the service also serves
//! `GET /metrics` (Prometheus), `GET /dashboard`, and the charts and logs APIs under
//! `/api/v1/endpoints/{name}/`; see [`observability`]. The sinks themselves, Prometheus, the
//! drain sequence and [`shutdown_signal`] are the core's (`serving_core::observe`), shared with
//! the other transports and re-exported here.
//!
//! [`WebService::router`] merges three routers that can be mounted alone:
//! [`WebService::predict_router`] (prediction and Open Inference Protocol),
//! [`WebService::ops_router`] (health, readiness, metrics, dashboard and its APIs) and
//! [`WebService::admin_router`]; a stream or batch process serves ops and admin without
//! prediction routes. Statuses are mapped from the core's [`Outcome`](serving_core::Outcome)
//! here, at the HTTP edge ([`status_of`]).
//!
//! ```no_run
//! use serving_core::{predictor_fn, ModelEndpoint, Result};
//! use serving_http::{shutdown_signal, WebService};
//!
//! # #[tokio::main] async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let model = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
//! let endpoint = ModelEndpoint::builder("adder", model).build()?;
//! let service = WebService::builder().endpoint(endpoint).build()?;
//! println!("token: {}", service.token("adder").unwrap().expose());
//! service.serve(shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! `X-Routing-Key` makes the canary split sticky for a caller; `X-Model-Version` on a request
//! asks for that version (stable, candidate or shadow), bypassing the split. Every answer
//! names the version that made it in `x-model-version`.
//!
//! ## Admin API
//!
//! Every route requires `Authorization: Bearer <admin token>` (see
//! [`WebService::admin_token`](crate::WebService::admin_token)); a missing or wrong token is
//! 401, a prediction token is 403. Under `/api/v1/admin/endpoints/{name}`:
//!
//! | Method | Path | Body | Does |
//! |---|---|---|---|
//! | GET | (nothing) or `/status` | | status: versions serving, shares, stats, shadow comparison, canary |
//! | GET | `/versions`, `/versions/{v}` | | version history; one version with its recent request stats |
//! | GET | `/events` | | lifecycle events (decisions included) |
//! | GET | `/spec` | | the spec to deploy it again |
//! | POST | `/update` | `{"version", "model"?, "description"?, "preprocess"?, "canary_percent"?}` | roll out a registered version |
//! | POST | `/canary` | `{"percent"}` | set the candidate's share |
//! | PUT | `/canary/policy` | a canary policy, or `null` | set the automated canary's rules |
//! | POST | `/canary/evaluate` | | evaluate the automated canary now |
//! | POST | `/promote` | | make the candidate stable |
//! | POST | `/rollback` | `{"version"?}` | drop the candidate, or revert to the previous (or named) version |
//! | POST | `/shadow` | `{"version", "model"?, "preprocess"?, "percent"}` | mirror a share of traffic to a registered version |
//! | POST | `/shadow/share` | `{"percent"}` | set the shadow's share |
//! | DELETE | `/shadow` | | stop mirroring |
//! | GET, PUT | `/autoscale` | `{"min_replicas", "max_replicas"}` | replica bounds |
//! | POST | `/triggers` | `{"title", "severity"?, "metric", "comparison", "threshold", "every_secs", "min_events"?, "model_version"?, "cooldown_secs"?, "action": {"type": "webhook", "url", "secret"?} \| {"type": "email", "to": [...]}}` | add a trigger: `201 {"id"}`; a bad rule is a 400 naming the field |
//! | GET | `/triggers` | | each trigger with its rule, state, counters and recent alerts |
//! | DELETE | `/triggers/{id}` | | stop and remove a trigger |
//!
//! Changes answer `{"version": <the version concerned>, "status": <status>}`. Rolling out new
//! predictor code is Rust-only ([`serving_core::Lifecycle::update_model`]); over REST, `update`
//! and `shadow` deploy versions registered in the endpoint's
//! [`ModelRegistry`](serving_core::ModelRegistry). Every change that succeeds writes one
//! `admin change` event (target `serving::admin`) with the fields `who` (`admin`), `endpoint`,
//! `action`, and `before` and `after`: the stable version, candidate, shadow, canary policy and
//! autoscale bounds as JSON.
//!
//! With [`WebServiceBuilder::feedback_loops`], the admin API also starts, lists and stops each
//! endpoint's feedback loops (exports of its prediction log into a dataset, now or on a schedule):
//! `POST /feedback` with `{"dataset", "schedule": "now" | {"every_secs": N} | {"cron": "…"},
//! "format"?: "csv" | "jsonl"}` answers `201` with the loop and its `id`; `GET /feedback` lists them
//! with their exports (file, records, time range); `GET` and `DELETE /feedback/{id}` read and stop
//! one. A bad field is a 400 naming it. `GET /api/v1/endpoints/{name}/feedback`, with the
//! endpoint's token, is the list the dashboard's Logs tab shows.
//!
//! ## Open Inference Protocol
//!
//! | Method | Path | Auth |
//! |---|---|---|
//! | GET | `/v2` (server metadata), `/v2/health/live`, `/v2/health/ready` | none |
//! | GET | `/v2/models/{name}[/versions/{v}]/ready` | none |
//! | GET | `/v2/models/{name}[/versions/{v}]` (model metadata) | prediction token |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | prediction token |
//!
//! A model is an endpoint, by name. The prediction token goes in `Cnvrg-Api-Key` or
//! `Authorization: Bearer`. Addressing a version bypasses the canary split; without one, the
//! split (sticky with `X-Routing-Key`) chooses.
//!
//! ### How tensors map to a predictor's input
//! - Each input tensor becomes one value: `data` reshaped to nested arrays of `shape` when it
//!   is flat and holds exactly as many elements as the shape, else taken as sent (the protocol
//!   lets servers coerce; its own published example sends `"shape": [3]` with one element).
//!   A rank-0 shape gives the single element.
//! - One input tensor: its value is the input, so a `[4]` tensor reaches a four-argument
//!   predictor as four positional arguments, like `{"input_params": [a, b, c, d]}`. Several:
//!   a JSON array of their values, one positional argument per tensor, in the order of the
//!   spec's [`ModelSignature`](serving_core::ModelSignature) inputs (matched by name) when it
//!   declares them, else in request order.
//! - **A leading batch dimension** makes one prediction per row: when every input tensor has
//!   one more dimension than the signature declares for it (or, without a declared shape, two
//!   or more dimensions) and they agree on the first, a `[N, k]` tensor is N predictions of a
//!   k-argument predictor. So `[1, 4]`, what Triton's and KServe's clients send for one row, is
//!   one prediction. Rows run at once (at most the endpoint's `concurrency`), so a batching
//!   predictor (`max_batch_size`) gets them in one `predict_batch`; each row is one record,
//!   with the request id suffixed `-{row}` when there are several, and takes the request's side of a canary split.
//!   The answers stack into output tensors with N rows; a failing row fails the request,
//!   naming the row. A predictor that takes a matrix whole declares its rank in the signature
//!   (`[-1, 2]`).
//! - Shapes are bounded before any work: at most 32 dimensions and 2^32 elements (more than the
//!   largest body holds); beyond either the request is a 400.
//! - Tensors travel as JSON `data`: the binary tensor data extension
//!   (`Inference-Header-Content-Length`) is refused with a 400 that says so (Triton's clients:
//!   `binary_data=False`).
//! - Elements are checked against `datatype`: `BOOL` booleans, `UINT*`/`INT*` integers in
//!   range, `FP*` numbers, `BYTES` strings; anything else is a 400.
//!
//! ### How the answer maps to output tensors
//! - A JSON object answer gives one tensor per entry, named by its key; any other answer one
//!   tensor, named after the first requested output, else the signature's first output, else
//!   `output0`. When the request lists `outputs`, only those are returned.
//! - A tensor's `shape` is the nesting of arrays (a scalar is `[1]`), its `data` the elements
//!   flattened in row-major order. Its `datatype` is the signature's when declared, else
//!   inferred: `BOOL`, `INT64`, `FP64`, or `BYTES` for strings. Values are not narrowed: a
//!   declared `FP32` output carries the numbers the predictor returned.
//! - An answer that is not a rectangular array of one kind of element is one `BYTES` element
//!   holding its JSON text.

mod auth;
mod batches;
mod config;
mod control;
mod dashboard;
mod error;
mod feedback;
pub mod observability;
mod oip;
mod openapi;
mod server;
mod service;
mod triggers;

#[doc(hidden)]
pub mod __fuzz {
    pub use crate::fuzz::{decode_body, decode_files, decode_oip};
}
mod fuzz;

pub use auth::{TOKEN_HEADER, Token};
pub use config::{WebServiceConfig, WebServiceKey};
pub use error::{outcome_status, status_of};
pub use observability::Observability;
pub use service::{
    ADMIN_TOKEN_ENV, MODEL_VERSION_HEADER, REQUEST_ID_HEADER, ROUTING_KEY_HEADER, WebService,
    WebServiceBuilder,
};
/// Moved to the core (`serving_core::observe`) so that every transport drains and exports
/// alike; re-exported where they were.
pub use serving_core::observe::{METRICS_CONTENT_TYPE, PrometheusMetrics, shutdown_signal};
