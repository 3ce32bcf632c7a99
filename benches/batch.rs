//! Batch throughput: 1,000,000 rows × 4 float columns, generated here, predicted by a bare
//! read → sum → write program (the limit) and by our batch runs with a vectorised sum model, a
//! row-wise sum predictor and the iris model; rows/s, the ratio to bare, and each variant's
//! peak RSS (each runs in its own child process). Then a 10,000,000-row file through the
//! vectorised path, whose peak RSS must not exceed the 1M run's. Run with
//! `cargo bench --features batch --bench batch` (`BENCH_ROWS` and `BENCH_BIG_ROWS` change the
//! sizes).
//!
//! The bare program reads with the `csv` crate on one thread and sums with polars, as our
//! runs do: polars' own CSV reader is not built in (its `csv` feature would add polars-io to
//! every build of the workspace).

#[path = "../examples/models/iris.rs"]
#[allow(dead_code)]
mod iris;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serving::batch::polars::prelude::{DataFrame, Series};
use serving::batch::{BatchJobConfig, BatchService, ChunkPredictor, sum_columns};
use serving::datasets::Datasets;
use serving::{
    BatchRequest, BatchStatus, EndpointSpec, ModelRef, ModelRegistry, Result, predictor_fn,
};

#[derive(Debug)]
struct Sum;

impl ChunkPredictor for Sum {
    fn predict_chunk(&self, chunk: &DataFrame) -> Result<Series> {
        sum_columns(chunk)
    }
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn generate(path: &Path, rows: usize) {
    let file = std::fs::File::create(path).expect("create the input");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "sepal_length,sepal_width,petal_length,petal_width").unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..rows {
        let mut cell = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.1 + (state % 80) as f64 / 10.0
        };
        let (a, b, c, d) = (cell(), cell(), cell(), cell());
        writeln!(out, "{a},{b},{c},{d}").unwrap();
    }
    out.flush().unwrap();
}

/// Read → sum → write, nothing else.
fn bare(input: &Path, output: &Path) -> u64 {
    let mut reader = csv::Reader::from_path(input).unwrap();
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(output).unwrap(),
    ));
    let mut header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    header.push("prediction".to_owned());
    writer.write_record(&header).unwrap();
    let mut record = csv::StringRecord::new();
    let mut rows = 0;
    while reader.read_record(&mut record).unwrap() {
        let sum: f64 = record.iter().map(|cell| cell.parse::<f64>().unwrap()).sum();
        let sum = sum.to_string();
        writer
            .write_record(record.iter().chain(std::iter::once(sum.as_str())))
            .unwrap();
        rows += 1;
    }
    writer.flush().unwrap();
    rows
}

fn spec(name: &str, model: &str) -> EndpointSpec {
    let mut config = BatchJobConfig::default();
    config.chunk_rows = 10_000;
    let mut spec = EndpointSpec::new(name, ModelRef::new(model, "1"));
    if model == "iris-knn" {
        spec.preprocess = Some("standardise".to_owned());
    }
    spec.kind = config.into();
    spec
}

fn ours(variant: &str, input: &Path, dir: &Path) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let datasets = Datasets::local(dir.join("datasets")).unwrap();
        datasets
            .dataset("bench")
            .unwrap()
            .put("keep", serving::Bytes::from_static(b""), Default::default())
            .await
            .unwrap();
        let registry = Arc::new(ModelRegistry::new());
        registry.register("sum", "1", || {
            Ok(
                predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) })
                    .inline(),
            )
        });
        iris::Iris::train().unwrap().register(&registry);
        let service = BatchService::builder(datasets)
            .registry(registry)
            .local_input(true)
            .chunk_endpoint(spec("vectorised", "sum-v"), || Ok(Sum))
            .unwrap()
            .endpoint(spec("row-wise", "sum"))
            .unwrap()
            .endpoint(spec("iris", "iris-knn"))
            .unwrap()
            .build()
            .unwrap();
        let request = BatchRequest::new(input.display().to_string(), "out.csv", "bench");
        let run = service.run(variant, request).await.unwrap();
        assert_eq!(run.status, BatchStatus::Succeeded, "{run:?}");
        run.rows_predicted
    })
}

/// A child: runs one variant and prints `seconds rows peak_rss_kb`.
fn child(variant: &str, input: &Path, dir: &Path) {
    let start = Instant::now();
    let rows = match variant {
        "bare" => bare(input, &dir.join("bare-out.csv")),
        other => ours(other, input, dir),
    };
    println!("{} {rows} {}", start.elapsed().as_secs_f64(), peak_rss_kb());
}

fn measure(variant: &str, input: &Path) -> (f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", variant])
        .arg(input)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{variant}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let line = text.lines().last().unwrap_or_default();
    let mut fields = line.split_whitespace();
    let seconds: f64 = fields.next().unwrap().parse().unwrap();
    let rows: u64 = fields.next().unwrap().parse().unwrap();
    let rss: u64 = fields.next().unwrap().parse().unwrap();
    (seconds, rows, rss)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        child(
            &args[at + 1],
            Path::new(&args[at + 2]),
            Path::new(&args[at + 3]),
        );
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let big: usize = std::env::var("BENCH_BIG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input: PathBuf = dir.path().join("rows.csv");
    generate(&input, rows);
    println!(
        "{rows} rows x 4 float columns ({} MB)",
        std::fs::metadata(&input).unwrap().len() / 1_000_000
    );
    println!(
        "{:<12} {:>9} {:>12} {:>9} {:>12}",
        "variant", "seconds", "rows/s", "vs bare", "peak RSS MB"
    );
    let (bare_s, _, bare_rss) = measure("bare", &input);
    let mut results = vec![("bare", bare_s, bare_rss)];
    for variant in ["vectorised", "row-wise", "iris"] {
        let (seconds, predicted, rss) = measure(variant, &input);
        assert_eq!(predicted, rows as u64, "{variant} predicted every row");
        results.push((variant, seconds, rss));
    }
    for (variant, seconds, rss) in &results {
        println!(
            "{variant:<12} {seconds:>9.3} {:>12.0} {:>8.2}x {:>12.1}",
            rows as f64 / seconds,
            bare_s / seconds,
            *rss as f64 / 1024.0
        );
    }
    let small_rss = results[1].2;
    drop(results);
    let big_input = dir.path().join("big.csv");
    generate(&big_input, big);
    let (seconds, predicted, rss) = measure("vectorised", &big_input);
    println!(
        "{big} rows, vectorised: {seconds:.3} s, {:.0} rows/s, peak RSS {:.1} MB ({:.1} MB for {rows}): {}",
        predicted as f64 / seconds,
        rss as f64 / 1024.0,
        small_rss as f64 / 1024.0,
        if rss <= small_rss + small_rss / 10 {
            "bounded"
        } else {
            "GROWS"
        }
    );
    let _ = bare_rss;
}
