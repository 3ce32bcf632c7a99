//! Batch throughput: 1,000,000 rows × 4 float columns, generated here, predicted by a bare
//! polars program (polars' own CSV reader → sum the four columns → polars' CSV writer: the
//! limit), a bare `csv`-crate loop (a second reference), and by our batch runs with a
//! vectorised sum model, a row-wise sum predictor and the iris model, plus the vectorised and
//! row-wise runs with every row logged to a real prediction log. Each variant runs in its own
//! child process; `BENCH_RUNS` rounds (3 by default) each run every variant once, and the
//! table shows the median seconds, rows/s, the median ratio to the same round's bare polars
//! run, and the highest peak RSS. `BENCH_ONLY=vectorised,row-wise` runs only those (and bare
//! polars).
//!
//! `cargo bench --features batch --bench batch`; `BENCH_ROWS` changes the size, and
//! `BENCH_BIG_ROWS=10000000` also runs a 10,000,000-row file through the vectorised and
//! row-wise paths (`BENCH_RUNS` times each, after the rounds above) to compare their peak
//! RSS with the 1M runs': the median and the highest of each, from the kernel's high-water
//! mark (`VmHWM`) of each run's own process.
//!
//! Our runs get the service's metric sink (in memory) as a server would give them; the
//! bare programs measure nothing.

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
    BatchRequest, BatchStatus, EndpointSpec, InMemoryMetrics, ModelRef, ModelRegistry, Result,
    predictor_fn,
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

/// polars' CSV reader → sum → polars' CSV writer, nothing else: the limit.
fn bare_polars(input: &Path, output: &Path) -> u64 {
    use polars_io::prelude::{CsvReadOptions, CsvWriter, SerReader as _, SerWriter as _};
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(input.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap();
    let mut sum = sum_columns(&frame).unwrap();
    sum.rename("prediction".into());
    let mut frame = frame;
    frame.with_column(sum.into()).unwrap();
    let mut file =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(output).unwrap());
    CsvWriter::new(&mut file).finish(&mut frame).unwrap();
    file.flush().unwrap();
    frame.height() as u64
}

/// Read → sum → write with the `csv` crate on one thread, nothing else.
fn bare_csv(input: &Path, output: &Path) -> u64 {
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

fn spec(name: &str, model: &str, log_every_row: bool) -> EndpointSpec {
    let mut config = BatchJobConfig::default();
    config.chunk_rows = 10_000;
    config.log_every_row = log_every_row;
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
        if variant == "iris" {
            iris::Iris::train().unwrap().register(&registry);
        }
        let log = serving::prediction_log::PredictionLog::builder()
            .with_dir(dir.join("prediction-log"))
            .build()
            .unwrap();
        let service = BatchService::builder(datasets)
            .registry(registry)
            .local_input(true)
            .metric_sink(Arc::new(InMemoryMetrics::new()))
            .record_sink(Arc::new(log.clone()))
            .chunk_endpoint(spec("vectorised", "sum-v", false), || Ok(Sum))
            .unwrap()
            .chunk_endpoint(spec("vectorised-logged", "sum-v", true), || Ok(Sum))
            .unwrap()
            .endpoint(spec("row-wise", "sum", false))
            .unwrap()
            .endpoint(spec("row-wise-logged", "sum", true))
            .unwrap()
            .endpoint(spec("iris", "iris-knn", false))
            .unwrap()
            .build()
            .unwrap();
        let request = BatchRequest::new(input.display().to_string(), "out.csv", "bench");
        let run = service.run(variant, request).await.unwrap();
        assert_eq!(run.status, BatchStatus::Succeeded, "{run:?}");
        // The log's writer catches up before the clock stops: its cost is the run's.
        log.close().await.unwrap();
        let stats = log.stats();
        if variant.ends_with("-logged") {
            eprintln!("prediction log: {stats:?}");
        }
        run.rows_predicted
    })
}

