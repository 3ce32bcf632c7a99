//! Reading the input CSV in chunks on a blocking thread, with each column's type inferred
//! from the first chunk, so memory stays bounded whatever the file's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Number, Value};
use serving_core::{Arrival, Error, Result};
use tokio::sync::mpsc;

use crate::config::RowInput;
use crate::records::Records;

/// The type of a column, inferred from the cells of the first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Every cell is an integer (or empty).
    Integer,
    /// Every cell is a number (or empty): it reaches the predictor as `f64`.
    Float,
    /// Every cell is `true` or `false` (or empty).
    Boolean,
    /// Anything else.
    Text,
}

impl ColumnType {
    fn fits(self, cell: &str) -> bool {
        match self {
            ColumnType::Integer => cell.parse::<i64>().is_ok(),
            ColumnType::Float => parse_float(cell).is_some(),
            ColumnType::Boolean => matches!(cell, "true" | "false" | "True" | "False"),
            ColumnType::Text => true,
        }
    }
}

/// The types a column may have besides text, narrowest first.
const TYPED: [ColumnType; 3] = [ColumnType::Integer, ColumnType::Float, ColumnType::Boolean];

fn parse_float(cell: &str) -> Option<f64> {
    short_decimal(cell)
        .or_else(|| fast_float2::parse::<f64, _>(cell).ok())
        .filter(|v| v.is_finite())
}

/// Powers of ten a double holds exactly.
const EXACT_TENS: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// `[-]digits[.digits]` with at most 15 digits, the usual numeric cell: its digits as an
/// integer divided by a power of ten, both exact, so the one correctly rounded division is
/// the same double a full parser answers (Clinger's fast path). `None` for anything else.
fn short_decimal(cell: &str) -> Option<f64> {
    let bytes = cell.as_bytes();
    // A sign, 15 digits and a point at most: a longer cell is left to the full parser unread.
    if bytes.len() > 17 {
        return None;
    }
    let (negative, digits) = match bytes.first()? {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    let (mut mantissa, mut count, mut fraction, mut point) = (0_u64, 0_usize, 0_usize, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
                fraction += usize::from(point);
            }
            b'.' if !point => point = true,
            _ => return None,
        }
    }
    if count == 0 || count > 15 {
        return None;
    }
    let value = mantissa as f64 / EXACT_TENS[fraction];
    Some(if negative { -value } else { value })
}

/// `cell` without surrounding whitespace; most cells have none, and ASCII ends are checked
/// without Unicode tables.
fn trimmed(cell: &str) -> &str {
    match (cell.as_bytes().first(), cell.as_bytes().last()) {
        (Some(&first), Some(&last))
            if first > b' ' && first < 0x80 && last > b' ' && last < 0x80 =>
        {
            cell
        }
        _ => cell.trim(),
    }
}

/// A cell typed by its column ([`Schema::typed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Typed<'a> {
    /// An empty cell in a typed column.
    Null,
    /// An integer in an integer column.
    Integer(i64),
    /// A finite number (in an integer column too, when the cell is not an integer).
    Float(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// A text cell, as read.
    Text(&'a str),
}

/// The input's columns: names and inferred types.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Column names, from the header.
    pub names: Vec<String>,
    /// Their types.
    pub types: Vec<ColumnType>,
    /// The position of the request-id column, when one is named.
    pub id: Option<usize>,
}

