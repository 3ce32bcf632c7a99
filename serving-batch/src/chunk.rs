//! [`ChunkPredictor`]: the vectorised path, a predictor that takes a whole chunk of rows as a
//! polars [`DataFrame`] and answers one [`Series`] of predictions.

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use polars::prelude::{AnyValue, Column, DataFrame, Series};
use serde_json::Value;
use serving_core::{
    DynMetricSink, Error, LoggingSpec, Outcome, OutputFormat, PredictionRecord, RequestEvent,
    Result, crop, new_request_id,
};

use crate::config::RowInput;
use crate::output::{Rows, push_f64};
use crate::stats::RunRecords;
use crate::workers::panicked;

use crate::source::{ColumnType, RawChunk, Schema, Typed};

/// A predictor that declares it takes a chunk of rows at once: called once per chunk of
/// [`BatchJobConfig::chunk_rows`](crate::BatchJobConfig::chunk_rows) rows instead of once
/// per row.
///
/// # Contract
/// - The chunk holds the input's columns (named and typed as inferred: integer columns as
///   `i64`, numeric as `f64`, `true`/`false` as booleans, the rest as strings; empty cells
///   are nulls), without the rows whose cells do not parse (those are written with their
///   error and never reach the predictor).
/// - The answer has exactly one value per row of the chunk, in order; a null value is a row
///   without a prediction (written with an error).
/// - An error fails every row of the chunk (each is written with it); a panic is caught and
///   does the same. Calls run on the blocking pool, one chunk at a time and in input order
///   (the chunks around it are parsed and written meanwhile).
///
/// ```
/// use polars::prelude::*;
/// use serving_batch::ChunkPredictor;
///
/// /// Adds the numeric columns of each row.
/// #[derive(Debug)]
/// struct Sum;
///
/// impl ChunkPredictor for Sum {
///     fn predict_chunk(&self, chunk: &DataFrame) -> serving_core::Result<Series> {
///         serving_batch::sum_columns(chunk)
///     }
/// }
/// let chunk = df!("a" => [1.0, 2.0], "b" => [0.5, 0.5]).unwrap();
/// let sums = Sum.predict_chunk(&chunk).unwrap();
/// assert_eq!(sums.f64().unwrap().get(1), Some(2.5));
/// ```
pub trait ChunkPredictor: Debug + Send + Sync + 'static {
    /// Predicts every row of `chunk`.
    fn predict_chunk(&self, chunk: &DataFrame) -> Result<Series>;
}

/// A shared [`ChunkPredictor`].
pub type DynChunkPredictor = dyn ChunkPredictor;

/// The sum of the numeric columns of each row (nulls count as 0): the trivial vectorised
/// model, `--model sum` of the example and the benchmark's.
///
/// # Errors
/// [`Error::Rejected`] when no column is numeric.
pub fn sum_columns(chunk: &DataFrame) -> Result<Series> {
    let mut total: Option<Series> = None;
    for column in chunk.columns() {
        if !column.dtype().is_primitive_numeric() {
            continue;
        }
        let values = column
            .as_materialized_series()
            .cast(&polars::prelude::DataType::Float64)
            .map_err(polars_error)?
            .fill_null(polars::prelude::FillNullStrategy::Zero)
            .map_err(polars_error)?;
        total = Some(match total {
            None => values,
            Some(sum) => (&sum + &values).map_err(polars_error)?,
        });
    }
    let mut total = total.ok_or_else(|| Error::rejected("the input has no numeric column"))?;
    total.rename("prediction".into());
    Ok(total)
}

/// A polars error as a predictor failure.
pub fn polars_error(error: polars::prelude::PolarsError) -> Error {
    Error::from_predictor(error)
}

/// A chunk's usable rows as a [`DataFrame`], and the rows left out with why.
pub(crate) struct Framed {
    /// One column per input column (the id column left out), one row per usable row.
    pub(crate) frame: DataFrame,
    /// The rows left out (the chunk's unusable rows and those whose cell does not parse),
    /// by index, ascending.
    pub(crate) errors: Vec<(usize, String)>,
}

/// One column as it is built from typed cells.
enum Builder<'a> {
    Integer(Vec<i64>),
    Float(Vec<f64>),
    Boolean(Vec<bool>),
    Text(Vec<&'a str>),
}

