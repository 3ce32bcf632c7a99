//! Batch Predict on the command line: reads a CSV, predicts every row, writes the output CSV
//! into a dataset, and prints the run's record.
//!
//! ```text
//! mkdir -p serving-data/datasets/flowers
//! cp my-iris.csv serving-data/datasets/flowers/in.csv
//! cargo run --release --features batch --example batch_predict -- \
//!   --input in.csv --output out/predictions.csv --dataset flowers [--model iris|sum] [--format full|original]
//! ```
//!
//! | Argument | Meaning | Default |
//! |---|---|---|
//! | `--input FILE` | the input CSV (with a header): a local file, or a file of the dataset | required |
//! | `--output FILE` | where the output CSV goes: a relative path inside the dataset | required |
//! | `--dataset NAME` | the dataset (it must exist: a folder with at least one file) | required |
//! | `--model iris\|sum` | `iris`: the quickstart's classifier on four measurement columns (row-wise); `sum`: adds the numeric columns of each row (vectorised) | `iris` |
//! | `--format full\|original` | `full`: the input's columns, `prediction`, `error`; `original`: the original script's `input,prediction` | `full` |
//! | `--overwrite` | replace an output that already exists | off |
//!
//! Datasets live under `$SERVING_DATASETS` (default `./serving-data/datasets`; `s3://bucket/prefix`
//! with the usual `AWS_*` variables for S3). On a terminal a progress bar shows the run; otherwise
//! one JSON progress line is printed every few seconds. The last line is the run's summary:
//!
//! ```text
//! {"id":"…","status":"succeeded","rows":150,"failed_rows":0,"seconds":0.05,"rows_per_second":3000.0,"cold_start_seconds":0.01,"output":"file:///…/flowers/out/predictions.csv"}
//! ```
//!
//! Bad arguments and bad input end it with a one-line `error: …` on stderr and a non-zero exit
//! status (2 for bad arguments, 1 for a run that cannot start or fails). Ctrl-C cancels the run:
//! no partial output is left in the dataset.

#[path = "models/iris.rs"]
#[allow(dead_code)] // the quickstart's endpoint builder is not used here
mod iris;

use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serving::batch::polars::prelude::{DataFrame, Series};
use serving::batch::{BatchJobConfig, BatchService, ChunkPredictor, sum_columns};
use serving::datasets::Datasets;
use serving::prelude::*;
use serving::{BatchRequest, BatchRun, BatchRuns, BatchStatus, ModelRef, OutputFormat};

/// The usage line printed with an argument error.
pub const USAGE: &str = "usage: batch_predict --input FILE --output OUTPUT_FILE --dataset NAME \
                         [--model iris|sum] [--format full|original] [--overwrite]";

/// Which model predicts the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelChoice {
    /// The quickstart's iris classifier, row-wise, on four measurement columns.
    Iris,
    /// The sum of each row's numeric columns, vectorised ([`ChunkPredictor`]).
    Sum,
}

impl ModelChoice {
    /// The batch endpoint that serves it.
    pub fn endpoint(self) -> &'static str {
        match self {
            ModelChoice::Iris => "iris",
            ModelChoice::Sum => "sum",
        }
    }
}

/// The command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--input`.
    pub input: String,
    /// `--output`.
    pub output: String,
    /// `--dataset`.
    pub dataset: String,
    /// `--model`.
    pub model: ModelChoice,
    /// `--format`.
    pub format: OutputFormat,
    /// `--overwrite`.
    pub overwrite: bool,
}

/// Why the example stops.
#[derive(Debug)]
pub enum Failure {
    /// `--help`: the usage is printed (exit status 0).
    Help,
    /// The command line is wrong (exit status 2).
    Usage(String),
    /// The run could not start or failed (exit status 1).
    Run(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Help => f.write_str(USAGE),
            Failure::Usage(message) | Failure::Run(message) => f.write_str(message),
        }
    }
}

fn run_error(error: impl std::fmt::Display) -> Failure {
    Failure::Run(error.to_string())
}

