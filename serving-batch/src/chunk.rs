//! [`ChunkPredictor`]: the vectorised path, a predictor that takes a whole chunk of rows as a
//! polars [`DataFrame`] and answers one [`Series`] of predictions.

use std::fmt::Debug;

use polars::prelude::{AnyValue, Column, DataFrame, Series};
use serde_json::Value;
use serving_core::{Error, Result};

use crate::source::{ColumnType, Schema};

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
///   does the same. Calls run on the blocking pool, one chunk at a time.
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

/// The chunk's DataFrame: one column per input column (the id column left out), over the
/// rows given as typed values.
pub(crate) fn frame(schema: &Schema, rows: &[Vec<Value>]) -> Result<DataFrame> {
    let mut columns = Vec::new();
    let mut position = 0;
    for (index, name) in schema.names.iter().enumerate() {
        if Some(index) == schema.id {
            continue;
        }
        let cell = |row: &Vec<Value>| row.get(position).cloned().unwrap_or(Value::Null);
        let column = match schema.types[index] {
            // A later chunk may hold a float in a column typed integer by the first: the
            // chunk's column is then float, never a silently dropped cell.
            ColumnType::Integer
                if rows.iter().all(|r| {
                    let value = cell(r);
                    value.is_null() || value.is_i64()
                }) =>
            {
                Column::new(
                    name.as_str().into(),
                    rows.iter().map(|r| cell(r).as_i64()).collect::<Vec<_>>(),
                )
            }
            ColumnType::Integer | ColumnType::Float => Column::new(
                name.as_str().into(),
                rows.iter().map(|r| cell(r).as_f64()).collect::<Vec<_>>(),
            ),
            ColumnType::Boolean => Column::new(
                name.as_str().into(),
                rows.iter().map(|r| cell(r).as_bool()).collect::<Vec<_>>(),
            ),
            ColumnType::Text => Column::new(
                name.as_str().into(),
                rows.iter()
                    .map(|r| cell(r).as_str().map(str::to_owned))
                    .collect::<Vec<_>>(),
            ),
        };
        columns.push(column);
        position += 1;
    }
    DataFrame::new(rows.len(), columns).map_err(polars_error)
}

/// The predictions of a [`Series`] as JSON values (`None` for nulls).
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