/// The chunk's DataFrame, built straight from its cells (no value per cell): rows whose cell
/// does not parse are left out and answered in [`Framed::errors`].
pub(crate) fn frame(schema: &Schema, chunk: &RawChunk) -> Result<Framed> {
    let columns: Vec<usize> = (0..schema.names.len())
        .filter(|&c| Some(c) != schema.id)
        .collect();
    let capacity = chunk.len();
    let mut builders: Vec<Builder<'_>> = columns
        .iter()
        .map(|&c| match schema.types[c] {
            ColumnType::Integer => Builder::Integer(Vec::with_capacity(capacity)),
            ColumnType::Float => Builder::Float(Vec::with_capacity(capacity)),
            ColumnType::Boolean => Builder::Boolean(Vec::with_capacity(capacity)),
            ColumnType::Text => Builder::Text(Vec::with_capacity(capacity)),
        })
        .collect();
    // Nulls by column, as positions among the kept rows (rare: kept apart from the values).
    let mut nulls: Vec<Vec<usize>> = vec![Vec::new(); columns.len()];
    let mut errors = Vec::with_capacity(chunk.errors().len());
    let mut unusable = chunk.errors().iter().peekable();
    let mut typed: Vec<Typed<'_>> = Vec::with_capacity(columns.len());
    let mut kept = 0_usize;
    'rows: for row in 0..chunk.len() {
        if let Some((_, error)) = unusable.next_if(|(index, _)| *index == row) {
            errors.push((row, error.clone()));
            continue;
        }
        typed.clear();
        // A usable row has a cell for every column.
        for (column, cell) in chunk.cells(row).enumerate() {
            if Some(column) == schema.id {
                continue;
            }
            match schema.typed(column, cell) {
                Ok(value) => typed.push(value),
                Err(error) => {
                    errors.push((row, format!("row {}: {error}", chunk.number(row))));
                    continue 'rows;
                }
            }
        }
        for (index, (builder, value)) in builders.iter_mut().zip(&typed).enumerate() {
            match (builder, *value) {
                (_, Typed::Null) => nulls[index].push(kept),
                (Builder::Integer(values), Typed::Integer(v)) => values.push(v),
                (Builder::Float(values), Typed::Float(v)) => values.push(v),
                (Builder::Float(values), Typed::Integer(v)) => values.push(v as f64),
                (builder @ Builder::Integer(_), Typed::Float(v)) => {
                    // A float in a column typed integer by the first chunk: this chunk's
                    // column is float, never a dropped cell.
                    let Builder::Integer(integers) = builder else {
                        unreachable!("matched above")
                    };
                    let mut floats: Vec<f64> = integers.iter().map(|&i| i as f64).collect();
                    floats.reserve(capacity);
                    floats.push(v);
                    *builder = Builder::Float(floats);
                }
                (Builder::Boolean(values), Typed::Boolean(v)) => values.push(v),
                (Builder::Text(values), Typed::Text(v)) => values.push(v),
                _ => unreachable!("a cell is typed by its column"),
            }
        }
        kept += 1;
    }
    let frame_columns = builders
        .into_iter()
        .zip(&columns)
        .zip(nulls)
        .map(|((builder, &c), nulls)| {
            let name = schema.names[c].as_str().into();
            match builder {
                Builder::Integer(values) => build(name, values, &nulls, kept),
                Builder::Float(values) => build(name, values, &nulls, kept),
                Builder::Boolean(values) => build(name, values, &nulls, kept),
                Builder::Text(values) => Column::new(name, values),
            }
        })
        .collect();
    let frame = DataFrame::new(kept, frame_columns).map_err(polars_error)?;
    Ok(Framed { frame, errors })
}

/// A column of `rows` values, `None` at `nulls` (positions, ascending) and `values` in order
/// elsewhere.
fn build<T>(
    name: polars::prelude::PlSmallStr,
    values: Vec<T>,
    nulls: &[usize],
    rows: usize,
) -> Column
where
    T: Copy,
    Series: polars::prelude::NamedFrom<Vec<T>, [T]>
        + polars::prelude::NamedFrom<Vec<Option<T>>, [Option<T>]>,
{
    if nulls.is_empty() {
        return Column::new(name, values);
    }
    let mut values = values.into_iter();
    let mut nulls = nulls.iter().peekable();
    let cells: Vec<Option<T>> = (0..rows)
        .map(|row| {
            if nulls.next_if(|&&null| null == row).is_some() {
                None
            } else {
                values.next()
            }
        })
        .collect();
    Column::new(name, cells)
}

/// The predictions of a [`Series`] as JSON values (`None` for nulls).
#[cfg(test)]
pub(crate) fn values(series: &Series) -> Vec<Option<Value>> {
    (0..series.len())
        .map(|i| match series.get(i) {
            Ok(value) => any_value(value),
            Err(_) => None,
        })
        .collect()
}

