//! One batch run: scale up, build the model, read, predict, write, scale down.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures::StreamExt as _;
use serde_json::Value;
use serving_core::datasets::{Dataset, Overwrite};
use serving_core::runner::{Item, OutputOrder, Runner};
use serving_core::wire::decode_files;
use serving_core::{
    AutoscaleBounds, BatchRun, BatchStatus, Error, FileInput, ModelEndpoint, Result, new_request_id,
};
use tokio::sync::{Notify, mpsc};

use crate::chunk::{self, DynChunkPredictor};
use crate::config::RowInput;
use crate::output::{CsvOutput, RowMeta, Target};
use crate::service::{BatchEndpoint, EndpointModel, Inner};
use crate::source::{self, ChannelReader, Progress, RawRow, Read, Schema};
use crate::stats::{Distribution, RunMetrics, RunRecords};

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

    /// Counts one written row: predicted (`Some(output)`) or failed.
    pub(crate) fn count(&self, output: Option<&Value>) {
        match output {
            Some(output) => {
                self.cold_start
                    .get_or_init(|| self.submitted.elapsed().as_secs_f64());
                self.predicted.fetch_add(1, Ordering::Relaxed);
                lock(&self.distribution).add(output);
            }
            None => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
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
    Rows(ModelEndpoint),
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
        schema.id,
        &config.prediction_column,
        Arc::clone(live),
    )?;
    let predicted = match model {
        Built::Rows(endpoint_model) => {
            let files = endpoint_model.file_input();
            let items = items(chunks, schema, config.row_input, files, Arc::clone(live));
            let runner = Runner::new(endpoint_model).with_order(OutputOrder::Input);
            let stop = Arc::clone(live).cancelled();
            runner.run_into(items, &mut output, stop).await.map(drop)
        }
        // Takes the receiver: once it is dropped, the reading thread stops.
        Built::Chunks(predictor) => chunked(chunks, &schema, predictor, &mut output, live).await,
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
            if let Some(records) = &inner.record_sink {
                builder = builder.record_sink(Arc::new(RunRecords::new(
                    Arc::clone(records),
                    endpoint.config.log_every_row,
                    endpoint.config.failed_rows_logged,
                )));
            }
            Ok(Built::Rows(builder.build()?))
        }
        EndpointModel::Chunks(factory) => {
            let factory = Arc::clone(factory);
            let predictor = tokio::task::spawn_blocking(move || factory())
                .await
                .map_err(join_error)??;
            Ok(Built::Chunks(predictor))
        }
    }
}

/// The rows of `chunks` as runner items, read lazily as the runner takes them.
fn items(
    chunks: mpsc::Receiver<Read>,
    schema: Arc<Schema>,
    mode: RowInput,
    files: FileInput,
    live: Arc<Live>,
) -> impl futures::Stream<Item = Item<RowMeta>> + Send + 'static {
    futures::stream::unfold(chunks, |mut chunks| async move {
        match chunks.recv().await {
            Some(Read::Chunk(rows)) => Some((rows, chunks)),
            _ => None,
        }
    })
    .flat_map(move |rows| {
        live.read.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let schema = Arc::clone(&schema);
        futures::stream::iter(
            rows.into_iter()
                .map(move |row| item(&schema, row, mode, files)),
        )
    })
}

pub(crate) fn item(
    schema: &Schema,
    row: RawRow,
    mode: RowInput,
    files: FileInput,
) -> Item<RowMeta> {
    let request_id = schema
        .id
        .and_then(|id| row.cells.get(id))
        .filter(|id| !id.is_empty())
        .cloned();
    let parsed = match row.error {
        Some(error) => Err(error),
        None => schema
            .input(&row.cells, mode)
            .map_err(|error| format!("row {}: {error}", row.number)),
    };
    let item = match &parsed {
        Err(error) => Item::refused(Error::invalid_request(error.clone())),
        Ok(value) if files != FileInput::Off => {
            let value = match value {
                Value::Array(cells) if cells.len() == 1 => cells[0].clone(),
                other => other.clone(),
            };
            match decode_files(value, files) {
                Ok(decoded) => {
                    let (input, files) = decoded.into_parts();
                    Item::new(input).with_resource(files)
                }
                Err(error) => Item::refused(Error::invalid_request(format!(
                    "row {}: {error}",
                    row.number
                ))),
            }
        }
        Ok(value) => Item::new(value.clone()),
    };
    let mut item = item.with_arrival(row.arrival).with_meta(RowMeta {
        cells: row.cells,
        values: parsed.ok(),
    });
    item.request_id = request_id;
    item
}

/// The vectorised path: one call of the predictor per chunk.
async fn chunked(
    mut chunks: mpsc::Receiver<Read>,
    schema: &Arc<Schema>,
    predictor: Arc<DynChunkPredictor>,
    output: &mut CsvOutput,
    live: &Arc<Live>,
) -> Result<()> {
    while let Some(Read::Chunk(rows)) = chunks.recv().await {
        if live.is_cancelled() {
            return Ok(());
        }
        live.read.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let parsed: Vec<(RawRow, Result<Value, String>)> = rows
            .into_iter()
            .map(|row| {
                let parsed = match &row.error {
                    Some(error) => Err(error.clone()),
                    None => schema
                        .input(&row.cells, RowInput::Positional)
                        .map_err(|error| format!("row {}: {error}", row.number)),
                };
                (row, parsed)
            })
            .collect();
        let good: Vec<Vec<Value>> = parsed
            .iter()
            .filter_map(|(_, parsed)| match parsed {
                Ok(Value::Array(values)) => Some(values.clone()),
                _ => None,
            })
            .collect();
        let count = good.len();
        let answers: Result<Vec<Option<Value>>, String> = if count == 0 {
            Ok(Vec::new())
        } else {
            let schema = Arc::clone(schema);
            let predictor = Arc::clone(&predictor);
            tokio::task::spawn_blocking(move || {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let frame = chunk::frame(&schema, &good)?;
                    predictor.predict_chunk(&frame)
                }))
            })
            .await
            .map_err(|error| join_error(error).to_string())
            .and_then(|caught| {
                caught.map_err(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    Error::Panicked { message }.to_string()
                })
            })
            .and_then(|result| result.map_err(|error| error.to_string()))
            .map(|series| chunk::values(&series))
            .and_then(|values| {
                if values.len() == count {
                    Ok(values)
                } else {
                    Err(format!(
                        "the chunk predictor answered {} values for {count} rows",
                        values.len()
                    ))
                }
            })
        };
        let mut answers = answers.map(Vec::into_iter);
        for (row, parsed) in parsed {
            let id = schema
                .id
                .and_then(|id| row.cells.get(id))
                .filter(|id| !id.is_empty())
                .cloned()
                .unwrap_or_else(new_request_id);
            let meta = RowMeta {
                cells: row.cells,
                values: parsed.as_ref().ok().cloned(),
            };
            let result = match (parsed, &mut answers) {
                (Err(error), _) => Err(error),
                (Ok(_), Err(error)) => Err(error.clone()),
                (Ok(_), Ok(answers)) => match answers.next().flatten() {
                    Some(value) => Ok(value),
                    None => Err("the chunk predictor answered no value for this row".to_owned()),
                },
            };
            match result {
                Ok(value) => output.row(meta, &id, Ok(&value)).await?,
                Err(error) => output.row(meta, &id, Err(error)).await?,
            }
        }
    }
    Ok(())
}
