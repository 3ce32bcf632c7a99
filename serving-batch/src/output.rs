//! The output CSV: the header, then each chunk's rows (written on the chunk's thread) in
//! input order, to a dataset file that appears only once complete.

use serde_json::Value;
use serving_core::datasets::DatasetWriter;
use serving_core::{OutputFormat, Result};

use crate::source::RawChunk;

/// Where the CSV goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// A dataset file, written atomically.
    Dataset(DatasetWriter),
    /// Memory (the transport suite's harness reads it back).
    #[cfg_attr(not(test), allow(dead_code))]
    Memory(Vec<u8>),
}

impl Target {
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            // The writer gathers parts in buffers it reuses: no buffer here, and no copy
            // beyond the one into the part.
            Target::Dataset(writer) => writer.write(bytes).await,
            Target::Memory(memory) => {
                memory.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

/// Writes the output rows of one run.
#[derive(Debug)]
pub(crate) struct CsvOutput {
    /// The header, until the first rows follow it.
    header: Option<Vec<u8>>,
    target: Target,
}

impl CsvOutput {
    pub(crate) fn new(
        target: Target,
        format: OutputFormat,
        names: &[String],
        prediction_column: &str,
    ) -> Result<Self> {
        let header: Vec<&str> = match format {
            OutputFormat::Full => names
                .iter()
                .map(String::as_str)
                .chain([prediction_column, "error"])
                .collect(),
            OutputFormat::Original => vec!["input", "prediction"],
        };
        let mut csv = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        csv.write_record(&header).map_err(csv_error)?;
        let header = csv
            .into_inner()
            .map_err(|error| csv_error(error.into_error().into()))?;
        Ok(CsvOutput {
            header: Some(header),
            target,
        })
    }

    /// Appends rows already written as CSV (a chunk's, written on another thread); the rows
    /// are counted by whoever wrote them.
    pub(crate) async fn append(&mut self, rows: &[u8]) -> Result<()> {
        if let Some(header) = self.header.take() {
            self.target.write(&header).await?;
        }
        self.target.write(rows).await
    }

    /// Writes what is pending and answers the target, not yet finished.
    pub(crate) async fn into_target(mut self) -> Result<Target> {
        if let Some(header) = self.header.take() {
            self.target.write(&header).await?;
        }
        Ok(self.target)
    }
}

/// Writes CSV rows by hand: what the `csv` crate writes (quotes only where needed, `\n` at
/// the end of each row), with no per-field state machine for cells known to need no quotes.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub(crate) bytes: Vec<u8>,
}

impl Rows {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Rows {
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// Rows written into `buffer` (emptied), when there is one, with room for `capacity`.
    pub(crate) fn reusing(buffer: Option<Vec<u8>>, capacity: usize) -> Self {
        let mut bytes = buffer.unwrap_or_default();
        bytes.clear();
        bytes.reserve(capacity);
        Rows { bytes }
    }

    /// Appends one row: `cells` (`plain` says none of them needs quoting), then `more`.
    pub(crate) fn row<'a>(
        &mut self,
        cells: impl Iterator<Item = &'a str>,
        plain: bool,
        more: &[&str],
    ) {
        let mut first = true;
        for cell in cells {
            if !first {
                self.bytes.push(b',');
            }
            first = false;
            self.cell(cell, plain);
        }
        for cell in more {
            if !first {
                self.bytes.push(b',');
            }
            first = false;
            self.cell(cell, false);
        }
        self.bytes.push(b'\n');
    }

    /// Appends row `row` of `chunk` as the `full` format writes it: its cells (padded to
    /// `width`, with `id` written in the id column when given as `(column, id)`), then `more`.
    pub(crate) fn full_row(
        &mut self,
        chunk: &RawChunk,
        row: usize,
        width: usize,
        id: Option<(usize, &str)>,
        more: &[&str],
    ) {
        let plain = chunk.is_plain();
        if plain && id.is_none() && chunk.cells(row).len() == width {
            return self.plain_row(chunk.row_text(row), more);
        }
        let cells = chunk
            .cells(row)
            .chain(std::iter::repeat(""))
            .take(width)
            .enumerate()
            .map(|(c, text)| match id {
                Some((column, id)) if column == c => id,
                _ => text,
            });
        self.row(cells, plain, more);
    }

    /// Appends one row whose cells are `text` (each followed by a comma, none needing
    /// quotes), then `more`.
    pub(crate) fn plain_row(&mut self, text: &str, more: &[&str]) {
        self.bytes.extend_from_slice(text.as_bytes());
        for (i, cell) in more.iter().enumerate() {
            if i > 0 {
                self.bytes.push(b',');
            }
            self.cell(cell, false);
        }
        self.bytes.push(b'\n');
    }