fn any_value(value: AnyValue<'_>) -> Option<Value> {
    Some(match value {
        AnyValue::Null => return None,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(v) => v.into(),
        AnyValue::Int16(v) => v.into(),
        AnyValue::Int32(v) => v.into(),
        AnyValue::Int64(v) => v.into(),
        AnyValue::UInt8(v) => v.into(),
        AnyValue::UInt16(v) => v.into(),
        AnyValue::UInt32(v) => v.into(),
        AnyValue::UInt64(v) => v.into(),
        AnyValue::Float32(v) => serde_json::Number::from_f64(f64::from(v))?.into(),
        AnyValue::Float64(v) => serde_json::Number::from_f64(v)?.into(),
        other => Value::String(other.to_string()),
    })
}

/// The predictions of one chunk, typed once so each row's cell is written without a value
/// per row.
enum Answers {
    Float(polars::prelude::Float64Chunked),
    Integer(polars::prelude::Int64Chunked),
    Boolean(polars::prelude::BooleanChunked),
    Text(polars::prelude::StringChunked),
    Other(Series),
}

impl Answers {
    fn of(series: &Series) -> Result<Answers> {
        use polars::prelude::DataType as D;
        Ok(match series.dtype() {
            D::Float64 | D::Float32 => Answers::Float(
                series
                    .cast(&D::Float64)
                    .map_err(polars_error)?
                    .f64()
                    .map_err(polars_error)?
                    .clone(),
            ),
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 => {
                Answers::Integer(
                    series
                        .cast(&D::Int64)
                        .map_err(polars_error)?
                        .i64()
                        .map_err(polars_error)?
                        .clone(),
                )
            }
            D::Boolean => Answers::Boolean(series.bool().map_err(polars_error)?.clone()),
            D::String => Answers::Text(series.str().map_err(polars_error)?.clone()),
            _ => Answers::Other(series.clone()),
        })
    }

    /// Writes the prediction for row `i` of the frame into `cell` and notes it in `seen`;
    /// false when there is none (a null, or a number JSON cannot hold).
    fn write(&self, i: usize, cell: &mut String, seen: &mut Seen) -> bool {
        cell.clear();
        match self {
            Answers::Float(values) => match values.get(i).filter(|v| v.is_finite()) {
                Some(v) => {
                    // As serde_json writes an f64 (ryu): the row-wise path's text.
                    push_f64(cell, v);
                    seen.numbers.push(v);
                }
                None => return false,
            },
            Answers::Integer(values) => match values.get(i) {
                Some(v) => {
                    cell.push_str(itoa::Buffer::new().format(v));
                    seen.numbers.push(v as f64);
                }
                None => return false,
            },
            Answers::Boolean(values) => match values.get(i) {
                Some(v) => {
                    cell.push_str(if v { "true" } else { "false" });
                    seen.categories.push(cell.clone());
                }
                None => return false,
            },
            Answers::Text(values) => match values.get(i) {
                Some(v) => {
                    cell.push_str(v);
                    seen.categories.push(v.to_owned());
                }
                None => return false,
            },
            Answers::Other(_) => match self.value(i) {
                Some(value) => {
                    match &value {
                        Value::String(text) => cell.push_str(text),
                        other => cell.push_str(&other.to_string()),
                    }
                    match value.as_f64() {
                        Some(number) => seen.numbers.push(number),
                        None => seen.categories.push(cell.clone()),
                    }
                }
                None => return false,
            },
        }
        true
    }

    /// The prediction for row `i` as JSON, for its record.
    fn value(&self, i: usize) -> Option<Value> {
        match self {
            Answers::Float(values) => values
                .get(i)
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Answers::Integer(values) => values.get(i).map(Value::from),
            Answers::Boolean(values) => values.get(i).map(Value::Bool),
            Answers::Text(values) => values.get(i).map(|v| Value::String(v.to_owned())),
            Answers::Other(series) => series.get(i).ok().and_then(any_value),
        }
    }
}

/// The predictions of one chunk, for the run's distribution.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) numbers: Vec<f64>,
    pub(crate) categories: Vec<String>,
}

/// Lets chunks call the predictor one at a time and in input order while they are parsed
/// and written in parallel.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    next: std::sync::Mutex<u64>,
    changed: std::sync::Condvar,
}

/// Chunk `index`'s turn: the next chunk's comes when it is dropped.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
}