impl Schema {
    fn infer(names: Vec<String>, rows: &RawChunk, id: Option<usize>) -> Schema {
        let types = (0..names.len())
            .map(|column| {
                let mut errors = rows.errors().iter().map(|(row, _)| *row).peekable();
                let cells = (0..rows.len())
                    .filter(|row| errors.next_if_eq(row).is_none())
                    .filter_map(|row| rows.cell(row, column))
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty());
                // A type wins when most cells fit it: the others are then errors of their
                // rows, rather than every row failing for a few bad cells.
                let mut fits = [0_usize; 3];
                let mut total = 0_usize;
                for cell in cells {
                    total += 1;
                    for (count, ty) in fits.iter_mut().zip(TYPED) {
                        *count += usize::from(ty.fits(cell));
                    }
                }
                let ty = TYPED
                    .into_iter()
                    .zip(fits)
                    .find(|&(_, count)| total > 0 && count * 2 > total)
                    .map_or(ColumnType::Text, |(ty, _)| ty);
                // Every integer is a float: one cell that is only a float makes the column
                // float, so `0.25` among integers is never narrowed.
                if ty == ColumnType::Integer && fits[1] > fits[0] {
                    ColumnType::Float
                } else {
                    ty
                }
            })
            .collect();
        Schema { names, types, id }
    }

    /// The typed value of `cell` in `column`; an empty cell is `null`.
    pub fn value(&self, column: usize, cell: &str) -> Result<Value, String> {
        Ok(match self.typed(column, cell)? {
            Typed::Null => Value::Null,
            Typed::Integer(v) => Value::from(v),
            // `typed` answers only finite floats.
            Typed::Float(v) => Number::from_f64(v).map_or(Value::Null, Value::Number),
            Typed::Boolean(v) => Value::Bool(v),
            Typed::Text(text) => Value::String(text.to_owned()),
        })
    }

    /// `cell` in `column` typed, without allocating: what both paths read rows with.
    pub fn typed<'a>(&self, column: usize, cell: &'a str) -> Result<Typed<'a>, String> {
        let ty = self.types[column];
        if ty == ColumnType::Text {
            return Ok(Typed::Text(cell));
        }
        let trimmed = trimmed(cell);
        if trimmed.is_empty() {
            return Ok(Typed::Null);
        }
        let typed = match ty {
            ColumnType::Integer => match trimmed.parse::<i64>() {
                Ok(v) => Some(Typed::Integer(v)),
                Err(_) => parse_float(trimmed).map(Typed::Float),
            },
            ColumnType::Float => parse_float(trimmed).map(Typed::Float),
            ColumnType::Boolean => match trimmed {
                "true" | "True" => Some(Typed::Boolean(true)),
                "false" | "False" => Some(Typed::Boolean(false)),
                _ => None,
            },
            ColumnType::Text => unreachable!("answered above"),
        };
        typed.ok_or_else(|| {
            format!(
                "column `{}`: `{cell}` is not {} like the rest of the column",
                self.names[column],
                match ty {
                    ColumnType::Integer | ColumnType::Float => "a number",
                    ColumnType::Boolean => "true or false",
                    ColumnType::Text => "text",
                }
            )
        })
    }

    /// The predictor's input for a row: its values (the id column left out) positionally or
    /// as an object.
    pub fn input<'a>(
        &self,
        cells: impl ExactSizeIterator<Item = &'a str>,
        mode: RowInput,
    ) -> Result<Value, String> {
        let mut values = Vec::with_capacity(cells.len());
        let mut object = Map::new();
        for (column, cell) in cells.enumerate() {
            if Some(column) == self.id {
                continue;
            }
            let value = self.value(column, cell)?;
            match mode {
                RowInput::Positional => values.push(value),
                RowInput::Object => {
                    object.insert(self.names[column].clone(), value);
                }
            }
        }
        Ok(match mode {
            RowInput::Positional => Value::Array(values),
            RowInput::Object => Value::Object(object),
        })
    }
}

/// One row as read: its cells, and why it cannot be used when it cannot (ragged, not UTF-8): the tests' view of a chunk.
#[cfg(test)]
#[derive(Debug)]
pub struct RawRow {
    /// The cells as read (lossily decoded when not UTF-8).
    pub cells: Vec<String>,
    /// Why the row is unusable, when it is.
    pub error: Option<String>,
}

/// Up to `chunk_rows` rows as read, every cell in one text buffer: no allocation per cell,
/// and a chunk moves between threads as four vectors.
#[derive(Debug)]
pub struct RawChunk {
    /// The number of the chunk's first row (one-based, header excluded).
    pub first: u64,
    /// When the chunk's first row was read: its rows' latency counts from here.
    pub arrival: Arrival,
    text: String,
    /// The end of each cell in `text`.
    ends: Vec<usize>,
    /// Per row, the index in `ends` of its first cell; one more entry closes the last row.
    rows: Vec<usize>,
    /// The rows that cannot be used (ragged, not UTF-8, unparsable), by index, ascending.
    errors: Vec<(usize, String)>,
    /// Whether no cell holds a comma, a quote or a line break: then none needs quoting when
    /// written back.
    plain: bool,
    /// Where its buffers go once it is done with, for the reader's next chunks.
    recycle: Option<Arc<Recycle>>,
}

