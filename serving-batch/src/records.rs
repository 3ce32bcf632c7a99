//! Splits CSV input into records. A line with no quote and no lone carriage return, nearly
//! every line of a model's input, is split on its commas with `memchr` and copied in one
//! piece; any other goes through `csv_core`, the parser the `csv` crate is built on. Both read
//! a file as `csv` does: a UTF-8 byte-order mark stripped, blank lines skipped, `\n`, `\r` or
//! `\r\n` ending a record, quotes only where a field starts with one.

use std::io::{self, Read};

use csv_core::ReadRecordResult;

/// What [`Records::next_into`] appended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// The number of cells.
    pub cells: usize,
    /// No cell holds a comma, a quote or a line break: the record is written back unquoted.
    pub plain: bool,
}

/// The records of a CSV input, read through a buffer of its own.
pub(crate) struct Records<R> {
    input: R,
    buffer: Vec<u8>,
    /// The unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// Whether a record was read: the first (the header) goes through `csv_core`, which
    /// strips a byte-order mark.
    started: bool,
    parser: csv_core::Reader,
    fields: Vec<u8>,
    field_ends: Vec<usize>,
}

impl<R: Read> Records<R> {
    /// Reads `input` through a buffer of `capacity` bytes (grown for a longer record).
    pub fn new(input: R, capacity: usize) -> Self {
        Records {
            input,
            buffer: vec![0; capacity.max(1)],
            start: 0,
            end: 0,
            eof: false,
            started: false,
            parser: csv_core::Reader::new(),
            fields: vec![0; 256],
            field_ends: vec![0; 16],
        }
    }