    fn cell(&mut self, cell: &str, plain: bool) {
        if plain
            || !cell
                .bytes()
                .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
        {
            self.bytes.extend_from_slice(cell.as_bytes());
            return;
        }
        self.bytes.push(b'"');
        for part in cell.split_inclusive('"') {
            self.bytes.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                self.bytes.push(b'"');
            }
        }
        self.bytes.push(b'"');
    }
}

/// Appends finite `v` as serde_json (ryu) writes it, the shortest text that reads back as
/// `v`. Values between 0.001 and 1e9 with at most six decimals, most predictions, are written
/// without ryu: there a double's neighbours are closer than 10⁻⁶, so at most one decimal with
/// `k` places reads back as `v`, and the smallest such `k` is ryu's answer.
pub(crate) fn push_f64(cell: &mut String, v: f64) {
    let magnitude = v.abs();
    if (1e-3..1e9).contains(&magnitude) {
        const TENS: [f64; 7] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];
        for (places, ten) in TENS.iter().enumerate() {
            let scaled = (magnitude * ten).round();
            if scaled / ten == magnitude {
                let scaled = scaled as u64;
                let unit = 10_u64.pow(places as u32);
                if v < 0.0 {
                    cell.push('-');
                }
                cell.push_str(itoa::Buffer::new().format(scaled / unit));
                cell.push('.');
                if places == 0 {
                    cell.push('0');
                } else {
                    let mut digits = itoa::Buffer::new();
                    let fraction = digits.format(scaled % unit);
                    for _ in fraction.len()..places {
                        cell.push('0');
                    }
                    cell.push_str(fraction);
                }
                return;
            }
        }
    }
    cell.push_str(ryu::Buffer::new().format_finite(v));
}

/// A prediction as its output cell, appended to `cell`: text as is, anything else as JSON.
pub(crate) fn write_text(output: &Value, cell: &mut String) {
    match output {
        Value::String(text) => cell.push_str(text),
        Value::Null => {}
        // Numbers, the usual prediction, without the formatting machinery of `to_string`.
        Value::Number(number) if number.is_f64() => {
            push_f64(cell, number.as_f64().unwrap_or_default());
        }
        Value::Number(number) if number.is_i64() => {
            cell.push_str(itoa::Buffer::new().format(number.as_i64().unwrap_or_default()));
        }
        other => {
            use std::fmt::Write as _;
            let _ = write!(cell, "{other}");
        }
    }
}

pub(crate) fn csv_error(error: csv::Error) -> serving_core::Error {
    serving_core::Error::Storage {
        location: "the output CSV".to_owned(),
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::{Rows, push_f64};

    #[test]
    fn floats_are_written_as_ryu_writes_them() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut cell = String::new();
        let mut check = |v: f64| {
            cell.clear();
            push_f64(&mut cell, v);
            assert_eq!(cell, ryu::Buffer::new().format_finite(v), "{v:?}");
        };
        for _ in 0..300_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Sums of one-decimal cells, as the bench's; then arbitrary doubles.
            let tenths = (state % 400) as f64;
            check(tenths / 10.0 + (state >> 20 & 0xff) as f64 / 10.0);
            check(f64::from_bits(state >> 2) % 1e10);
            check((state % 1_000_000_000) as f64 / 1e6 - 500.0);
        }
        for v in [
            0.001,
            0.000999,
            1e9,
            999_999_999.5,
            0.1 + 0.2,
            -0.0,
            0.0,
            3.0,
            -2.5,
        ] {
            check(v);
        }
    }

    #[test]
    fn rows_are_written_as_the_csv_crate_writes_them() {
        let cells = [
            "plain",
            "",
            "a,b",
            "say \"hi\"",
            "two\nlines",
            "cr\r",
            " spaced ",
            "\"",
        ];
        let mut expected = csv::WriterBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_writer(Vec::new());
        expected.write_record(cells).unwrap();
        expected.write_record(["1", "2", "3.5", ""]).unwrap();
        let expected = expected.into_inner().unwrap();
        let mut rows = Rows::default();
        rows.row(cells[..2].iter().copied(), false, &cells[2..]);
        rows.row(["1", "2"].into_iter(), true, &["3.5", ""]);
        assert_eq!(
            String::from_utf8(rows.bytes).unwrap(),
            String::from_utf8(expected).unwrap()
        );
    }
}