impl Turns {
    /// Waits for chunk `index`'s turn. Every chunk from 0 must take (and drop) its turn.
    pub(crate) fn wait(&self, index: u64) -> Turn<'_> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        while *next != index {
            next = self.changed.wait(next).unwrap_or_else(|p| p.into_inner());
        }
        Turn { turns: self }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.turns.next.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.turns.changed.notify_all();
    }
}

/// What every chunk of one vectorised run shares.
#[derive(Debug)]
pub(crate) struct ChunkJob {
    pub(crate) schema: Arc<Schema>,
    pub(crate) predictor: Arc<DynChunkPredictor>,
    pub(crate) format: OutputFormat,
    pub(crate) endpoint: Arc<str>,
    pub(crate) model: String,
    pub(crate) version: Arc<str>,
    pub(crate) logging: LoggingSpec,
    pub(crate) metrics: Option<Arc<DynMetricSink>>,
    pub(crate) records: Option<Arc<RunRecords>>,
    pub(crate) turns: Turns,
}

/// One chunk predicted and written.
#[derive(Debug)]
pub(crate) struct Written {
    /// The chunk's output rows, as CSV.
    pub(crate) csv: Vec<u8>,
    pub(crate) predicted: u64,
    pub(crate) failed: u64,
    pub(crate) seen: Seen,
    /// Records of the chunk's rows for the log (every row, or the failed ones up to the
    /// bound), for the writing thread to pass on in input order: chunks predicted on
    /// several threads finish in any order.
    pub(crate) logged: Vec<PredictionRecord>,
    /// Each row's outcome, in order, when the run is measured.
    pub(crate) outcomes: Vec<Outcome>,
    /// The rows' latency: from the chunk's arrival to its predictions.
    pub(crate) latency: std::time::Duration,
    /// When the chunk arrived.
    pub(crate) at: std::time::SystemTime,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            csv: Vec::new(),
            predicted: 0,
            failed: 0,
            seen: Seen::default(),
            logged: Vec::new(),
            outcomes: Vec::new(),
            latency: std::time::Duration::ZERO,
            at: std::time::SystemTime::UNIX_EPOCH,
        }
    }
}

impl ChunkJob {
    /// Logs the chunk's rows (every one, or the run's first failed ones up to the bound) and counts
    /// its rows as requests of the endpoint, in order, from the one thread that writes the
    /// output (no contention on the sinks): one event per row, with the chunk's latency,
    /// which is each of its rows'.
    pub(crate) fn measure(&self, written: &mut Written) {
        if let Some(records) = &self.records {
            for record in written.logged.drain(..) {
                if records.admits(record.error.is_some()) {
                    records.push(record);
                }
            }
        }
        let Some(metrics) = &self.metrics else {
            return;
        };
        let mut event = RequestEvent {
            endpoint: Arc::clone(&self.endpoint),
            model_version: Arc::clone(&self.version),
            status: Outcome::Ok.code(),
            outcome: Outcome::Ok,
            latency: written.latency,
            at: written.at,
        };
        for &outcome in &written.outcomes {
            event.outcome = outcome;
            event.status = outcome.code();
            metrics.record_request(&event);
        }
    }
}

