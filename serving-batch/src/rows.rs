//! The row-wise path: any [`Predictor`](serving_core::Predictor), through the endpoint's
//! [`ModelEndpoint::predict_chunk`]: one task per chunk of rows rather than per row, chunks
//! on all cores at once, the output in input order.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use serde_json::Value;
use serving_core::wire::decode_files;
use serving_core::{
    Endpoint as _, Error, FileInput, ModelEndpoint, OutputFormat, PredictRequest, Refused, Result,
    new_request_id,
};
use tokio::sync::mpsc;

use crate::chunk::Written;
use crate::config::RowInput;
use crate::output::{CsvOutput, Rows, write_text};
use crate::run::Live;
use crate::source::{RawChunk, Read, Schema};
use crate::stats::RunRecords;

/// What every chunk of one row-wise run shares.
#[derive(Debug)]
pub(crate) struct RowJob {
    pub(crate) endpoint: ModelEndpoint,
    pub(crate) schema: Arc<Schema>,
    pub(crate) mode: RowInput,
    pub(crate) files: FileInput,
    pub(crate) format: OutputFormat,
    /// Set once the run stops: no row is started after it.
    pub(crate) stop: Arc<AtomicBool>,
    /// The run's records, handed to the prediction log between chunks.
    pub(crate) records: Option<Arc<RunRecords>>,
    /// Output buffers of chunks already written, for the next chunks: a run's chunks take
    /// the same memory from the first to the last rather than a fresh one each, which the
    /// allocator would hand out from ever more of its heap over a long file.
    pub(crate) spare: Mutex<Vec<Vec<u8>>>,
}

/// Output buffers a run keeps at most: its chunks in flight.
const SPARE_BUFFERS: usize = 8;

/// Rows of a chunk predicted at a time: a window's requests and answers stay in the cache,
/// where a whole chunk's would not.
const WINDOW: usize = 256;

/// A row's input, or why it never reaches the model.
enum Row {
    Request(Option<Value>),
    Refused(Error, Option<Value>),
}

impl RowJob {
    /// Keeps a written chunk's output buffer for the next chunks (as many as run at once).
    fn give_back(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    }