    /// Appends the next record's cells to `text`, each followed by a comma, and each cell's
    /// end in `text` to `ends`; `None` at the end of the input.
    ///
    /// # Errors
    /// What reading the input fails with.
    pub fn next_into(
        &mut self,
        text: &mut Vec<u8>,
        ends: &mut Vec<usize>,
    ) -> io::Result<Option<Record>> {
        if self.started {
            loop {
                let rest = &self.buffer[self.start..self.end];
                let Some(at) = memchr::memchr3(b'\n', b'\r', b'"', rest) else {
                    if self.eof {
                        if rest.is_empty() {
                            return Ok(None);
                        }
                        // The last line, with no line break after it.
                        let line = self.start..self.end;
                        self.start = self.end;
                        return Ok(Some(self.plain_line(line, text, ends)));
                    }
                    self.fill()?;
                    continue;
                };
                let terminator = match rest[at] {
                    b'\n' => 1,
                    b'\r' if rest.get(at + 1) == Some(&b'\n') => 2,
                    // A carriage return at the buffer's end may be half of a `\r\n`.
                    b'\r' if at + 1 == rest.len() && !self.eof => {
                        self.fill()?;
                        continue;
                    }
                    // A quote, or a lone carriage return (which ends a record).
                    _ => break,
                };
                let line = self.start..self.start + at;
                self.start += at + terminator;
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(self.plain_line(line, text, ends)));
            }
        }
        self.started = true;
        // `csv_core` strips the byte-order mark from the first input it is given, and takes
        // an empty input for the end of the file: give it one byte more than the mark.
        while self.end - self.start < 4 && !self.eof {
            self.fill()?;
        }
        self.parsed_into(text, ends)
    }

    /// A line without quotes or carriage returns: its bytes as they are, a comma after.
    fn plain_line(
        &self,
        line: std::ops::Range<usize>,
        text: &mut Vec<u8>,
        ends: &mut Vec<usize>,
    ) -> Record {
        let bytes = &self.buffer[line];
        let base = text.len();
        text.extend_from_slice(bytes);
        text.push(b',');
        let before = ends.len();
        ends.extend(memchr::memchr_iter(b',', bytes).map(|comma| base + comma));
        ends.push(base + bytes.len());
        Record {
            cells: ends.len() - before,
            plain: true,
        }
    }

    /// The next record through `csv_core`.
    fn parsed_into(
        &mut self,
        text: &mut Vec<u8>,
        ends: &mut Vec<usize>,
    ) -> io::Result<Option<Record>> {
        let (mut written, mut cells) = (0, 0);
        loop {
            let (result, read, wrote, ended) = self.parser.read_record(
                &self.buffer[self.start..self.end],
                &mut self.fields[written..],
                &mut self.field_ends[cells..],
            );
            self.start += read;
            written += wrote;
            cells += ended;
            match result {
                ReadRecordResult::InputEmpty => {
                    // At the end of the input `csv_core` is called with none, which ends the
                    // record it is in; before it, never (it would take it for the end).
                    if !self.eof {
                        self.fill()?;
                    }
                }
                ReadRecordResult::OutputFull => {
                    let size = self.fields.len() * 2;
                    self.fields.resize(size, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let size = self.field_ends.len() * 2;
                    self.field_ends.resize(size, 0);
                }
                ReadRecordResult::Record => break,
                ReadRecordResult::End => return Ok(None),
            }
        }
        let fields = &self.fields[..written];
        let mut from = 0;
        for &to in &self.field_ends[..cells] {
            text.extend_from_slice(&fields[from..to]);
            ends.push(text.len());
            text.push(b',');
            from = to;
        }
        Ok(Some(Record {
            cells,
            plain: !fields
                .iter()
                .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')),
        }))
    }

    /// Moves the unread bytes to the buffer's front and reads more after them, growing the
    /// buffer when they fill it.
    fn fill(&mut self) -> io::Result<()> {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buffer.len() {
            let size = self.buffer.len() * 2;
            self.buffer.resize(size, 0);
        }
        loop {
            match self.input.read(&mut self.buffer[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(read) => {
                    self.end += read;
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `input` with ours, through a buffer of `capacity` bytes, cell by cell.
    fn ours(input: &[u8], capacity: usize) -> Vec<(Vec<Vec<u8>>, bool)> {
        let mut records = Records::new(input, capacity);
        let (mut text, mut ends) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while let Some(record) = records.next_into(&mut text, &mut ends).unwrap() {
            let first = ends.len() - record.cells;
            let mut start = if first == 0 { 0 } else { ends[first - 1] + 1 };
            let cells = ends[first..]
                .iter()
                .map(|&end| {
                    let cell = text[start..end].to_vec();
                    start = end + 1;
                    cell
                })
                .collect();
            out.push((cells, record.plain));
        }
        out
    }

    /// Reads `input` as the `csv` crate does.
    fn theirs(input: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(false)
            .from_reader(input);
        reader
            .byte_records()
            .map(|record| record.unwrap().iter().map(<[u8]>::to_vec).collect())
            .collect()
    }

    #[test]
    fn records_are_read_as_the_csv_crate_reads_them() {
        let alphabet: [&[u8]; 10] = [
            b"a",
            b"7",
            b",",
            b",",
            b"\"",
            b"\n",
            b"\r",
            b"\r\n",
            b" ",
            "é".as_bytes(),
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for case in 0..10_000 {
            let mut input = Vec::new();
            if case % 7 == 0 {
                input.extend_from_slice(b"\xEF\xBB\xBF");
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = state % 40;
            for _ in 0..length {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.extend_from_slice(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let expected = theirs(&input);
            for capacity in [1, 3, 8, 1 << 10] {
                let got = ours(&input, capacity);
                let cells: Vec<_> = got.iter().map(|(cells, _)| cells.clone()).collect();
                assert_eq!(
                    cells,
                    expected,
                    "{:?}, buffer {capacity}",
                    String::from_utf8_lossy(&input)
                );
                for (cells, plain) in got {
                    let special = cells.iter().flatten().any(|b| b",\"\n\r".contains(b));
                    assert_eq!(plain, !special, "{:?}", String::from_utf8_lossy(&input));
                }
            }
        }
    }

    #[test]
    fn plain_lines_and_crlf_files_are_split_on_commas() {
        let got = ours(b"\xEF\xBB\xBFa,b\r\n1,2\r\n\r\n3,,4\n5", 4);
        let cells: Vec<Vec<&[u8]>> = got
            .iter()
            .map(|(cells, _)| cells.iter().map(Vec::as_slice).collect())
            .collect();
        assert_eq!(
            cells,
            [
                vec![&b"a"[..], b"b"],
                vec![b"1", b"2"],
                vec![b"3", b"", b"4"],
                vec![b"5"]
            ]
        );
    }
}