impl Args {
    /// Parses the arguments after the program's name.
    ///
    /// # Errors
    /// [`Failure::Usage`] naming the argument that is missing, unknown or has a bad value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, Failure> {
        let usage = |message: String| Failure::Usage(message);
        let (mut input, mut output, mut dataset) = (None, None, None);
        let (mut model, mut format, mut overwrite) = (ModelChoice::Iris, OutputFormat::Full, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            // `--name=value` and `--name value` both work.
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => {
                    (name.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            if name == "--overwrite" && inline.is_none() {
                overwrite = true;
                continue;
            }
            if name == "--help" || name == "-h" {
                return Err(Failure::Help);
            }
            if !matches!(
                name.as_str(),
                "--input" | "--output" | "--dataset" | "--model" | "--format"
            ) {
                return Err(usage(format!("unknown argument `{arg}`")));
            }
            let value = match inline.or_else(|| args.next()) {
                Some(value) if !value.trim().is_empty() && !value.starts_with("--") => value,
                _ => return Err(usage(format!("`{name}` needs a value"))),
            };
            match name.as_str() {
                "--input" => input = Some(value),
                "--output" => output = Some(value),
                "--dataset" => dataset = Some(value),
                "--model" => {
                    model = match value.as_str() {
                        "iris" => ModelChoice::Iris,
                        "sum" => ModelChoice::Sum,
                        other => {
                            return Err(usage(format!("`--model {other}`: expected iris or sum")));
                        }
                    }
                }
                _ => {
                    format = match value.as_str() {
                        "full" => OutputFormat::Full,
                        "original" => OutputFormat::Original,
                        other => {
                            return Err(usage(format!(
                                "`--format {other}`: expected full or original"
                            )));
                        }
                    }
                }
            }
        }
        let required = |value: Option<String>, name: &str| {
            value.ok_or_else(|| Failure::Usage(format!("`{name}` is required")))
        };
        Ok(Args {
            input: required(input, "--input")?,
            output: required(output, "--output")?,
            dataset: required(dataset, "--dataset")?,
            model,
            format,
            overwrite,
        })
    }
}

/// Adds the numeric columns of each row, a whole chunk at a time.
#[derive(Debug)]
pub struct Sum;

impl ChunkPredictor for Sum {
    fn predict_chunk(&self, chunk: &DataFrame) -> Result<Series> {
        sum_columns(chunk)
    }
}

/// The registry holding the iris classifier: trained when a run starts (the endpoint holds no
/// model between runs), four measurements in cm in, the species out.
fn registry() -> Arc<ModelRegistry> {
    let registry = Arc::new(ModelRegistry::new());
    registry.register("iris-knn", "1", || {
        let model = Arc::new(iris::Iris::train().map_err(Error::from_predictor)?);
        let scaler = model.scaler();
        Ok(predictor_fn(
            move |sepal_len: f64,
                  sepal_w: f64,
                  petal_len: f64,
                  petal_w: f64|
                  -> Result<&'static str> {
                let measurements = [sepal_len, sepal_w, petal_len, petal_w];
                if measurements.iter().any(|m| *m <= 0.0) {
                    return Err(Error::rejected(format!(
                        "measurements are lengths in cm and must be positive, got {measurements:?}"
                    )));
                }
                log_metric("petal_length_cm", petal_len);
                model.species(scaler.apply(measurements))
            },
        ))
    });
    registry
}

/// The batch service of the example: the endpoints `iris` (row-wise) and `sum` (vectorised)
/// over `datasets`, reading local input files as well as dataset files.
///
/// # Errors
/// What [`BatchService::builder`] refuses.
pub fn service(datasets: Datasets) -> Result<BatchService> {
    let mut iris = EndpointSpec::new("iris", ModelRef::new("iris-knn", "1"));
    iris.kind = BatchJobConfig::default().into();
    let mut sum = EndpointSpec::new("sum", ModelRef::new("sum", "1"));
    sum.kind = BatchJobConfig::default().into();
    BatchService::builder(datasets)
        .registry(registry())
        .local_input(true)
        .endpoint(iris)?
        .chunk_endpoint(sum, || Ok(Sum))?
        .build()
}

/// How progress is shown while the run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// A progress bar on stderr (a terminal).
    Bar,
    /// One JSON line on the output at this interval.
    Lines(Duration),
}

impl Progress {
    /// A bar when stderr is a terminal, a JSON line every 5 seconds otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines(Duration::from_secs(5))
        }
    }
}

/// Where the input is: a local file (its absolute path) or a file of the dataset.
async fn input_file(args: &Args, datasets: &Datasets) -> Result<String, Failure> {
    let dataset = datasets.dataset(&args.dataset).map_err(run_error)?;
    if !dataset.exists().await.map_err(run_error)? {
        return Err(Failure::Run(format!(
            "dataset `{}` does not exist: create it as a folder with at least one file ({}/{}/)",
            args.dataset,
            datasets.url().trim_end_matches('/'),
            args.dataset
        )));
    }
    let local = Path::new(&args.input);
    if local.is_file() {
        let absolute = std::fs::canonicalize(local).map_err(|error| {
            Failure::Run(format!(
                "cannot open the input file `{}`: {error}",
                args.input
            ))
        })?;
        return Ok(absolute.display().to_string());
    }
    if local.exists() {
        return Err(Failure::Run(format!(
            "the input `{}` is not a file",
            args.input
        )));
    }
    let in_dataset = serving::datasets::check_relative_path(&args.input).is_ok()
        && dataset
            .head(&args.input)
            .await
            .map_err(run_error)?
            .is_some();
    if !in_dataset {
        return Err(Failure::Run(format!(
            "the input file `{}` does not exist: it is neither a local file nor a file of dataset `{}` ({}/{}/)",
            args.input,
            args.dataset,
            datasets.url().trim_end_matches('/'),
            args.dataset
        )));
    }
    Ok(args.input.clone())
}

