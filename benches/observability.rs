//! What recording and measuring every prediction costs: the same endpoint with the prediction
//! log, Prometheus, charts and history on, against the same endpoint with all of them off, in
//! one run, runs interleaved so that both see the same machine load.
//!
//! ```text
//! cargo bench --bench observability                      # 5 runs of 3 s per configuration
//! cargo bench --bench observability -- --runs 7 --seconds 5 --concurrency 32
//! ```
//!
//! Two measurements: over HTTP on loopback (what a client sees) and in process, calling
//! `Endpoint::predict` directly (the overhead alone, with nothing else to hide it). The model
//! is trivial on purpose, so the ratio is the worst case. Prints medians and the on/off ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use serving::http::{Observability, Token, WebService};
use serving::prediction_log::PredictionLog;
use serving::{
    Endpoint, MetricSample, MetricSink, ModelEndpoint, PredictRequest, RequestEvent, Result,
    log_metric, predictor_fn,
};
use tokio::net::TcpListener;

const TOKEN: &str = "bench-token";

/// Measures nothing: the "off" configuration.
#[derive(Debug)]
struct NoMetrics;

impl MetricSink for NoMetrics {
    fn record_request(&self, _: &RequestEvent) {}
    fn record_metric(&self, _: &MetricSample) {}
    fn recent_metric(&self, _: &str, _: &str, _: SystemTime) -> Option<Vec<MetricSample>> {
        None
    }
}

struct Options {
    runs: usize,
    seconds: u64,
    concurrency: usize,
}

fn options() -> Options {
    let mut options = Options {
        runs: 5,
        seconds: 3,
        concurrency: 16,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--runs" => options.runs = value() as usize,
            "--seconds" => options.seconds = value(),
            "--concurrency" => options.concurrency = value() as usize,
            _ => {}
        }
    }
    options
}

fn endpoint(name: &str, observability: Option<&Observability>) -> ModelEndpoint {
    let model = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> {
        log_metric("sum", a + b + c + d);
        Ok(a * b + c * d)
    });
    let builder = ModelEndpoint::builder(name, model);
    match observability {
        Some(observability) => observability.instrument(builder),
        None => builder.metric_sink(Arc::new(NoMetrics)),
    }
    .build()
    .expect("a valid endpoint")
}

/// Requests per second over HTTP, `concurrency` clients for `duration`.
async fn http_rate(url: &str, concurrency: usize, duration: Duration) -> f64 {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures::stream::iter(0..concurrency)
        .for_each_concurrent(concurrency, |_| {
            let (client, done) = (client.clone(), Arc::clone(&done));
            async move {
                while started.elapsed() < duration {
                    let response = client
                        .post(url)
                        .header("Cnvrg-Api-Key", TOKEN)
                        .header("Content-Type", "application/json")
                        .body(r#"{"input_params": [5.1, 3.5, 1.4, 0.2]}"#)
                        .send()
                        .await
                        .expect("the server answers");
                    assert!(response.status().is_success());
                    response.bytes().await.expect("a body");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Predictions per second in process, `concurrency` tasks for `duration`.
async fn direct_rate(endpoint: Arc<ModelEndpoint>, concurrency: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (endpoint, done) = (Arc::clone(&endpoint), Arc::clone(&done));
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let input = serde_json::json!([5.1, 3.5, 1.4, 0.2]);
                    endpoint
                        .predict(PredictRequest::new(input))
                        .await
                        .expect("a prediction");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("the task finishes");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn row(name: &str, off: &mut [f64], on: &mut [f64]) {
    let (off, on) = (median(off), median(on));
    println!(
        "{name:<12} {off:>14.0} {on:>14.0} {:>9.3}  ({:+.1}%)",
        on / off,
        (on / off - 1.0) * 100.0
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let options = options();
    let duration = Duration::from_secs(options.seconds);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = PredictionLog::builder()
        .with_dir(dir.path())
        .build()
        .expect("a prediction log");
    let observability = Observability::new().with_prediction_log(log.clone());

    let off = endpoint("off", None);
    let on = endpoint("on", Some(&observability));
    let service = WebService::builder()
        .endpoint_with_token(off, Token::new(TOKEN))
        .endpoint_with_token(on, Token::new(TOKEN))
        .observability(observability.clone())
        .build()
        .expect("a web service");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.serve_on(listener, async {
        let _ = stopped.await;
    }));

    let direct_off = Arc::new(endpoint("direct-off", None));
    let direct_on = Arc::new(endpoint("direct-on", Some(&observability)));

    println!(
        "observability overhead: {} runs of {} s per configuration, {} concurrent clients, {} cores",
        options.runs,
        options.seconds,
        options.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Warm-up: connections, pools, first segment.
    http_rate(
        &format!("{base}/api/v1/endpoints/off"),
        options.concurrency,
        Duration::from_millis(500),
    )
    .await;
    http_rate(
        &format!("{base}/api/v1/endpoints/on"),
        options.concurrency,
        Duration::from_millis(500),
    )
    .await;

    let (mut http_off, mut http_on, mut in_off, mut in_on) = (vec![], vec![], vec![], vec![]);
    for run in 0..options.runs {
        // Alternate which goes first, so drifting machine load favours neither.
        let order = if run % 2 == 0 {
            ["off", "on"]
        } else {
            ["on", "off"]
        };
        for which in order {
            let url = format!("{base}/api/v1/endpoints/{which}");
            let rate = http_rate(&url, options.concurrency, duration).await;
            if which == "off" {
                http_off.push(rate)
            } else {
                http_on.push(rate)
            }
        }
        for which in order {
            let endpoint = if which == "off" {
                &direct_off
            } else {
                &direct_on
            };
            let rate = direct_rate(Arc::clone(endpoint), options.concurrency, duration).await;
            if which == "off" {
                in_off.push(rate)
            } else {
                in_on.push(rate)
            }
        }
        eprintln!(
            "run {}: http off {:.0}/s on {:.0}/s; in process off {:.0}/s on {:.0}/s",
            run + 1,
            http_off[run],
            http_on[run],
            in_off[run],
            in_on[run]
        );
    }

    let _ = stop.send(());
    server
        .await
        .expect("the server task")
        .expect("the server stops");
    let stats = log.stats();

    println!();
    println!(
        "{:<12} {:>14} {:>14} {:>9}",
        "medians", "off (req/s)", "on (req/s)", "on/off"
    );
    row("HTTP", &mut http_off, &mut http_on);
    row("in process", &mut in_off, &mut in_on);
    println!();
    println!(
        "prediction log: {} accepted, {} written, {} dropped (queue full), {} failed",
        stats.accepted, stats.written, stats.dropped, stats.failed
    );
}