/// A child: runs one variant and prints `seconds rows peak_rss_kb`.
fn child(variant: &str, input: &Path, dir: &Path) {
    let start = Instant::now();
    let rows = match variant {
        "bare-polars" => bare_polars(input, &dir.join("bare-out.csv")),
        "bare-csv" => bare_csv(input, &dir.join("bare-out.csv")),
        other => ours(other, input, dir),
    };
    println!("{} {rows} {}", start.elapsed().as_secs_f64(), peak_rss_kb());
}

fn measure_once(variant: &str, input: &Path) -> (f64, u64, u64) {
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
    let log = String::from_utf8_lossy(&output.stderr);
    if let Some(line) = log.lines().find(|l| l.starts_with("prediction log:")) {
        println!("  {variant}: {line}");
    }
    (seconds, rows, rss)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    let rows = env_number("BENCH_ROWS", 1_000_000);
    let big = env_number("BENCH_BIG_ROWS", 0);
    let runs = env_number("BENCH_RUNS", 3).max(1);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let input: PathBuf = dir.path().join("rows.csv");
    generate(&input, rows);
    println!(
        "{rows} rows x 4 float columns ({} MB), median of {runs} runs, load average {}",
        std::fs::metadata(&input).unwrap().len() / 1_000_000,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let variants = [
        "bare-polars",
        "bare-csv",
        "vectorised",
        "vectorised-logged",
        "row-wise",
        "row-wise-logged",
        "iris",
    ];
    let variants: Vec<&str> = variants
        .into_iter()
        .filter(|v| *v == "bare-polars" || only.is_empty() || only.split(',').any(|o| o == *v))
        .collect();
    // Rounds, each running every variant once: a ratio is taken against the same round's
    // bare polars run, so load that changes during the bench skews the ratios less.
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut peaks: Vec<Vec<u64>> = vec![Vec::new(); variants.len()];
    for _ in 0..runs {
        let mut bare = 0.0;
        for (i, variant) in variants.iter().enumerate() {
            let (s, predicted, rss) = measure_once(variant, &input);
            assert_eq!(predicted, rows as u64, "{variant} predicted every row");
            if i == 0 {
                bare = s;
            }
            seconds[i].push(s);
            ratios[i].push(bare / s);
            peaks[i].push(rss);
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "{:<18} {:>9} {:>12} {:>13} {:>12}",
        "variant", "seconds", "rows/s", "x bare polars", "peak RSS MB"
    );
    let mut results = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let s = median(&mut seconds[i]);
        let highest = peaks[i].iter().copied().max().unwrap_or(0);
        println!(
            "{variant:<18} {s:>9.3} {:>12.0} {:>12.2}x {:>12.1}",
            rows as f64 / s,
            median(&mut ratios[i]),
            highest as f64 / 1024.0
        );
        results.push((*variant, peaks[i].clone()));
    }
    if big == 0 {
        return;
    }
    let big_input = dir.path().join("big.csv");
    generate(&big_input, big);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let middle = |values: &mut Vec<u64>| {
        values.sort_unstable();
        values[values.len() / 2]
    };
    for variant in ["vectorised", "row-wise"] {
        let Some((_, small)) = results.iter().find(|(v, _)| *v == variant) else {
            continue;
        };
        let mut small = small.clone();
        let (mut seconds, mut peaks) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (s, predicted, rss) = measure_once(variant, &big_input);
            assert_eq!(predicted, big as u64, "{variant} predicted every row");
            seconds.push(s);
            peaks.push(rss);
        }
        let s = median(&mut seconds);
        let (big_median, small_median) = (middle(&mut peaks), middle(&mut small));
        let (big_highest, small_highest) = (peaks[peaks.len() - 1], small[small.len() - 1]);
        println!(
            "{big} rows, {variant}: {s:.3} s, {:.0} rows/s, peak RSS median {:.1} MB, highest {:.1} MB ({rows} rows: {:.1}, {:.1}): {}",
            big as f64 / s,
            mb(big_median),
            mb(big_highest),
            mb(small_median),
            mb(small_highest),
            if big_median <= small_median && big_highest <= small_highest {
                "no higher"
            } else if big_median <= small_median {
                "median no higher"
            } else {
                "HIGHER"
            }
        );
    }
}