/// The buffers of chunks done with, which the reader fills again: a file's chunks then take
/// the same memory from the first to the last, allocated once, rather than a fresh set per
/// chunk that the allocator hands out from wherever its arenas have room.
#[derive(Debug, Default)]
pub(crate) struct Recycle {
    free: std::sync::Mutex<Vec<Buffers>>,
}

#[derive(Debug)]
struct Buffers {
    text: Vec<u8>,
    ends: Vec<usize>,
    rows: Vec<usize>,
}

/// Buffers kept at most: the chunks a run has in flight (waiting, being read, predicted).
const RECYCLED: usize = 8;

impl Recycle {
    fn take(&self) -> Option<Buffers> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }
}

impl Drop for RawChunk {
    fn drop(&mut self) {
        let Some(recycle) = self.recycle.take() else {
            return;
        };
        let mut text = std::mem::take(&mut self.text).into_bytes();
        let (mut ends, mut rows) = (
            std::mem::take(&mut self.ends),
            std::mem::take(&mut self.rows),
        );
        text.clear();
        ends.clear();
        rows.clear();
        let mut free = recycle
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < RECYCLED {
            free.push(Buffers { text, ends, rows });
        }
    }
}

impl RawChunk {
    /// The bytes of all its cells, with a comma after each.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Whether no cell needs quoting in CSV.
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The one-based number of row `row`.
    pub fn number(&self, row: usize) -> u64 {
        self.first + row as u64
    }

    /// The cells of row `row`.
    pub fn cells(&self, row: usize) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        let (first, last) = (self.rows[row], self.rows[row + 1]);
        let mut start = self.cell_start(first);
        self.ends[first..last].iter().map(move |&end| {
            let cell = &self.text[start..end];
            start = end + 1;
            cell
        })
    }

    /// Cell `column` of row `row`, when the row has it.
    pub fn cell(&self, row: usize, column: usize) -> Option<&str> {
        let index = self.rows[row] + column;
        (index < self.rows[row + 1]).then(|| &self.text[self.cell_start(index)..self.ends[index]])
    }

    /// Row `row` as CSV when the chunk [`is_plain`](RawChunk::is_plain): its cells, each
    /// followed by a comma.
    pub fn row_text(&self, row: usize) -> &str {
        &self.text[self.cell_start(self.rows[row])..self.cell_start(self.rows[row + 1])]
    }

    /// Where cell `index` starts in `text` (cells are stored each followed by a comma).
    fn cell_start(&self, index: usize) -> usize {
        if index == 0 {
            0
        } else {
            self.ends[index - 1] + 1
        }
    }

    /// The rows that cannot be used, ascending, with why.
    pub fn errors(&self) -> &[(usize, String)] {
        &self.errors
    }

    /// The chunk as one [`RawRow`] per row.
    #[cfg(test)]
    pub fn into_rows(self) -> Vec<RawRow> {
        let mut errors = self.errors.iter().peekable();
        (0..self.len())
            .map(|row| {
                let error = errors
                    .next_if(|(index, _)| *index == row)
                    .map(|(_, error)| error.clone());
                RawRow {
                    cells: self.cells(row).map(str::to_owned).collect(),
                    error,
                }
            })
            .collect()
    }
}

/// Builds a [`RawChunk`] from records as the CSV reader yields them.
struct ChunkBuilder {
    bytes: Vec<u8>,
    plain: bool,
    ends: Vec<usize>,
    rows: Vec<usize>,
    errors: Vec<(usize, String)>,
    first: u64,
    arrival: Arrival,
    recycle: Arc<Recycle>,
}

