//! The servers under test. Each runs in a child process of the bench binary (see
//! [`serve_from_env`]) so that it can be pinned to its own core and its memory read alone.

use std::io::Read as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serving::http::{Token, WebService};
use serving::{
    DynMetricSink, DynRecordSink, InMemoryMetrics, ModelEndpoint, ModelEndpointBuilder,
    PredictionRecord, RecordSink, Result, predictor_fn,
};
use tokio::net::TcpListener;

use super::{SERVE_ENV, TOKEN};

/// The quickstart's iris model (KNN behind a standardising preprocess), reused as it is.
#[path = "../../examples/models/iris.rs"]
#[allow(dead_code, missing_docs)]
mod iris;

/// What our web service runs with in every benchmark: the ONE place that turns prediction
/// logging and metrics on.
pub const OBSERVABILITY: &str = "metrics: InMemoryMetrics (bounded, 10k events); prediction log: \
    every record serialized to JSON lines on a background thread, bounded queue, then discarded \
    (issue 3's object_store sink and Prometheus /metrics replace these when they land)";

/// Turns metrics and prediction logging on for an endpoint under test.
pub fn observed(builder: ModelEndpointBuilder) -> ModelEndpointBuilder {
    let metrics: Arc<DynMetricSink> = Arc::new(InMemoryMetrics::new());
    let records: Arc<DynRecordSink> = Arc::new(JsonLinesRecords::start(10_000));
    builder.metric_sink(metrics).record_sink(records)
}

/// A prediction log that serializes each record to a JSON line off the request path, the work
/// a real log sink does before it writes. Records wait in a bounded buffer that a writer
/// thread drains every 10 ms (waking it per record would cost a context switch each); when
/// the buffer is full, records are dropped and counted.
#[derive(Debug)]
pub struct JsonLinesRecords {
    buffer: Arc<Mutex<Vec<PredictionRecord>>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl JsonLinesRecords {
    /// Starts the writer thread with a buffer of `capacity` records.
    pub fn start(capacity: usize) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::with_capacity(capacity)));
        let drained = Arc::downgrade(&buffer);
        std::thread::spawn(move || write_lines(&drained));
        JsonLinesRecords {
            buffer,
            capacity,
            dropped: AtomicU64::new(0),
        }
    }
}

fn write_lines(buffer: &Weak<Mutex<Vec<PredictionRecord>>>) {
    let mut line = Vec::with_capacity(1024);
    let mut sink = std::io::sink();
    let mut batch = Vec::new();
    while let Some(buffer) = buffer.upgrade() {
        std::mem::swap(&mut *buffer.lock().expect("not poisoned"), &mut batch);
        drop(buffer);
        for record in batch.drain(..) {
            line.clear();
            serde_json::to_writer(&mut line, &record).expect("records serialize");
            line.push(b'\n');
            std::io::Write::write_all(&mut sink, &line).expect("sink accepts everything");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl RecordSink for JsonLinesRecords {
    fn record(&self, record: PredictionRecord) {
        let mut buffer = self.buffer.lock().expect("not poisoned");
        if buffer.len() < self.capacity {
            buffer.push(record);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// If this process was started as a server ([`SERVE_ENV`] set), serves until stdin closes and
/// returns true.
pub fn serve_from_env() -> bool {
    let Ok(kind) = std::env::var(SERVE_ENV) else {
        return false;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime starts");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback bind");
        let port = listener.local_addr().expect("bound").port();
        let stop = async {
            // The parent closes our stdin to stop us.
            let _ =
                tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
        };
        let (path, serve) = match kind.as_str() {
            "bare" => ("/predict", serve_bare(listener, stop)),
            "serving" => (
                "/api/v1/endpoints/sum",
                serve_ours(listener, stop, sum_endpoint(true)),
            ),
            "serving-pool" => (
                "/api/v1/endpoints/sum",
                serve_ours(listener, stop, sum_endpoint(false)),
            ),
            "iris" => (
                "/api/v1/endpoints/iris",
                serve_ours(listener, stop, iris_endpoint()),
            ),
            "serving-unlogged" => (
                "/api/v1/endpoints/sum",
                serve_ours(listener, stop, unlogged_sum_endpoint()),
            ),
            other => panic!("unknown server kind `{other}`"),
        };
        println!("PORT {port}\nPATH {path}\nREADY");
        serve.await;
    });
    true
}

type Serving = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The physical limit: axum alone parsing the same JSON, checking the token, summing four
/// floats and replying in JSON.
fn serve_bare(listener: TcpListener, stop: impl Future<Output = ()> + Send + 'static) -> Serving {
    let router = bare_router();
    Box::pin(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
            .expect("bare server runs");
    })
}

/// The bare server's routes: `POST /predict`.
pub fn bare_router() -> Router {
    #[derive(Deserialize)]
    struct Request {
        input_params: [f64; 4],
    }
    #[derive(Serialize)]
    struct Reply {
        prediction: f64,
    }
    async fn predict(headers: HeaderMap, Json(request): Json<Request>) -> Response {
        let authorized = headers
            .get("cnvrg-api-key")
            .is_some_and(|given| given.as_bytes() == TOKEN.as_bytes());
        if !authorized {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        Json(Reply {
            prediction: request.input_params.iter().sum(),
        })
        .into_response()
    }
    Router::new().route("/predict", post(predict))
}

/// Our web service's routes for server `kind` (`serving`, `serving-unlogged`, ...), with the
/// path its predictions are served at.
pub fn our_router(kind: &str) -> (&'static str, Router) {
    let endpoint = match kind {
        "serving" => sum_endpoint(true),
        "serving-pool" => sum_endpoint(false),
        "serving-unlogged" => unlogged_sum_endpoint(),
        other => panic!("unknown server kind `{other}`"),
    };
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .build()
        .expect("valid service");
    ("/api/v1/endpoints/sum", service.router())
}

/// A trivial model: the sum of four floats, through `predictor_fn`, run inline or on the
/// blocking pool (the default).
fn sum_endpoint(inline: bool) -> ModelEndpoint {
    let sum = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) });
    let sum = if inline { sum.inline() } else { sum };
    observed(ModelEndpoint::builder("sum", sum))
        .build()
        .expect("valid endpoint")
}

/// The quickstart's model, as the quickstart builds it, with logging and metrics on.
fn iris_endpoint() -> ModelEndpoint {
    let model = iris::Iris::train().expect("the iris dataset trains");
    observed(model.endpoint("iris"))
        .build()
        .expect("valid endpoint")
}

/// The inline sum with the default in-memory metrics and no prediction log, to show what
/// logging costs.
fn unlogged_sum_endpoint() -> ModelEndpoint {
    let sum = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) });
    ModelEndpoint::builder("sum", sum.inline())
        .build()
        .expect("valid endpoint")
}

/// Our web service with auth on, serving `endpoint`.
fn serve_ours(
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
    endpoint: ModelEndpoint,
) -> Serving {
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .build()
        .expect("valid service");
    Box::pin(async move {
        service
            .serve_on(listener, stop)
            .await
            .expect("web service runs");
    })
}
