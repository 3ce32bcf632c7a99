//! The background task that batches queued records into JSON-lines segments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tokio::sync::{Notify, mpsc, oneshot};

use super::Counters;
use super::row::{RowRef, micros};
use crate::error::{Error, Result};
use crate::record::PredictionRecord;

/// What travels from the log's handles to its writer. Records and commands share one queue so
/// that a flush covers exactly the records queued before it.
#[derive(Debug)]
pub(super) enum Message {
    Record(Box<PredictionRecord>),
    Flush(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// Attempts per segment before its records are counted as failed.
const WRITE_ATTEMPTS: u32 = 4;

pub(super) struct Writer {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) prefix: Path,
    pub(super) writer_id: String,
    pub(super) segment_records: usize,
    pub(super) flush_interval: Duration,
    pub(super) counters: Arc<Counters>,
    pub(super) sequence: u64,
    pub(super) buffer: Vec<PredictionRecord>,
}

impl Writer {
    /// Drains the queue when woken (by a command, or a queue more than half full) and every
    /// flush interval, rather than on every record: waking on each one cost a task switch per
    /// prediction on the thread that serves them.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Message>, wake: Arc<Notify>) {
        // `interval` would tick at once; the first write waits a whole interval.
        let first = tokio::time::Instant::now() + self.flush_interval;
        let mut ticker = tokio::time::interval_at(first, self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ticked = tokio::select! {
                () = wake.notified() => false,
                _ = ticker.tick() => true,
            };
            loop {
                match queue.try_recv() {
                    Ok(Message::Record(record)) => self.push(*record).await,
                    Ok(Message::Flush(ack)) => {
                        let _ = ack.send(self.write_buffer().await);
                    }
                    Ok(Message::Close(ack)) => return self.close(queue, ack).await,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        // Every handle is gone: write what is left and stop.
                        let _ = self.write_buffer().await;
                        return;
                    }
                }
            }
            if ticked && !self.buffer.is_empty() {
                let _ = self.write_buffer().await;
            }
        }
    }

    /// Refuses new records, then writes every record accepted before and answers every
    /// command still queued.
    async fn close(mut self, mut queue: mpsc::Receiver<Message>, ack: oneshot::Sender<Result<()>>) {
        queue.close();
        let mut waiting = vec![ack];
        while let Some(message) = queue.recv().await {
            match message {
                Message::Record(record) => self.push(*record).await,
                Message::Flush(ack) | Message::Close(ack) => waiting.push(ack),
            }
        }
        let outcome = self.write_buffer().await;
        for ack in waiting {
            let _ = ack.send(clone_outcome(&outcome));
        }
    }

    async fn push(&mut self, record: PredictionRecord) {
        self.buffer.push(record);
        if self.buffer.len() >= self.segment_records {
            let _ = self.write_buffer().await;
        }
    }

    /// Writes the buffer as one segment per endpoint; the buffer is empty afterwards either way.
    async fn write_buffer(&mut self) -> Result<()> {
        let buffer = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.segment_records));
        let mut by_endpoint: BTreeMap<String, Vec<PredictionRecord>> = BTreeMap::new();
        let single = buffer.first().map(|first| first.endpoint.clone());
        match single {
            // The usual case, one endpoint per process: no regrouping of thousands of records.
            Some(endpoint) if buffer.iter().all(|record| record.endpoint == endpoint) => {
                by_endpoint.insert(endpoint, buffer);
            }
            _ => {
                for record in buffer {
                    by_endpoint
                        .entry(record.endpoint.clone())
                        .or_default()
                        .push(record);
                }
            }
        }
        let mut outcome = Ok(());
        for (endpoint, records) in by_endpoint {
            self.sequence += 1;
            let location = segment_path(
                &self.prefix,
                &endpoint,
                &records,
                &self.writer_id,
                self.sequence,
            );
            let count = records.len() as u64;
            let bytes = encode(records).await;
            match self.put(&location, bytes).await {
                Ok(()) => {
                    self.counters.written.fetch_add(count, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters.failed.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(%location, records = count, %error, "prediction log segment lost");
                    outcome = Err(error);
                }
            }
        }
        outcome
    }

    async fn put(&self, location: &Path, bytes: Vec<u8>) -> Result<()> {
        let payload = PutPayload::from(bytes);
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.store.put(location, payload.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(%location, attempt, %error, "prediction log write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(error) => {
                    return Err(Error::Storage {
                        location: location.to_string(),
                        source: Box::new(error),
                    });
                }
            }
        }
    }
}

