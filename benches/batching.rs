//! Micro-batching benchmark: one model whose cost is per call plus per input (1 ms + 50 µs per
//! input, spent on the CPU like a real model), served with and without batching under the same
//! concurrent load. Run with `cargo bench --bench batching` (or `make bench`).
//!
//! In-process: 64 tasks call the endpoint in a loop for `BENCH_SECS` (default 5) seconds.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serving::{
    BATCH_SIZE_METRIC, BatchConfig, Capabilities, Context, Endpoint as _, InMemoryMetrics, Input,
    MetricHistory as _, ModelEndpoint, PredictRequest, Predictor, Result, Value,
};

const PER_CALL: Duration = Duration::from_millis(1);
const PER_ITEM: Duration = Duration::from_micros(50);
const CALLERS: usize = 64;

/// Burns CPU for `per_call + n × per_item`, then doubles each input.
#[derive(Debug)]
struct Costly;

fn spin(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

fn double(input: &Input) -> Result<Value> {
    let x = input.to_json().as_f64().unwrap_or_default();
    Ok(Value::from(x * 2.0))
}

#[async_trait::async_trait]
impl Predictor for Costly {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        ctx.run_blocking(move || {
            spin(PER_CALL + PER_ITEM);
            double(&input)
        })
        .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default().with_batch()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        let work = move || {
            spin(PER_CALL + PER_ITEM * inputs.len() as u32);
            Ok(inputs.iter().map(double).collect::<Vec<_>>())
        };
        match ctx.run_blocking(work).await {
            Ok(outputs) => outputs,
            Err(error) => vec![Err(error)],
        }
    }
}

struct Measured {
    rps: f64,
    p50: Duration,
    p99: Duration,
    mean_batch: Option<f64>,
}

async fn measure(endpoint: Arc<ModelEndpoint>, secs: Duration) -> Measured {
    let until = Instant::now() + secs;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let endpoint = Arc::clone(&endpoint);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0.0;
                while Instant::now() < until {
                    n += 1.0;
                    let started = Instant::now();
                    let x = caller as f64 * 1e6 + n;
                    let prediction = endpoint
                        .predict(PredictRequest::new(Value::from(x)))
                        .await
                        .expect("predicts");
                    assert_eq!(prediction.output, Value::from(2.0 * x), "its own answer");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await.expect("caller ran"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Measured {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        mean_batch: None,
    }
}

fn main() {
    let secs = Duration::from_secs(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "micro-batching: model costs {PER_CALL:?} per call + {PER_ITEM:?} per input (CPU), \
         {CALLERS} concurrent callers, {}s each, {cores} cores, blocking pool = cores",
        secs.as_secs()
    );
    println!(
        "| {:<36} | {:>8} | {:>9} | {:>9} | {:>10} |",
        "mode", "req/s", "p50 ms", "p99 ms", "mean batch"
    );
    println!(
        "|{:-<38}|{:->10}|{:->11}|{:->11}|{:->12}|",
        "", "", "", "", ""
    );
    let configs = [
        ("no batching", None),
        (
            "max 32, wait 2 ms",
            Some(BatchConfig::new(32, Duration::from_millis(2))),
        ),
        (
            "max 64, wait 5 ms",
            Some(BatchConfig::new(64, Duration::from_millis(5))),
        ),
    ];
    let mut baseline = None;
    for (name, config) in configs {
        let metrics = Arc::new(InMemoryMetrics::with_capacity(1_000_000));
        let mut builder = ModelEndpoint::builder("costly", Costly).metric_sink(metrics.clone());
        if let Some(config) = config {
            builder = builder.batching(config);
        }
        let endpoint = Arc::new(builder.build().expect("valid endpoint"));
        let mut measured = runtime.block_on(measure(endpoint, secs));
        let sizes = metrics.samples("costly", BATCH_SIZE_METRIC, SystemTime::UNIX_EPOCH);
        if !sizes.is_empty() {
            measured.mean_batch =
                Some(sizes.iter().map(|s| s.value).sum::<f64>() / sizes.len() as f64);
        }
        let speedup = baseline.map_or(String::new(), |b: f64| {
            format!(" ({:.1}×)", measured.rps / b)
        });
        baseline.get_or_insert(measured.rps);
        println!(
            "| {:<36} | {:>8.0} | {:>9.2} | {:>9.2} | {:>10} |{speedup}",
            name,
            measured.rps,
            measured.p50.as_secs_f64() * 1e3,
            measured.p99.as_secs_f64() * 1e3,
            measured
                .mean_batch
                .map_or("-".to_owned(), |m| format!("{m:.1}")),
        );
    }
}