impl ChunkJob {
    /// Predicts chunk number `index` (one call of the predictor, in its turn) and writes its
    /// rows: each row its prediction or its error, its request measured and, when the log
    /// admits it, recorded. Runs on a blocking thread.
    pub(crate) fn run(&self, index: u64, chunk: &RawChunk) -> Result<Written> {
        let schema = &self.schema;
        let framed = std::panic::catch_unwind(AssertUnwindSafe(|| frame(schema, chunk)))
            .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
        let answers: std::result::Result<(Answers, Vec<(usize, String)>), Error> = {
            let turn = self.turns.wait(index);
            let answered = framed.and_then(|framed| {
                let count = framed.frame.height();
                if count == 0 {
                    return Ok((Answers::Other(Series::default()), framed.errors));
                }
                let series = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.predictor.predict_chunk(&framed.frame)
                }))
                .unwrap_or_else(|panic| Err(panicked(panic.as_ref())))?;
                if series.len() != count {
                    return Err(Error::from_predictor(format!(
                        "the chunk predictor answered {} values for {count} rows",
                        series.len()
                    )));
                }
                Ok((Answers::of(&series)?, framed.errors))
            });
            drop(turn);
            answered
        };
        let elapsed = chunk.arrival.started.elapsed();
        // A chunk that failed as a whole fails each of its usable rows with the same error.
        let (answers, errors, failure) = match answers {
            Ok((answers, errors)) => (Some(answers), errors, None),
            Err(error) => {
                let errors = chunk.errors().to_vec();
                (None, errors, Some(error))
            }
        };
        let failure_text = failure.as_ref().map(ToString::to_string);
        let mut csv = Rows::with_capacity(chunk.text_len() + chunk.len() * 24);
        let width = schema.names.len();
        let mut written = Written::default();
        let mut errors = errors.into_iter().peekable();
        let mut cell = String::new();
        let mut kept = 0_usize;
        written.latency = elapsed;
        if self.metrics.is_some() {
            written.outcomes.reserve(chunk.len());
        }
        written.at = chunk.arrival.at;
        for row in 0..chunk.len() {
            let result: std::result::Result<usize, (String, Outcome)> = match errors
                .next_if(|(index, _)| *index == row)
            {
                Some((_, error)) => Err((error, Outcome::ClientError)),
                None => {
                    let k = kept;
                    kept += 1;
                    match (&answers, &failure, &failure_text) {
                        (_, Some(error), Some(text)) => Err((text.clone(), error.outcome())),
                        (Some(answers), _, _) if answers.write(k, &mut cell, &mut written.seen) => {
                            Ok(k)
                        }
                        _ => Err((
                            "the chunk predictor answered no value for this row".to_owned(),
                            Outcome::ModelFailure,
                        )),
                    }
                }
            };
            // Kept for the writing thread, which passes rows on in input order (admitting
            // failed ones up to the bound).
            let admitted = self.records.as_ref().is_some_and(|records| {
                records.every_row() || (result.is_err() && written.logged.len() < records.bound())
            });
            let id_cell = schema
                .id
                .and_then(|id| chunk.cell(row, id))
                .filter(|id| !id.is_empty());
            let needs_id =
                schema.id.is_some() && id_cell.is_none() && self.format == OutputFormat::Full;
            let generated = (id_cell.is_none() && (admitted || needs_id)).then(new_request_id);
            let (prediction, error) = match &result {
                Ok(_) => (cell.as_str(), ""),
                Err((error, _)) => ("", error.as_str()),
            };
            match self.format {
                OutputFormat::Full => csv.full_row(
                    chunk,
                    row,
                    width,
                    schema.id.zip(generated.as_deref()).filter(|_| needs_id),
                    &[prediction, error],
                ),
                OutputFormat::Original => {
                    let input = match &result {
                        Err((_, Outcome::ClientError)) => {
                            serde_json::to_string(&chunk.cells(row).collect::<Vec<_>>())
                                .unwrap_or_default()
                        }
                        _ => schema
                            .input(chunk.cells(row), RowInput::Positional)
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    };
                    csv.row(std::iter::empty(), true, &[input.as_str(), prediction]);
                }
            }
            match &result {
                Ok(_) => written.predicted += 1,
                Err(_) => written.failed += 1,
            }
            if self.metrics.is_some() {
                written.outcomes.push(match &result {
                    Ok(_) => Outcome::Ok,
                    Err((_, outcome)) => *outcome,
                });
            }
            if admitted {
                let request_id = id_cell
                    .map(str::to_owned)
                    .or_else(|| generated.clone())
                    .unwrap_or_else(new_request_id);
                let record =
                    self.record(chunk, row, request_id, &result, answers.as_ref(), elapsed);
                written.logged.push(record);
            }
        }
        written.csv = csv.bytes;
        Ok(written)
    }

    fn record(
        &self,
        chunk: &RawChunk,
        row: usize,
        request_id: String,
        result: &std::result::Result<usize, (String, Outcome)>,
        answers: Option<&Answers>,
        elapsed: std::time::Duration,
    ) -> PredictionRecord {
        let logging = &self.logging;
        let input = logging
            .log_input
            .then(|| {
                self.schema
                    .input(chunk.cells(row), RowInput::Positional)
                    .ok()
            })
            .flatten()
            .map(|input| crop(&input, logging.max_value_chars));
        let (output, error, status) = match result {
            Ok(k) => (
                logging
                    .log_output
                    .then(|| answers.and_then(|a| a.value(*k)))
                    .flatten()
                    .map(|output| crop(&output, logging.max_value_chars)),
                None,
                Outcome::Ok.code(),
            ),
            Err((error, outcome)) => (None, Some(error.clone()), outcome.code()),
        };
        PredictionRecord {
            request_id,
            endpoint: self.endpoint.to_string(),
            model: self.model.clone(),
            model_version: self.version.to_string(),
            input,
            output,
            error,
            status,
            start_time: chunk.arrival.at,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            metrics: Default::default(),
            params: Default::default(),
        }
    }
}