/// `{prefix}/{endpoint}/date={write date}/{first start µs}-{last start µs}-{writer}-{seq}.jsonl`:
/// the date directory and the start-time bounds in the name let queries skip segments unread.
fn segment_path(
    prefix: &Path,
    endpoint: &str,
    records: &[PredictionRecord],
    writer_id: &str,
    sequence: u64,
) -> Path {
    let first = records
        .iter()
        .map(|r| micros(r.start_time))
        .min()
        .unwrap_or(0);
    let last = records
        .iter()
        .map(|r| micros(r.start_time))
        .max()
        .unwrap_or(0);
    let date = DateTime::<Utc>::from(SystemTime::now()).format("%Y-%m-%d");
    prefix
        .clone()
        .join(endpoint)
        .join(format!("date={date}"))
        .join(format!("{first}-{last}-{writer_id}-{sequence:08}.jsonl"))
}

/// The segment name's start-time bounds in microseconds, if it is a segment.
pub(super) fn segment_bounds(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let mut parts = stem.splitn(3, '-');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((first, last))
}

/// The records as JSON lines. A segment holds thousands of records, milliseconds of work:
/// done a slice at a time, yielding between slices, so that the requests sharing this thread
/// are answered meanwhile (encoded in one go on a one-core server, it held every request for
/// as long, and p99 latency went from about 1.5 to 8 ms). A slice is a few hundred µs of work:
/// large enough that the writer outpaces 64 busy connections between its turns (with 64-record
/// slices it barely kept pace, and the queue overflowed), small enough for the p99. Records are
/// dropped as they are encoded, which is work of the same size.
async fn encode(records: Vec<PredictionRecord>) -> Vec<u8> {
    const SLICE: usize = 256;
    let mut bytes = Vec::with_capacity(records.len() * 256);
    let mut records = records.into_iter();
    loop {
        let mut encoded = 0;
        for record in records.by_ref().take(SLICE) {
            serde_json::to_writer(&mut bytes, &RowRef::from(&record))
                .expect("a row always serializes");
            bytes.push(b'\n');
            encoded += 1;
        }
        if encoded < SLICE {
            return bytes;
        }
        tokio::task::yield_now().await;
    }
}

fn clone_outcome(outcome: &Result<()>) -> Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => Err(Error::Storage {
            location: "prediction log".to_owned(),
            source: error.to_string().into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_carry_their_bounds() {
        let record = |us: u64| PredictionRecord {
            request_id: "r".into(),
            endpoint: "iris".into(),
            model: "m".into(),
            model_version: "1".into(),
            input: None,
            output: None,
            error: None,
            status: 200,
            start_time: SystemTime::UNIX_EPOCH + Duration::from_micros(us),
            elapsed_ms: 0.0,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
        };
        let path = segment_path(
            &Path::from("predictions"),
            "iris",
            &[record(30), record(10), record(20)],
            "w1",
            7,
        );
        let name = path.filename().unwrap();
        assert_eq!(name, "10-30-w1-00000007.jsonl");
        assert!(path.as_ref().starts_with("predictions/iris/date="));
        assert_eq!(segment_bounds(name), Some((10, 30)));
        assert_eq!(segment_bounds("notes.txt"), None);
    }
}