impl ChunkBuilder {
    /// A chunk of up to `rows` rows, its buffers sized like the last chunk's (`last`: its
    /// text bytes and cells) so that they are allocated once at their size rather than grown
    /// by doubling: a file's chunks then take the same memory from first to last.
    /// Buffers done with are reused from `recycle`.
    fn new(first: u64, rows: usize, last: Option<(usize, usize)>, recycle: &Arc<Recycle>) -> Self {
        // A little room over the last chunk's, for rows a little longer.
        let (text, cells) = last.map_or((rows * 24, rows * 4), |(text, cells)| {
            (text + text / 16 + 64, cells + cells / 16 + 16)
        });
        let mut buffers = recycle.take().unwrap_or_else(|| Buffers {
            text: Vec::new(),
            ends: Vec::new(),
            rows: Vec::new(),
        });
        buffers.text.reserve(text);
        buffers.ends.reserve(cells);
        buffers.rows.reserve(rows + 1);
        buffers.rows.push(0);
        ChunkBuilder {
            bytes: buffers.text,
            plain: true,
            ends: buffers.ends,
            rows: buffers.rows,
            errors: Vec::new(),
            first,
            arrival: Arrival::now(),
            recycle: Arc::clone(recycle),
        }
    }

    fn len(&self) -> usize {
        self.rows.len() - 1
    }

    /// Reads the input's next record into the chunk; false at the end of the input.
    fn read_row<R: std::io::Read>(
        &mut self,
        records: &mut Records<R>,
        width: usize,
    ) -> std::io::Result<bool> {
        let Some(record) = records.next_into(&mut self.bytes, &mut self.ends)? else {
            return Ok(false);
        };
        self.plain &= record.plain;
        if record.cells != width {
            let row = self.len();
            let number = self.first + row as u64;
            // The whole row goes in the message: the output has room for `width` cells. Its
            // cells are stored each followed by a comma, so the row is its text but the last.
            let start = self.rows[row]
                .checked_sub(1)
                .map_or(0, |cell| self.ends[cell] + 1);
            let text = String::from_utf8_lossy(&self.bytes[start..self.bytes.len() - 1]);
            self.errors.push((
                row,
                format!(
                    "row {number} has {} cells; the header has {width} columns: {text}",
                    record.cells
                ),
            ));
        }
        self.rows.push(self.ends.len());
        Ok(true)
    }

    fn build(mut self) -> RawChunk {
        let text = match String::from_utf8(self.bytes) {
            Ok(text) => text,
            Err(error) => {
                // Rare: find the rows that are not UTF-8, mark them and decode them lossily.
                let bytes = error.into_bytes();
                let mut text = String::with_capacity(bytes.len());
                let mut ends = Vec::with_capacity(self.ends.len());
                let mut bad = Vec::new();
                let mut start = 0;
                for row in 0..self.rows.len() - 1 {
                    let mut utf8 = true;
                    for cell in self.rows[row]..self.rows[row + 1] {
                        let end = self.ends[cell];
                        let decoded = String::from_utf8_lossy(&bytes[start..end]);
                        utf8 &= matches!(decoded, std::borrow::Cow::Borrowed(_));
                        text.push_str(&decoded);
                        ends.push(text.len());
                        text.push(',');
                        start = end + 1;
                    }
                    if !utf8 {
                        let number = self.first + row as u64;
                        bad.push((row, format!("row {number} is not UTF-8 text")));
                    }
                }
                self.ends = ends;
                // A row both ragged and not UTF-8 keeps its first error.
                for (row, error) in bad {
                    if !self.errors.iter().any(|(r, _)| *r == row) {
                        self.errors.push((row, error));
                    }
                }
                self.errors.sort_by_key(|(row, _)| *row);
                text
            }
        };
        let plain = self.plain;
        RawChunk {
            first: self.first,
            arrival: self.arrival,
            text,
            ends: self.ends,
            rows: self.rows,
            errors: self.errors,
            plain,
            recycle: Some(self.recycle),
        }
    }
}

/// What the reading thread sends.
#[derive(Debug)]
pub enum Read {
    /// The columns, once, before the first chunk.
    Schema(Arc<Schema>),
    /// Up to `chunk_rows` rows.
    Chunk(RawChunk),
}

/// Bytes of the input consumed so far, for progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the input.
    pub bytes: AtomicU64,
}

