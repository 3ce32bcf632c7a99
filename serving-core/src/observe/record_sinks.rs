//! More [`RecordSink`]s: [`InMemoryRecords`] (kept in memory, for tests and embedding),
//! [`TracingRecords`] (one log line per prediction) and [`RecordFanOut`] (several sinks at
//! once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::observe::record::{DynRecordSink, PredictionRecord, RecordSink, SinkReady};
use crate::sync::Locked;

/// Keeps the most recent prediction records in memory, to read back: in tests, and in an
/// embedding that shows recent predictions without a prediction log.
///
/// Bounded: it keeps at most its capacity (10,000 by default) and drops the oldest beyond it,
/// counting them in [`InMemoryRecords::dropped`]. Cloning gives another handle to the same
/// records.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use serving_core::{predictor_fn, Endpoint, InMemoryRecords, ModelEndpoint, PredictRequest, Result};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let records = InMemoryRecords::new();
/// let double = predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) });
/// let endpoint = ModelEndpoint::builder("double", double)
///     .record_sink(Arc::new(records.clone()))
///     .build()?;
/// endpoint.predict(PredictRequest::new(json!(2))).await?;
/// let kept = records.wait_for(1, Duration::from_secs(1)).await.expect("one record");
/// assert_eq!(kept[0].output, Some(json!(4.0)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryRecords {
    inner: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    capacity: usize,
    records: Mutex<(VecDeque<PredictionRecord>, u64)>,
    /// How many records are held, for [`InMemoryRecords::wait_for`].
    len: watch::Sender<usize>,
}

impl InMemoryRecords {
    /// Keeps up to 10,000 records.
    pub fn new() -> Self {
        Self::with_capacity(10_000)
    }

    /// Keeps up to `capacity` records (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        InMemoryRecords {
            inner: Arc::new(Held {
                capacity: capacity.max(1),
                records: Mutex::default(),
                len: watch::Sender::new(0),
            }),
        }
    }

    /// The records held, oldest first.
    pub fn records(&self) -> Vec<PredictionRecord> {
        self.inner.records.locked().0.iter().cloned().collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.inner.records.locked().0.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many records were dropped because the capacity was reached.
    pub fn dropped(&self) -> u64 {
        self.inner.records.locked().1
    }

    /// Forgets every record held (the dropped count stays).
    pub fn clear(&self) {
        self.inner.records.locked().0.clear();
        self.inner.len.send_replace(0);
    }

    /// Waits until at least `n` records are held (records arrive after the answer, for
    /// example a shadow's), then returns them, oldest first; after `timeout`, `Err` with those
    /// held then. More than the capacity never arrive.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<PredictionRecord>, Vec<PredictionRecord>> {
        let mut len = self.inner.len.subscribe();
        match tokio::time::timeout(timeout, len.wait_for(|&held| held >= n)).await {
            Ok(_) => Ok(self.records()),
            Err(_) => Err(self.records()),
        }
    }
}

impl Default for InMemoryRecords {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordSink for InMemoryRecords {
    fn record(&self, record: PredictionRecord) {
        let len = {
            let mut held = self.inner.records.locked();
            if held.0.len() == self.inner.capacity {
                held.0.pop_front();
                held.1 += 1;
            }
            held.0.push_back(record);
            held.0.len()
        };
        self.inner.len.send_replace(len);
    }
}

/// The `tracing` target of the per-prediction log lines written by [`TracingRecords`].
pub const PREDICTION_TARGET: &str = "serving::prediction";

/// Writes every prediction as one `tracing` event (target [`PREDICTION_TARGET`], level INFO,
/// or WARN for a failure), with the original product's field names: `model`,
/// `model_version`, `endpoint`, `request_id`, `status`, `start_time` (seconds since the
/// epoch), `elapsed_time` (milliseconds), `input` and `output` (JSON text, as cropped and
/// filtered by the endpoint's logging spec) and `error_message`.
///
/// With a JSON subscriber on stdout (for example `serving::logging::init_json`), these lines
/// are what Kibana or any log shipper ingests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingRecords;

impl RecordSink for TracingRecords {
    fn record(&self, record: PredictionRecord) {
        let start_time = record
            .start_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: PREDICTION_TARGET,
                    $level,
                    endpoint = %record.endpoint,
                    model = %record.model,
                    model_version = %record.model_version,
                    request_id = %record.request_id,
                    status = record.status,
                    start_time,
                    elapsed_time = record.elapsed_ms,
                    input = record.input.as_ref().map(tracing::field::display),
                    output = record.output.as_ref().map(tracing::field::display),
                    error_message = record.error.as_deref(),
                    "prediction"
                )
            };
        }
        if record.error.is_some() {
            emit!(tracing::Level::WARN);
        } else {
            emit!(tracing::Level::INFO);
        }
    }
}