    /// Predicts the rows of `chunk` in order and writes them: a bad row is refused (recorded
    /// as the endpoint records refusals) and written with its error. Once the run stops, only
    /// the rows before the first one not predicted are written and recorded.
    pub(crate) async fn run(&self, chunk: RawChunk) -> Result<Written> {
        let schema = &self.schema;
        let mut errors = chunk.errors().iter().peekable();
        let mut written = Written::default();
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut csv = Rows::reusing(spare, chunk.text_len() + chunk.len() * 24);
        // A window's rows and their ids; the chunk's row of each request.
        let mut rows = Vec::with_capacity(WINDOW);
        let mut ids: Vec<Option<String>> = Vec::with_capacity(WINDOW);
        let predicted_rows: Vec<AtomicUsize> = (0..WINDOW).map(|_| AtomicUsize::new(0)).collect();
        let width = schema.names.len();
        // The row's two cells, reused from row to row.
        let (mut prediction, mut error) = (String::with_capacity(24), String::new());
        'windows: for first in (0..chunk.len()).step_by(WINDOW) {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let window = first..chunk.len().min(first + WINDOW);
            // Each row is parsed as the endpoint takes its request, so that one input at a
            // time is alive: a window's worth of them outgrew the allocator's per-thread cache.
            let mut taken = 0;
            let requests = window.clone().filter_map(|row| {
                let (request, id) = self.request(&chunk, row, &mut errors, &mut rows);
                ids.push(id);
                let request = request?;
                predicted_rows[taken].store(row, Ordering::Relaxed);
                taken += 1;
                Some(request)
            });
            // A failed row's record gets its input parsed again from the cells: no copy of
            // every row's input is kept for the few failed ones logged. (Decoded files are
            // kept as the predictor got them.)
            let remake = |request: usize| {
                let row = predicted_rows.get(request)?.load(Ordering::Relaxed);
                schema.input(chunk.cells(row), self.mode).ok()
            };
            let remake = (self.files == FileInput::Off)
                .then_some(&remake as &(dyn Fn(usize) -> Option<Value> + Sync));
            let mut answers = self
                .endpoint
                .predict_chunk(requests, &self.stop, remake)
                .await
                .into_iter();
            // Stopped when rows were left unparsed: the rows parsed are written, no more.
            let stopped = rows.len() < window.len();
            for (row, (input, id)) in window.zip(rows.drain(..).zip(ids.drain(..))) {
                let (result, values, refused) = match input {
                    Row::Request(values) => match answers.next() {
                        Some(answer) => (answer, values, false),
                        // Stopped: this row and those after it were never taken.
                        None => break 'windows,
                    },
                    Row::Refused(error, values) => {
                        let request_id = id.clone().unwrap_or_else(new_request_id);
                        let reason = match &error {
                            Error::InvalidRequest { reason } => reason.clone(),
                            other => other.to_string(),
                        };
                        self.endpoint
                            .refused(Refused::new(request_id, error, chunk.arrival));
                        (Err(Error::invalid_request(reason)), values, true)
                    }
                };
                prediction.clear();
                error.clear();
                match &result {
                    Ok(answer) => {
                        write_text(&answer.output, &mut prediction);
                        match answer.output.as_f64() {
                            Some(number) => written.seen.numbers.push(number),
                            None => written.seen.categories.push(prediction.clone()),
                        }
                        written.predicted += 1;
                    }
                    // The row's own problem, said without the wrapper.
                    Err(Error::InvalidRequest { reason }) if refused => {
                        written.failed += 1;
                        error.push_str(reason);
                    }
                    Err(failure) => {
                        written.failed += 1;
                        use std::fmt::Write as _;
                        let _ = write!(error, "{failure}");
                    }
                }
                match self.format {
                    OutputFormat::Full => csv.full_row(
                        &chunk,
                        row,
                        width,
                        schema.id.zip(id.as_deref()),
                        &[prediction.as_str(), error.as_str()],
                    ),
                    OutputFormat::Original => {
                        let input = values.map(|v| v.to_string()).unwrap_or_else(|| {
                            serde_json::to_string(&chunk.cells(row).collect::<Vec<_>>())
                                .unwrap_or_default()
                        });
                        csv.row(
                            std::iter::empty(),
                            true,
                            &[input.as_str(), prediction.as_str()],
                        );
                    }
                }
            }
            if stopped {
                break;
            }
        }
        written.csv = csv.bytes;
        Ok(written)
    }

    /// Row `row` of `chunk` as a request, or refused (its error pushed with it to `rows`), and
    /// its id: from the source, or made now when the output has to show it.
    fn request(
        &self,
        chunk: &RawChunk,
        row: usize,
        errors: &mut std::iter::Peekable<std::slice::Iter<'_, (usize, String)>>,
        rows: &mut Vec<Row>,
    ) -> (Option<PredictRequest>, Option<String>) {
        let schema = &self.schema;
        let id = schema.id.map(|column| {
            chunk
                .cell(row, column)
                .filter(|id| !id.is_empty())
                .map_or_else(new_request_id, str::to_owned)
        });
        if let Some((_, error)) = errors.next_if(|(index, _)| *index == row) {
            rows.push(Row::Refused(Error::invalid_request(error.clone()), None));
            return (None, id);
        }
        let values = match schema.input(chunk.cells(row), self.mode) {
            Ok(values) => values,
            Err(error) => {
                let error = format!("row {}: {error}", chunk.number(row));
                rows.push(Row::Refused(Error::invalid_request(error), None));
                return (None, id);
            }
        };
        // The typed values are kept only for the `original` format's `input` column.
        let kept = (self.format == OutputFormat::Original).then(|| values.clone());
        let mut request = if self.files == FileInput::Off {
            PredictRequest::new(values)
        } else {
            let value = match &values {
                Value::Array(cells) if cells.len() == 1 => cells[0].clone(),
                other => other.clone(),
            };
            match decode_files(value, self.files) {
                Ok(decoded) => {
                    let (input, files) = decoded.into_parts();
                    PredictRequest::new(input).with_resource(files)
                }
                Err(error) => {
                    let error = format!("row {}: {error}", chunk.number(row));
                    rows.push(Row::Refused(Error::invalid_request(error), kept));
                    return (None, id);
                }
            }
        }
        .with_arrival(chunk.arrival);
        request.request_id = id.clone();
        rows.push(Row::Request(kept));
        (Some(request), id)
    }
}

/// Runs `chunks` through `job`, `concurrency` chunks at once, and writes their rows to
/// `output` in input order. Once `stop` completes no row is started; the rows already
/// started finish and are written, and then it returns.
pub(crate) async fn run_rows(
    chunks: mpsc::Receiver<Read>,
    job: Arc<RowJob>,
    concurrency: usize,
    output: &mut CsvOutput,
    live: &Arc<Live>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let flag = Arc::clone(&job.stop);
    let watcher = tokio::spawn(async move {
        stop.await;
        flag.store(true, Ordering::Release);
    });
    let stopped = Arc::clone(&job.stop);
    let done = futures::stream::unfold(chunks, move |mut chunks| {
        let stopped = Arc::clone(&stopped);
        async move {
            if stopped.load(Ordering::Acquire) {
                return None;
            }
            match chunks.recv().await {
                Some(Read::Chunk(rows)) => Some((rows, chunks)),
                _ => None,
            }
        }
    })
    .map(|rows| {
        live.count_read(rows.len());
        let job = Arc::clone(&job);
        tokio::spawn(async move { job.run(rows).await })
    })
    .buffered(2 * concurrency.max(1));
    futures::pin_mut!(done);
    let mut result = Ok(());
    while let Some(written) = done.next().await {
        let written = match written.map_err(Error::from).and_then(|w| w) {
            Ok(written) => written,
            Err(error) => {
                // Stop the other chunks; the error is the run's.
                job.stop.store(true, Ordering::Release);
                result = Err(error);
                continue;
            }
        };
        if result.is_ok() {
            output.append(&written.csv).await?;
            job.give_back(written.csv);
            live.count_chunk(written.predicted, written.failed, &written.seen);
            if let Some(records) = &job.records {
                records.pass_on().await;
            }
        }
    }
    watcher.abort();
    if let Some(records) = &job.records {
        records.pass_on().await;
    }
    result
}