struct Counting<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A synchronous reader over chunks arriving from an async stream (a dataset file).
pub struct ChannelReader {
    chunks: mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what `chunks` delivers until it closes.
    pub fn new(chunks: mpsc::Receiver<Result<Bytes>>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(error)) => return Err(std::io::Error::other(error)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Reads `input` (named `name` in errors) on the current (blocking) thread and sends the
/// schema, then chunks of `chunk_rows` rows, to `out`; at most `out`'s capacity chunks wait.
/// Stops early when `out` closes.
///
/// # Errors
/// [`Error::InvalidRequest`] for an empty file, a header-only file, an unreadable header or
/// an unknown id column; [`Error::Storage`] when the input cannot be read.
pub fn read_csv(
    input: Box<dyn std::io::Read + Send>,
    name: &str,
    chunk_rows: usize,
    id_column: &str,
    progress: Arc<Progress>,
    out: mpsc::Sender<Read>,
) -> Result<u64> {
    let counting = Counting {
        inner: input,
        progress,
    };
    let mut records = Records::new(counting, 1 << 20);
    let storage = |error: std::io::Error| Error::Storage {
        location: name.to_owned(),
        source: Box::new(error),
    };
    let (mut header, mut ends) = (Vec::new(), Vec::new());
    if records
        .next_into(&mut header, &mut ends)
        .map_err(storage)?
        .is_none()
    {
        return Err(Error::invalid_request(format!(
            "input file `{name}` is empty: expected a header line, then one row per prediction"
        )));
    }
    let mut start = 0;
    let names: Vec<String> = ends
        .iter()
        .map(|&end| {
            let cell = String::from_utf8_lossy(&header[start..end])
                .trim()
                .to_owned();
            start = end + 1;
            cell
        })
        .collect();
    if names.iter().all(String::is_empty) {
        return Err(Error::invalid_request(format!(
            "input file `{name}` has an empty header line"
        )));
    }
    let id = if id_column.is_empty() {
        None
    } else {
        Some(names.iter().position(|n| n == id_column).ok_or_else(|| {
            Error::invalid_request(format!(
                "input file `{name}` has no id column `{id_column}`; its columns are {}",
                names.join(", ")
            ))
        })?)
    };
    let width = names.len();
    let mut number = 0_u64;
    let mut schema: Option<Arc<Schema>> = None;
    let mut pending = Some(names);
    let mut last = None;
    let recycle = Arc::new(Recycle::default());
    loop {
        let mut rows = ChunkBuilder::new(number + 1, chunk_rows.min(100_000), last, &recycle);
        while rows.len() < chunk_rows && rows.read_row(&mut records, width).map_err(storage)? {
            number += 1;
        }
        let done = rows.len() < chunk_rows;
        last = Some((rows.bytes.len(), rows.ends.len()));
        let rows = rows.build();
        if let Some(names) = pending.take() {
            if rows.is_empty() {
                return Err(Error::invalid_request(format!(
                    "input file `{name}` has a header but no rows"
                )));
            }
            let inferred = Arc::new(Schema::infer(names, &rows, id));
            schema = Some(Arc::clone(&inferred));
            if out.blocking_send(Read::Schema(inferred)).is_err() {
                return Ok(number);
            }
        }
        debug_assert!(schema.is_some());
        if !rows.is_empty() && out.blocking_send(Read::Chunk(rows)).is_err() {
            return Ok(number);
        }
        if done {
            return Ok(number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, chunk_rows: usize) -> Result<(Arc<Schema>, Vec<RawRow>)> {
        let (tx, mut rx) = mpsc::channel(1024);
        read_csv(
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
            "in.csv",
            chunk_rows,
            "",
            Arc::default(),
            tx,
        )?;
        let mut schema = None;
        let mut rows = Vec::new();
        while let Ok(message) = rx.try_recv() {
            match message {
                Read::Schema(s) => schema = Some(s),
                Read::Chunk(chunk) => rows.extend(chunk.into_rows()),
            }
        }
        Ok((schema.unwrap(), rows))
    }

    #[test]
    fn a_float_among_integers_makes_the_column_float_in_every_chunk() {
        // Found by the example's tests: `0.5,0.25,0.25` among integer rows reached a
        // vectorised predictor as nulls, which summed to 0.5 instead of 1.0.
        let (schema, rows) = read("a,b,c\n1,2,3\n0.5,0.25,0.25\n4,5,6\n", 10).unwrap();
        assert_eq!(schema.types, [ColumnType::Float; 3]);
        // A column typed integer by its first chunk still carries a later chunk's float.
        let (tx, mut rx) = mpsc::channel(16);
        read_csv(
            Box::new(std::io::Cursor::new(b"a\n1\n2\n3\n0.25\n".to_vec())),
            "in.csv",
            2,
            "",
            Arc::default(),
            tx,
        )
        .unwrap();
        let Some(Read::Schema(later)) = rx.try_recv().ok() else {
            panic!("a schema first")
        };
        assert_eq!(later.types, [ColumnType::Integer]);
        let mut sums = Vec::new();
        while let Ok(Read::Chunk(chunk)) = rx.try_recv() {
            let framed = crate::chunk::frame(&later, &chunk).unwrap();
            assert!(framed.errors.is_empty());
            let summed = crate::chunk::sum_columns(&framed.frame).unwrap();
            sums.extend(crate::chunk::values(&summed));
        }
        assert_eq!(
            sums,
            [1.0, 2.0, 3.0, 0.25].map(|v| Some(serde_json::json!(v)))
        );
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn short_decimals_parse_as_the_standard_parser_does() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let digits = (state % 15 + 1) as u32;
            let mantissa = (state >> 8) % 10_u64.pow(digits);
            let point = ((state >> 4) % u64::from(digits + 1)) as usize;
            let mut text = format!("{mantissa:0width$}", width = digits as usize);
            if point > 0 {
                text.insert(text.len() - point, '.');
            }
            if state & 1 == 1 {
                text.insert(0, '-');
            }
            assert_eq!(parse_float(&text), text.parse::<f64>().ok(), "{text}");
        }
        for text in [
            "1e5", ".5", "5.", "-0", "1.2.3", "", "-", "+1", "inf", "0x10", "1_0",
        ] {
            assert_eq!(
                parse_float(text),
                text.parse::<f64>().ok().filter(|v| v.is_finite()),
                "{text}"
            );
        }
    }

    #[test]
    fn types_are_inferred_and_cells_typed() {
        let (schema, rows) = read("a,b,c,d\n1,2.5,x,true\n3,4,y,false\n", 1).unwrap();
        assert_eq!(
            schema.types,
            [
                ColumnType::Integer,
                ColumnType::Float,
                ColumnType::Text,
                ColumnType::Boolean
            ]
        );
        assert_eq!(rows.len(), 2);
        let cells = || rows[1].cells.iter().map(String::as_str);
        assert_eq!(
            schema.input(cells(), RowInput::Positional).unwrap(),
            serde_json::json!([3, 4.0, "y", false])
        );
        assert_eq!(
            schema.input(cells(), RowInput::Object).unwrap(),
            serde_json::json!({"a": 3, "b": 4.0, "c": "y", "d": false})
        );
        let bad = schema.value(1, "abc").unwrap_err();
        assert_eq!(
            bad,
            "column `b`: `abc` is not a number like the rest of the column"
        );
    }

    #[test]
    fn quoted_cells_crlf_lines_and_a_byte_order_mark_read_as_csv_reads_them() {
        let (schema, rows) = read("\u{feff}a,b\r\n\"x,\r\ny\",1\r\n\r\n2,3\r\n4\r\n", 10).unwrap();
        assert_eq!(schema.names, ["a", "b"]);
        let cells: Vec<&[String]> = rows.iter().map(|row| row.cells.as_slice()).collect();
        assert_eq!(cells, [&["x,\r\ny", "1"][..], &["2", "3"], &["4"]]);
        assert!(rows[0].error.is_none() && rows[1].error.is_none());
        assert_eq!(
            rows[2].error.as_deref(),
            Some("row 3 has 1 cells; the header has 2 columns: 4")
        );
    }

    #[test]
    fn bad_files_and_rows_are_named() {
        let empty = read("", 10).unwrap_err().to_string();
        assert!(empty.contains("`in.csv` is empty"), "{empty}");
        let header = read("a,b\n", 10).unwrap_err().to_string();
        assert!(header.contains("has a header but no rows"), "{header}");
        let (_, rows) = read("a,b\n1,2\n1\n1,2,3\n4,5\n", 10).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[1].error.as_deref(),
            Some("row 2 has 1 cells; the header has 2 columns: 1")
        );
        assert!(rows[2].error.is_some() && rows[3].error.is_none());
    }
}
