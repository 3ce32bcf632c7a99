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
//! 504 predictor timeout. `GET /healthz` and `GET /readyz` report liveness and readiness.
//!
//! With an [`Observability`] ([`WebServiceBuilder::observability`]) the service also serves
//! `GET /metrics` (Prometheus), `GET /dashboard`, and the charts and logs APIs under
//! `/api/v1/endpoints/{name}/`; see [`observability`].
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

mod auth;
mod config;
mod dashboard;
mod error;
mod files;
pub mod observability;
mod prometheus;
mod service;

pub use auth::{TOKEN_HEADER, Token};
pub use config::WebServiceConfig;
pub use observability::Observability;
pub use prometheus::{METRICS_CONTENT_TYPE, PrometheusMetrics};
pub use service::{
    MODEL_VERSION_HEADER, REQUEST_ID_HEADER, WebService, WebServiceBuilder, shutdown_signal,
};