/// One progress line.
fn progress_line(run: &BatchRun) -> Value {
    json!({
        "id": run.id,
        "status": run.status,
        "rows_read": run.rows_read,
        "rows_predicted": run.rows_predicted,
        "rows_failed": run.rows_failed,
        "progress": run.progress(),
        "rows_per_second": run.rows_per_second,
    })
}

/// Runs `args` on the example's [`service`] over `datasets`, showing progress and printing
/// JSON lines (progress, then the summary) to `out`; answers the summary.
///
/// # Errors
/// [`Failure::Run`] when the run cannot start (unknown dataset, missing input, an output path
/// outside the dataset, an existing output) or fails (empty input, a header without rows); the
/// summary line is printed first for a run that started.
pub async fn run(
    args: &Args,
    datasets: Datasets,
    progress: Progress,
    out: &mut (dyn Write + Send),
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Value, Failure> {
    let service = service(datasets.clone()).map_err(run_error)?;
    let endpoint = args.model.endpoint();
    let input = input_file(args, &datasets).await?;
    let request = BatchRequest::new(input, args.output.clone(), args.dataset.clone())
        .with_format(args.format)
        .with_overwrite(args.overwrite);
    let started = Instant::now();
    let id = service
        .submit(endpoint, request)
        .await
        .map_err(|error| match error {
            Error::AlreadyExists { .. } => {
                Failure::Run(format!("{error} (pass --overwrite to replace it)"))
            }
            other => run_error(other),
        })?;

    let bar = matches!(progress, Progress::Bar).then(|| {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let every = match progress {
        Progress::Lines(every) => every,
        Progress::Bar => Duration::from_millis(100),
    };
    let mut last_line = Instant::now();
    let mut waiting = std::pin::pin!(service.wait(endpoint, &id));
    let mut tick = tokio::time::interval(Duration::from_millis(100).min(every));
    let mut cancel = std::pin::pin!(cancel);
    let mut cancelled = false;
    let finished = loop {
        tokio::select! {
            finished = &mut waiting => break finished.map_err(run_error)?,
            () = &mut cancel, if !cancelled => {
                cancelled = true;
                service.cancel(endpoint, &id).await.map_err(run_error)?;
            }
            _ = tick.tick() => {
                let Ok(now) = service.get(endpoint, &id).await else { continue };
                if let Some(bar) = &bar {
                    bar.set_position((now.progress().unwrap_or(0.0) * 1000.0) as u64);
                    bar.set_message(format!(
                        "{} rows, {} failed, {:.0} rows/s",
                        now.rows_read, now.rows_failed, now.rows_per_second
                    ));
                } else if last_line.elapsed() >= every {
                    last_line = Instant::now();
                    writeln!(out, "{}", progress_line(&now)).map_err(run_error)?;
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let output = format!(
        "{}/{}/{}",
        datasets.url().trim_end_matches('/'),
        args.dataset,
        args.output
    );
    let mut summary = json!({
        "id": finished.id,
        "status": finished.status,
        "rows": finished.rows_read,
        "failed_rows": finished.rows_failed,
        "seconds": seconds,
        "rows_per_second": finished.rows_per_second,
        "cold_start_seconds": finished.cold_start_seconds,
        "output": (finished.status == BatchStatus::Succeeded).then_some(output),
    });
    if let Some(error) = &finished.error {
        summary["error"] = json!(error);
    }
    writeln!(out, "{summary}").map_err(run_error)?;
    match finished.status {
        BatchStatus::Succeeded => Ok(summary),
        BatchStatus::Cancelled => Err(Failure::Run(format!("run {} was cancelled", finished.id))),
        _ => Err(Failure::Run(format!(
            "run {} failed: {}",
            finished.id,
            finished.error.as_deref().unwrap_or("no reason recorded")
        ))),
    }
}

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `run`
async fn main() {
    let result = async {
        let args = Args::parse(std::env::args().skip(1))?;
        let datasets = Datasets::from_env().map_err(run_error)?;
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        run(
            &args,
            datasets,
            Progress::detect(),
            &mut std::io::stdout(),
            ctrl_c,
        )
        .await
    }
    .await;
    match result {
        Ok(_) => {}
        Err(Failure::Help) => println!("{USAGE}"),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message} (--help for usage)");
            std::process::exit(2);
        }
        Err(Failure::Run(message)) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}
