//! The servers under test. Each runs in a child process of the bench binary (see
//! [`serve_from_env`]) so that it can be pinned to its own core and its memory read alone.

use std::io::Read as _;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serving::http::{Observability, Token, WebService};
use serving::prediction_log::PredictionLog;
use serving::{ModelEndpoint, ModelEndpointBuilder, Result, predictor_fn};
use tokio::net::TcpListener;

use super::{SERVE_ENV, TOKEN};

/// The quickstart's iris model (KNN behind a standardising preprocess), reused as it is.
#[path = "../../examples/models/iris.rs"]
#[allow(dead_code, missing_docs)]
mod iris;

/// What our web service runs with in every benchmark (see [`Observed`]).
pub const OBSERVABILITY: &str = "Observability on: Prometheus /metrics, per-minute charts, recent \
    history, and the PredictionLog writing JSON-lines segments through object_store to a \
    temporary directory on local disk";

/// The ONE place that turns prediction logging and metrics on for our web service under test:
/// the `Observability` bundle with a `PredictionLog`, as the quickstart runs it.
pub struct Observed {
    observability: Observability,
    /// Where the prediction log writes; removed when the server stops.
    dir: tempfile::TempDir,
}

impl Observed {
    /// A fresh bundle with its own prediction-log directory. Needs a Tokio runtime.
    pub fn new() -> Observed {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = PredictionLog::builder()
            .with_dir(dir.path())
            .build()
            .expect("a prediction log");
        Observed {
            observability: Observability::new().with_prediction_log(log),
            dir,
        }
    }

    /// `builder` with the bundle's metric and record sinks.
    pub fn endpoint(&self, builder: ModelEndpointBuilder) -> ModelEndpoint {
        self.observability
            .instrument(builder)
            .build()
            .expect("valid endpoint")
    }

    /// A web service with auth on serving `endpoint`, with the bundle's routes (`/metrics`, …).
    pub fn service(self, endpoint: ModelEndpoint) -> (WebService, tempfile::TempDir) {
        let service = WebService::builder()
            .endpoint_with_token(endpoint, Token::new(TOKEN))
            .observability(self.observability)
            .build()
            .expect("valid service");
        (service, self.dir)
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
            "bare" => ("/predict", serve_bare(bare_router(), listener, stop)),
            "bare-2us" => (
                "/predict",
                serve_bare(bare_router_with_work(BUSY_WORK), listener, stop),
            ),
            other => {
                let (path, service, dir) = our_service(other);
                let serve: Serving = Box::pin(async move {
                    service
                        .serve_on(listener, stop)
                        .await
                        .expect("web service runs");
                    drop(dir);
                });
                (path, serve)
            }
        };
        println!("PORT {port}\nPATH {path}\nREADY");
        serve.await;
    });
    true
}

type Serving = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The physical limit: axum alone parsing the same JSON, checking the token, summing four
/// floats and replying in JSON.
fn serve_bare(
    router: Router,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Serving {
    Box::pin(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
            .expect("bare server runs");
    })
}

/// The busy work of the `bare-2us` server: what 2 µs more per request cost the bare server on
/// this machine, to read the other rows' ratios by.
pub const BUSY_WORK: Duration = Duration::from_micros(2);

/// The bare server's routes: `POST /predict`.
pub fn bare_router() -> Router {
    bare_router_with_work(Duration::ZERO)
}

/// The bare server, spinning for `work` in each request before answering.
fn bare_router_with_work(work: Duration) -> Router {
    #[derive(Deserialize)]
    struct Request {
        input_params: [f64; 4],
    }
    #[derive(Serialize)]
    struct Reply {
        prediction: f64,
    }
    let predict = move |headers: HeaderMap, Json(request): Json<Request>| async move {
        if !work.is_zero() {
            let started = Instant::now();
            while started.elapsed() < work {
                std::hint::spin_loop();
            }
        }
        answer(&headers, &request)
    };
    fn answer(headers: &HeaderMap, request: &Request) -> Response {
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

/// Our web service for server `kind` (`serving`, `serving-pool`, `serving-adaptive`, `iris`,
/// `serving-unlogged`),
/// the path its predictions are served at, and its prediction log's directory (if any), which
/// must outlive it. Needs a Tokio runtime.
pub fn our_service(kind: &str) -> (&'static str, WebService, Option<tempfile::TempDir>) {
    let sum = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) });
    let sum_path = "/api/v1/endpoints/sum";
    let observed = Observed::new();
    let (path, endpoint) = match kind {
        "serving" => (
            sum_path,
            observed.endpoint(ModelEndpoint::builder("sum", sum.inline())),
        ),
        "serving-pool" => (
            sum_path,
            observed.endpoint(ModelEndpoint::builder("sum", sum.on_pool())),
        ),
        "serving-adaptive" => (
            sum_path,
            observed.endpoint(ModelEndpoint::builder("sum", sum)),
        ),
        "iris" => {
            // The quickstart's model, built as the quickstart builds it.
            let model = iris::Iris::train().expect("the iris dataset trains");
            (
                "/api/v1/endpoints/iris",
                observed.endpoint(model.endpoint("iris")),
            )
        }
        "serving-unlogged" => {
            // No observability at all: the endpoint's default in-memory metrics only.
            let endpoint = ModelEndpoint::builder("sum", sum.inline())
                .build()
                .expect("valid endpoint");
            let service = WebService::builder()
                .endpoint_with_token(endpoint, Token::new(TOKEN))
                .build()
                .expect("valid service");
            return (sum_path, service, None);
        }
        other => panic!("unknown server kind `{other}`"),
    };
    let (service, dir) = observed.service(endpoint);
    (path, service, Some(dir))
}
