//! Where records wait, encoded, for the store: [`Pending`] batches per endpoint, and the
//! [`Writer`] that stores them as segments.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tokio::sync::Notify;

use super::Counters;
use super::row::{RowRef, micros};
use crate::error::{Error, Result};
use crate::observe::record::PredictionRecord;
use crate::sync::Locked;

/// Attempts per segment before its records are counted as failed.
const WRITE_ATTEMPTS: u32 = 4;

/// Encoded records waiting for the store. Records are encoded as they are recorded, while
/// they are still in the CPU cache (encoding them later, in bulk, cost twice as much under
/// load), and then wait here as bytes.
#[derive(Debug)]
pub(super) struct Pending {
    batches: Mutex<Batches>,
    /// Most records waiting (`queue_capacity`).
    capacity: usize,
    /// Records per segment (`segment_records`).
    segment_records: usize,
}

#[derive(Debug, Default)]
struct Batches {
    /// The batch each endpoint is filling.
    filling: HashMap<String, Batch>,
    /// Batches that reached the segment size, oldest first.
    full: Vec<(String, Batch)>,
    /// Records waiting, in all batches.
    records: usize,
    /// Set by `close`: nothing more is accepted.
    closed: bool,
}

/// JSON lines of one endpoint's records, and the bounds of their start times.
#[derive(Debug, Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    records: usize,
    first_us: i64,
    last_us: i64,
}

/// Why `Pending::push` refused a record.
pub(super) enum Refusal {
    Full,
    Closed,
}

thread_local! {
    /// Where `push` encodes a record before taking the lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Pending {
    /// Room for `capacity` waiting records, in segments of `segment_records`.
    pub(super) fn new(capacity: usize, segment_records: usize) -> Self {
        Pending {
            batches: Mutex::default(),
            capacity,
            segment_records,
        }
    }

    /// Encodes `record` and adds it to its endpoint's batch. `Ok(true)` when a batch became
    /// full and the writer should be woken.
    pub(super) fn push(&self, record: &PredictionRecord) -> std::result::Result<bool, Refusal> {
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, &RowRef::from(record))
                .expect("a row always serializes");
            line.push(b'\n');
            let mut pending = self.batches.locked();
            if pending.closed {
                return Err(Refusal::Closed);
            }
            if pending.records >= self.capacity {
                return Err(Refusal::Full);
            }
            pending.records += 1;
            let at = micros(record.start_time);
            let batch = match pending.filling.get_mut(&record.endpoint) {
                Some(batch) => batch,
                None => pending.filling.entry(record.endpoint.clone()).or_default(),
            };
            batch.add(line, at, self.segment_records);
            if batch.records < self.segment_records {
                return Ok(false);
            }
            let full = std::mem::take(batch);
            pending.full.push((record.endpoint.clone(), full));
            Ok(true)
        })
    }

    /// The batches to write: the full ones, and with `all` the ones filling too.
    pub(super) fn take(&self, all: bool) -> Vec<(String, Batch)> {
        let mut pending = self.batches.locked();
        let mut batches = std::mem::take(&mut pending.full);
        if all {
            batches.extend(pending.filling.drain().filter(|(_, b)| b.records > 0));
        }
        pending.records -= batches.iter().map(|(_, b)| b.records).sum::<usize>();
        batches
    }

    /// Refuses every record from now on; what is pending is still taken and written.
    pub(super) fn close(&self) {
        self.batches.locked().closed = true;
    }

    /// Records waiting.
    pub(super) fn len(&self) -> usize {
        self.batches.locked().records
    }
}

/// The most a batch reserves up front.
const MAX_RESERVE: usize = 4 << 20;

impl Batch {
    fn add(&mut self, line: &[u8], at: i64, segment_records: usize) {
        if self.records == 0 {
            (self.first_us, self.last_us) = (at, at);
            // Room for a whole segment of lines like this one plus a quarter: growing by
            // doubling instead copied megabytes on the request that crossed each size.
            let expected = line.len().saturating_mul(segment_records);
            self.bytes
                .reserve(expected.saturating_add(expected / 4).min(MAX_RESERVE));
        }
        self.first_us = self.first_us.min(at);
        self.last_us = self.last_us.max(at);
        self.bytes.extend_from_slice(line);
        self.records += 1;
    }
}

/// Stores batches as segments. Batches are taken and written under one async lock, so that a
/// flush returns only once every batch taken before it has been written.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) prefix: Path,
    pub(super) writer_id: String,
    pub(super) sequence: AtomicU64,
    pub(super) counters: Arc<Counters>,
    pub(super) writing: tokio::sync::Mutex<()>,
}

