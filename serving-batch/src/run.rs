//! One batch run: scale up, build the model, read, predict, write, scale down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures::StreamExt as _;
use serving_core::datasets::{Dataset, Overwrite};
use serving_core::runner::Runner;
use serving_core::{AutoscaleBounds, BatchRun, BatchStatus, Error, ModelEndpoint, Result};
use tokio::sync::{Notify, mpsc};

use crate::chunk::{ChunkJob, DynChunkPredictor, Seen, Turns};
use crate::output::{CsvOutput, Target};
use crate::rows::{RowJob, run_rows};
use crate::service::{BatchEndpoint, EndpointModel, Inner};
use crate::source::{self, ChannelReader, Progress, Read};
use crate::stats::{Distribution, RunMetrics, RunRecords};
use serving_core::DynMetricSink;

/// A run while it is in this process: its record and live counters.
#[derive(Debug)]
pub(crate) struct Live {
    run: Mutex<BatchRun>,
    distribution: Mutex<Distribution>,
    cancelled: AtomicBool,
    cancel: Notify,
    done: tokio::sync::watch::Sender<bool>,
    submitted: Instant,
    started: OnceLock<Instant>,
    cold_start: OnceLock<f64>,
    progress: Arc<Progress>,
    metrics: OnceLock<Arc<RunMetrics>>,
    read: AtomicU64,
    predicted: AtomicU64,
    failed: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Live {
    pub(crate) fn new(run: BatchRun) -> Self {
        Live {
            run: Mutex::new(run),
            distribution: Mutex::default(),
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
            done: tokio::sync::watch::channel(false).0,
            submitted: Instant::now(),
            started: OnceLock::new(),
            cold_start: OnceLock::new(),
            progress: Arc::default(),
            metrics: OnceLock::new(),
            read: AtomicU64::new(0),
            predicted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Counts rows read.
    pub(crate) fn count_read(&self, rows: usize) {
        self.read.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Counts one chunk's written rows and notes its predictions.
    pub(crate) fn count_chunk(&self, predicted: u64, failed: u64, seen: &Seen) {
        if predicted > 0 {
            self.cold_start
                .get_or_init(|| self.submitted.elapsed().as_secs_f64());
        }
        self.predicted.fetch_add(predicted, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        let mut distribution = lock(&self.distribution);
        for &number in &seen.numbers {
            distribution.add_number(number);
        }
        for category in &seen.categories {
            distribution.add_category(category);
        }
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    async fn cancelled(self: Arc<Self>) {
        loop {
            let notified = self.cancel.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the run has ended.
    pub(crate) async fn finished(&self) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|done| *done).await;
    }

    fn update(&self, change: impl FnOnce(&mut BatchRun)) {
        change(&mut lock(&self.run));
    }

    /// The record as of now, counters and figures included.
    pub(crate) fn snapshot(&self) -> BatchRun {
        let mut run = lock(&self.run).clone();
        run.rows_read = self.read.load(Ordering::Relaxed);
        run.rows_predicted = self.predicted.load(Ordering::Relaxed);
        run.rows_failed = self.failed.load(Ordering::Relaxed);
        run.bytes_read = self.progress.bytes.load(Ordering::Relaxed);
        run.cold_start_seconds = self.cold_start.get().copied();
        if let Some(started) = self.started.get() {
            let seconds = started.elapsed().as_secs_f64();
            if !run.status.is_finished() && seconds > 0.0 {
                run.rows_per_second = (run.rows_predicted + run.rows_failed) as f64 / seconds;
            }
        }
        if let Some(metrics) = self.metrics.get() {
            run.metrics = metrics.summaries();
        }
        run.predictions = lock(&self.distribution).summary();
        run
    }
}

/// How a run ended when it did not fail.
enum Ended {
    Written(String),
    Cancelled,
}

/// The model of one run, built when it starts and dropped when it ends.
enum Built {
    /// The endpoint, and the records it passes on (held when every row is logged).
    Rows(ModelEndpoint, Option<Arc<RunRecords>>),
    Chunks(Arc<DynChunkPredictor>),
}

/// Runs `live`'s request on `endpoint` to its end, records it, and scales back to zero.
pub(crate) async fn execute(inner: Arc<Inner>, endpoint: Arc<BatchEndpoint>, live: Arc<Live>) {
    let name = endpoint.spec.name.clone();
    let bounds = AutoscaleBounds::new(0, 1).expect("0..=1 are valid bounds");
    let started = Instant::now();
    let _ = live.started.set(started);
    live.update(|run| {
        run.status = BatchStatus::Running;
        run.started_at = Some(serving_core::prediction_log::format_time(
            std::time::SystemTime::now(),
        ));
    });
    if let Err(error) = inner.store.save(&live.snapshot()).await {
        tracing::warn!(endpoint = %name, %error, "batch run: the record could not be saved");
    }
    let result = match inner.autoscaler.scale(&name, bounds, 1).await {
        Ok(_) => run(&inner, &endpoint, &live).await,
        Err(error) => Err(error),
    };
    if let Err(error) = inner.autoscaler.scale(&name, bounds, 0).await {
        tracing::warn!(endpoint = %name, %error, "batch run: scaling back to zero failed");
    }
    let seconds = started.elapsed().as_secs_f64();
    live.update(|run| {
        run.finished_at = Some(serving_core::prediction_log::format_time(
            std::time::SystemTime::now(),
        ));
        match result {
            Ok(Ended::Written(location)) => {
                run.status = BatchStatus::Succeeded;
                run.output_location = Some(location);
            }
            Ok(Ended::Cancelled) => run.status = BatchStatus::Cancelled,
            Err(error) => {
                run.status = BatchStatus::Failed;
                run.error = Some(error.to_string());
            }
        }
    });
    let mut record = live.snapshot();
    if seconds > 0.0 {
        record.rows_per_second = (record.rows_predicted + record.rows_failed) as f64 / seconds;
    }
    *lock(&live.run) = record.clone();
    if let Err(error) = inner.store.save(&record).await {
        tracing::warn!(endpoint = %name, %error, "batch run: the record could not be saved");
    }
    tracing::info!(
        endpoint = %name, id = %record.id, status = ?record.status,
        rows = record.rows_read, failed = record.rows_failed, seconds,
        "batch run ended"
    );
    inner.finished(&record.endpoint, &record.id);
    live.done.send_replace(true);
}

async fn run(inner: &Arc<Inner>, endpoint: &Arc<BatchEndpoint>, live: &Arc<Live>) -> Result<Ended> {
    let request = lock(&live.run).request.clone();
    let dataset = inner.datasets.existing(&request.dataset).await?;
    let location = dataset.location(&request.output_file)?;
    let (input, size) = open_input(inner, &dataset, &request.input_file).await?;
    live.update(|run| run.input_bytes = size);
    let model = build(inner, endpoint, live).await?;
    if live.is_cancelled() {
        return Ok(Ended::Cancelled);
    }
    let overwrite = if request.overwrite {
        Overwrite::Replace
    } else {
        Overwrite::Refuse
    };
    let writer = dataset.writer(&request.output_file, overwrite).await?;

    let config = &endpoint.config;
    let (rows, mut chunks) = mpsc::channel(2);
    let progress = Arc::clone(&live.progress);
    let (input_name, chunk_rows, id_column) = (
        request.input_file.clone(),
        config.chunk_rows,
        config.id_column.clone(),
    );
    let reader = tokio::task::spawn_blocking(move || {
        source::read_csv(input, &input_name, chunk_rows, &id_column, progress, rows)
    });
    let schema = match chunks.recv().await {
        Some(Read::Schema(schema)) => schema,
        _ => {
            let _ = writer.abort().await;
            return Err(match reader.await {
                Ok(Err(error)) => error,
                Ok(Ok(_)) => Error::invalid_request("the input has no header"),
                Err(join) => join_error(join),
            });
        }
    };
    let mut output = CsvOutput::new(
        Target::Dataset(writer),
        request.output_format,
        &schema.names,
        &config.prediction_column,
    )?;
    let predicted = match model {
        Built::Rows(endpoint_model, records) => {
            let concurrency = Runner::new(endpoint_model.clone()).concurrency();
            let job = Arc::new(RowJob {
                files: endpoint_model.file_input(),
                endpoint: endpoint_model,
                schema: Arc::clone(&schema),
                mode: config.row_input,
                format: request.output_format,
                stop: Arc::default(),
                records,
                spare: Default::default(),
            });
            let stop = Arc::clone(live).cancelled();
            run_rows(chunks, job, concurrency, &mut output, live, stop).await
        }
        Built::Chunks(predictor) => {
            let job = Arc::new(ChunkJob {
                schema: Arc::clone(&schema),
                predictor,
                format: request.output_format,
                endpoint: Arc::from(endpoint.spec.name.as_str()),
                model: endpoint.spec.model.name.clone(),
                version: Arc::from(endpoint.spec.model.version.as_str()),
                logging: endpoint.spec.logging.clone(),
                metrics: live
                    .metrics
                    .get()
                    .map(|m| Arc::clone(m) as Arc<DynMetricSink>),
                records: run_records(inner, endpoint).map(Arc::new),
                turns: Turns::default(),
            });
            chunked(chunks, job, &mut output, live).await
        }
    };
    let read = reader.await.map_err(join_error).and_then(|read| read);
    let outcome = predicted.and(read.map(drop));
    let target = output.into_target().await;
    let writer = match (outcome, target) {
        (Ok(()), Ok(Target::Dataset(writer))) => writer,
        (Err(error), Ok(Target::Dataset(writer))) => {
            // Nothing of a failed run stays in the store, staged parts included.
            let _ = writer.abort().await;
            return Err(error);
        }
        (Err(error), _) | (Ok(()), Err(error)) => return Err(error),
        (Ok(()), Ok(Target::Memory(_))) => unreachable!("a run writes to its dataset"),
    };
    if live.is_cancelled() {
        writer.abort().await?;
        return Ok(Ended::Cancelled);
    }
    writer.finish().await?;
    Ok(Ended::Written(location.to_string()))
}

fn join_error(error: tokio::task::JoinError) -> Error {
    match error.try_into_panic() {
        Ok(panic) => Error::Panicked {
            message: panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned()),
        },
        Err(error) => Error::Action {
            action: "batch task".to_owned(),
            source: Box::new(error),
        },
    }
}

async fn open_input(
    inner: &Inner,
    dataset: &Dataset,
    input: &str,
) -> Result<(Box<dyn std::io::Read + Send>, Option<u64>)> {
    let local = input
        .strip_prefix("file://")
        .or_else(|| (input.starts_with('/') || input.starts_with("./")).then_some(input));
    if let Some(path) = local.filter(|_| inner.local_input) {
        let file = std::fs::File::open(path).map_err(|error| {
            Error::invalid_request(format!("cannot open the input file `{path}`: {error}"))
        })?;
        let size = file.metadata().ok().map(|meta| meta.len());
        return Ok((Box::new(file), size));
    }
    let head = dataset
        .head(input)
        .await?
        .ok_or_else(|| Error::DatasetNotFound {
            dataset: dataset.name().to_owned(),
            file: Some(input.to_owned()),
        })?;
    let mut stream = dataset.read(input).await?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(chunk) = stream.next().await {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    Ok((Box::new(ChannelReader::new(rx)), Some(head.size)))
}

async fn build(
    inner: &Arc<Inner>,
    endpoint: &Arc<BatchEndpoint>,
    live: &Arc<Live>,
) -> Result<Built> {
    match &endpoint.model {
        EndpointModel::Registry => {
            let spec = endpoint.spec.clone();
            let registry = Arc::clone(&inner.registry);
            let builder =
                tokio::task::spawn_blocking(move || ModelEndpoint::from_spec(spec, &registry))
                    .await
                    .map_err(join_error)??;
            let metrics = Arc::new(RunMetrics::new(inner.metric_sink.clone()));
            let _ = live.metrics.set(Arc::clone(&metrics));
            let mut builder = builder.metric_sink(metrics);
            let records = run_records(inner, endpoint).map(Arc::new);
            if let Some(records) = &records {
                builder =
                    builder.record_sink(Arc::clone(records) as Arc<serving_core::DynRecordSink>);
            }
            Ok(Built::Rows(builder.build()?, records))
        }
        EndpointModel::Chunks(factory) => {
            // Its requests are measured in the service's metrics like a row-wise run's.
            let metrics = Arc::new(RunMetrics::new(inner.metric_sink.clone()));
            let _ = live.metrics.set(metrics);
            let factory = Arc::clone(factory);
            let predictor = tokio::task::spawn_blocking(move || factory())
                .await
                .map_err(join_error)??;
            Ok(Built::Chunks(predictor))
        }
    }
}

/// Where a run's records go: failed rows up to the bound, every row with `log_every_row`.
fn run_records(inner: &Inner, endpoint: &BatchEndpoint) -> Option<RunRecords> {
    inner.record_sink.as_ref().map(|records| {
        RunRecords::new(
            Arc::clone(records),
            endpoint.config.log_every_row,
            endpoint.config.failed_rows_logged,
        )
    })
}

/// The vectorised path: one call of the predictor per chunk, in input order, while chunks
/// are parsed and written on two threads; the output is written in input order.
async fn chunked(
    chunks: mpsc::Receiver<Read>,
    job: Arc<ChunkJob>,
    output: &mut CsvOutput,
    live: &Arc<Live>,
) -> Result<()> {
    let parallel = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let workers = crate::workers::Workers::new(parallel, "batch-chunks")?;
    let done = futures::stream::unfold((chunks, 0_u64), |(mut chunks, index)| async move {
        match chunks.recv().await {
            Some(Read::Chunk(rows)) => Some(((index, rows), (chunks, index + 1))),
            _ => None,
        }
    })
    .map(|(index, rows)| {
        live.count_read(rows.len());
        let job = Arc::clone(&job);
        workers.run(move || job.run(index, &rows))
    })
    .buffered(parallel);
    futures::pin_mut!(done);
    while let Some(written) = done.next().await {
        if live.is_cancelled() {
            return Ok(());
        }
        let mut written = written?;
        output.append(&written.csv).await?;
        live.count_chunk(written.predicted, written.failed, &written.seen);
        job.measure(&mut written);
        if let Some(records) = &job.records {
            records.pass_on().await;
        }
    }
    Ok(())
}