/// Sends every record to each of several sinks, in order.
#[derive(Debug, Clone, Default)]
pub struct RecordFanOut {
    sinks: Vec<Arc<DynRecordSink>>,
}

impl RecordFanOut {
    /// Fans out to `sinks`.
    pub fn new(sinks: Vec<Arc<DynRecordSink>>) -> Self {
        RecordFanOut { sinks }
    }
}

#[deny(clippy::missing_trait_methods)]
impl RecordSink for RecordFanOut {
    fn record(&self, record: PredictionRecord) {
        if let Some((last, others)) = self.sinks.split_last() {
            others.iter().for_each(|sink| sink.record(record.clone()));
            last.record(record);
        }
    }

    fn keeps(&self, failed: bool) -> bool {
        self.sinks.iter().any(|sink| sink.keeps(failed))
    }

    fn ready(&self, records: usize) -> SinkReady<'_> {
        Box::pin(async move {
            for sink in &self.sinks {
                sink.ready(records).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(id: &str) -> PredictionRecord {
        PredictionRecord {
            request_id: id.into(),
            endpoint: "e".into(),
            model: "m".into(),
            model_version: "1".into(),
            input: None,
            output: None,
            error: Some("boom".into()),
            status: 500,
            start_time: SystemTime::now(),
            elapsed_ms: 1.0,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
        }
    }

    fn ids(records: &InMemoryRecords) -> Vec<String> {
        records
            .records()
            .into_iter()
            .map(|r| r.request_id)
            .collect()
    }

    #[test]
    fn fan_out_reaches_every_sink() {
        let (a, b) = (InMemoryRecords::new(), InMemoryRecords::new());
        let fan_out = RecordFanOut::new(vec![
            Arc::new(a.clone()),
            Arc::new(b.clone()),
            Arc::new(TracingRecords),
        ]);
        fan_out.record(record("r1"));
        assert_eq!(ids(&a), ["r1"]);
        assert_eq!(ids(&b), ["r1"]);
    }

    #[test]
    fn in_memory_records_keep_the_newest_and_count_the_dropped() {
        let records = InMemoryRecords::with_capacity(2);
        for id in ["a", "b", "c"] {
            records.record(record(id));
        }
        assert_eq!(ids(&records), ["b", "c"]);
        assert_eq!((records.len(), records.dropped()), (2, 1));
        records.clear();
        assert!(records.is_empty());
        assert_eq!(records.dropped(), 1);
    }

    #[tokio::test]
    async fn waiting_for_records_ends_when_they_arrive_or_at_the_timeout() {
        let records = InMemoryRecords::new();
        let writer = records.clone();
        tokio::spawn(async move {
            for id in ["a", "b"] {
                tokio::time::sleep(Duration::from_millis(5)).await;
                writer.record(record(id));
            }
        });
        let two = records.wait_for(2, Duration::from_secs(10)).await.unwrap();
        assert_eq!(two.len(), 2);
        let short = records.wait_for(3, Duration::from_millis(10)).await;
        assert_eq!(short.unwrap_err().len(), 2, "what was held at the timeout");
    }
}