impl Writer {
    /// Writes full batches when woken and every batch each `interval`; on `stop`, writes every
    /// batch and returns.
    pub(super) async fn run(
        self: Arc<Self>,
        pending: Arc<Pending>,
        wake: Arc<Notify>,
        interval: Duration,
        stop: Arc<Notify>,
    ) {
        // `interval` would tick at once; the first write waits a whole interval.
        let first = tokio::time::Instant::now() + interval;
        let mut ticker = tokio::time::interval_at(first, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all = tokio::select! {
                () = stop.notified() => {
                    let _ = self.write(&pending, true).await;
                    return;
                }
                () = wake.notified() => false,
                _ = ticker.tick() => true,
            };
            let _ = self.write(&pending, all).await;
        }
    }

    /// Takes the batches due (all of them with `all`) and writes one segment each.
    pub(super) async fn write(&self, pending: &Pending, all: bool) -> Result<()> {
        let _writing = self.writing.lock().await;
        let mut outcome = Ok(());
        for (endpoint, batch) in pending.take(all) {
            let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
            let location = segment_path(&self.prefix, &endpoint, &batch, &self.writer_id, sequence);
            let count = batch.records as u64;
            match self.put(&location, batch.bytes).await {
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

/// `{prefix}/{endpoint}/date={write date}/{first start µs}-{last start µs}-{writer}-{seq}-{records}.jsonl`:
/// the date directory and the start-time bounds in the name let queries skip segments unread,
/// and the record count lets them count a segment without reading it.
fn segment_path(
    prefix: &Path,
    endpoint: &str,
    batch: &Batch,
    writer_id: &str,
    sequence: u64,
) -> Path {
    let date = DateTime::<Utc>::from(SystemTime::now()).format("%Y-%m-%d");
    let (first, last) = (batch.first_us, batch.last_us);
    prefix
        .clone()
        .join(endpoint)
        .join(format!("date={date}"))
        .join(format!(
            "{first}-{last}-{writer_id}-{sequence:08}-{}.jsonl",
            batch.records
        ))
}

/// What a segment's name tells without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentName {
    /// The earliest start time of its records, in µs since the epoch.
    pub(super) first: i64,
    /// The latest start time of its records, in µs since the epoch.
    pub(super) last: i64,
    /// How many records it holds; segments written before the count was in the name have
    /// none.
    pub(super) records: Option<usize>,
}

impl SegmentName {
    /// The name's bounds and count, if it is a segment's name (of either layout).
    pub(super) fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".jsonl")?;
        let mut parts = stem.split('-');
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        let records = parts.nth(2).and_then(|count| count.parse().ok());
        Some(SegmentName {
            first,
            last,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(us: u64) -> PredictionRecord {
        PredictionRecord {
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
        }
    }

    #[test]
    fn segment_names_carry_their_bounds() {
        let pending = Pending::new(10, 3);
        for us in [30, 10, 20] {
            assert!(pending.push(&record(us)).is_ok());
        }
        let batches = pending.take(false);
        assert_eq!(batches.len(), 1, "three records fill a segment of three");
        let (endpoint, batch) = &batches[0];
        let path = segment_path(&Path::from("predictions"), endpoint, batch, "w1", 7);
        let name = path.filename().unwrap();
        assert_eq!(name, "10-30-w1-00000007-3.jsonl");
        assert!(path.as_ref().starts_with("predictions/iris/date="));
        let parsed = SegmentName::parse(name).unwrap();
        assert_eq!(
            (parsed.first, parsed.last, parsed.records),
            (10, 30, Some(3))
        );
        // Segments named before the count was added stay readable.
        let old = SegmentName::parse("10-30-w1-00000007.jsonl").unwrap();
        assert_eq!((old.first, old.last, old.records), (10, 30, None));
        assert_eq!(SegmentName::parse("notes.txt"), None);
    }

    #[test]
    fn pending_records_are_bounded_and_closing_refuses_more() {
        let pending = Pending::new(2, 100);
        assert!(pending.push(&record(1)).is_ok());
        assert!(pending.push(&record(2)).is_ok());
        assert!(matches!(pending.push(&record(3)), Err(Refusal::Full)));
        assert_eq!(pending.take(false).len(), 0, "nothing is full yet");
        assert_eq!(pending.take(true)[0].1.records, 2);
        assert_eq!(pending.len(), 0);
        pending.close();
        assert!(matches!(pending.push(&record(4)), Err(Refusal::Closed)));
    }
}
