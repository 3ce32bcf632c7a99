//! The servers under test. Each runs in a child process of the bench binary (see
//! [`serve_from_env`]) so that it can be pinned to its own core and its memory read alone.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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
/// a real log sink does before it writes, with a bounded queue that drops and counts when full.
#[derive(Debug)]
pub struct JsonLinesRecords {
    queue: SyncSender<PredictionRecord>,
    dropped: AtomicU64,
}

impl JsonLinesRecords {
    /// Starts the writer thread with a queue of `capacity` records.
    pub fn start(capacity: usize) -> Self {
        let (queue, records) = sync_channel(capacity);
        std::thread::spawn(move || write_lines(&records));
        JsonLinesRecords {
            queue,
            dropped: AtomicU64::new(0),
        }
    }
}

fn write_lines(records: &Receiver<PredictionRecord>) {
    let mut line = Vec::with_capacity(1024);
    let mut sink = std::io::sink();
    for record in records {
        line.clear();
        serde_json::to_writer(&mut line, &record).expect("records serialize");
        line.push(b'\n');
        std::io::Write::write_all(&mut sink, &line).expect("sink accepts everything");
    }
}

impl RecordSink for JsonLinesRecords {
    fn record(&self, record: PredictionRecord) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(record) {
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback bind");
        let port = listener.local_addr().expect("bound").port();
        let stop = async {
            // The parent closes our stdin to stop us.
            let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
                .await;
        };
        let (path, serve) = match kind.as_str() {
            "bare" => ("/predict", serve_bare(listener, stop)),
            "serving" => ("/api/v1/endpoints/sum", serve_ours(listener, stop, sum_endpoint())),
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
    let router = Router::new().route("/predict", post(predict));
    Box::pin(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
            .expect("bare server runs");
    })
}

/// A trivial model: the sum of four floats, through `predictor_fn`.
fn sum_endpoint() -> ModelEndpoint {
    let sum = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) });
    observed(ModelEndpoint::builder("sum", sum))
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
