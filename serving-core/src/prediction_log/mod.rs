//! [`PredictionLog`]: every prediction recorded, asynchronously, in segments on an object store.
//!
//! The log is a [`RecordSink`]: give a clone to each endpoint with
//! [`ModelEndpointBuilder::record_sink`](crate::ModelEndpointBuilder::record_sink) and every
//! prediction, failures included, lands in it.
//!
//! # How records travel
//! `record` puts the record on a bounded queue ([`PredictionLogConfig::queue_capacity`]) with a
//! non-blocking `try_send` and returns: a slow store never slows a prediction. A background
//! task, woken once a hundred or so records have queued, batches them and writes them as
//! JSON-lines segments (one [`PredictionRow`] per line) when
//! [`PredictionLogConfig::segment_records`] have gathered or every
//! [`PredictionLogConfig::flush_interval_ms`], whichever comes first.
//!
//! **When the queue is full, the new record is dropped and counted** in
//! [`PredictionLogStats::dropped`] (exported as `serving_prediction_log_dropped_total` by the
//! Prometheus exposition), with a warning at most every ten seconds. Predictions are never
//! blocked and memory never grows past the queue and one segment. A segment that still fails
//! after four attempts is counted in [`PredictionLogStats::failed`].
//!
//! [`PredictionLog::flush`] writes everything queued before it; [`PredictionLog::close`] (on
//! graceful shutdown) refuses new records and writes every record accepted before, so nothing
//! acknowledged is lost.
//!
//! # Layout
//! `{prefix}/{endpoint}/date={YYYY-MM-DD}/{first µs}-{last µs}-{writer}-{seq}.jsonl` under the
//! store's root: the local filesystem under [`PredictionLogConfig::dir`] by default, or any
//! [`ObjectStore`] (S3, GCS, Azure, memory) given to [`PredictionLogBuilder::with_store`]. The
//! date is the day (UTC) the segment was written; the name's bounds are the start times of its
//! first and last prediction in microseconds, so queries skip segments unread. Segments are
//! JSON lines whose columns are all scalars, so `polars.scan_ndjson("serving-data/predictions/**/*.jsonl")`
//! reads them as one table.
//!
//! ```
//! use serving_core::prediction_log::{PredictionLog, PredictionQuery};
//! use serving_core::{predictor_fn, Endpoint, ModelEndpoint, PredictRequest, Result};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let log = PredictionLog::builder().with_dir(dir.path()).build()?;
//! let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
//! let endpoint = ModelEndpoint::builder("doubler", double)
//!     .record_sink(Arc::new(log.clone()))
//!     .build()?;
//! endpoint.predict(PredictRequest::new(serde_json::json!(21))).await?;
//! log.flush().await?;
//! let page = log.query(&PredictionQuery::new("doubler")).await?;
//! assert_eq!(page.records[0].output, Some(serde_json::json!(42.0)));
//! log.close().await?;
//! # Ok(()) }
//! ```

mod config;
mod csv;
mod query;
mod row;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

pub use self::config::PredictionLogConfig;
pub use self::csv::{CSV_COLUMNS, read_csv, write_csv};
pub use self::query::{Order, PredictionPage, PredictionQuery, StatusFilter};
pub use self::row::{PredictionRow, format_time, parse_time};

/// The `object_store` crate the log is built on, to build an S3, GCS or Azure store with the
/// same version (enable its `aws`, `gcp` or `azure` feature in your own `Cargo.toml`).
pub use object_store;

use self::writer::{Message, Writer};
use crate::error::{Error, Result};
use crate::record::{PredictionRecord, RecordSink};

/// Queued records that wake the writer. Waking it for each record cost a task switch per
/// prediction; letting thousands gather made it encode them after they had left the CPU cache.
const WAKE_AFTER: usize = 128;

/// A handle on the prediction log; cheap to clone, every clone feeds the same writer.
///
/// See the [module docs](self) for how records travel, what a full queue does, and the
/// storage layout.
#[derive(Debug, Clone)]
pub struct PredictionLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Message>,
    /// Wakes the writer: after a command, or when the queue is more than half full.
    wake: Arc<Notify>,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    config: PredictionLogConfig,
    counters: Arc<Counters>,
    closed: AtomicBool,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    last_drop_warning: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

/// What the prediction log has done since it started.
///
/// `accepted == written + failed + queued` once the writer is idle; `dropped` records were
/// never accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionLogStats {
    /// Records taken onto the queue.
    pub accepted: u64,
    /// Records refused because the queue was full or the log closed.
    pub dropped: u64,
    /// Records written to the store.
    pub written: u64,
    /// Records whose segment could not be written.
    pub failed: u64,
    /// Records and commands waiting in the queue now.
    pub queued: u64,
    /// The queue's capacity.
    pub capacity: u64,
}

impl PredictionLog {
    /// Starts building a log with the default configuration.
    pub fn builder() -> PredictionLogBuilder {
        PredictionLogBuilder::new()
    }

    /// Reads predictions back; the original SDK's `get_predictions`. Records become visible
    /// once written: within [`PredictionLogConfig::flush_interval_ms`], or at once after
    /// [`PredictionLog::flush`].
    #[doc(alias = "get_predictions")]
    pub async fn query(&self, query: &PredictionQuery) -> Result<PredictionPage> {
        query::run(self.shared.store.as_ref(), &self.shared.prefix, query).await
    }

    /// Writes every record accepted before this call, and reports whether that worked.
    pub async fn flush(&self) -> Result<()> {
        self.command(Message::Flush).await
    }

    /// Refuses new records (they count as dropped), writes every record accepted before, and
    /// stops the writer. Call it on graceful shutdown; calling it again does nothing.
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let outcome = self.command(Message::Close).await;
        let writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        outcome
    }

    /// The counters.
    pub fn stats(&self) -> PredictionLogStats {
        let counters = &self.shared.counters;
        let capacity = self.shared.queue.max_capacity() as u64;
        PredictionLogStats {
            accepted: counters.accepted.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            written: counters.written.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            queued: capacity.saturating_sub(self.shared.queue.capacity() as u64),
            capacity,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &PredictionLogConfig {
        &self.shared.config
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.store
    }

    async fn command(
        &self,
        message: impl FnOnce(oneshot::Sender<Result<()>>) -> Message,
    ) -> Result<()> {
        let (ack, done) = oneshot::channel();
        if self.shared.queue.send(message(ack)).await.is_err() {
            // The writer has closed: everything accepted was written then.
            return Ok(());
        }
        self.shared.wake.notify_one();
        done.await.unwrap_or(Ok(()))
    }

    fn drop_record(&self, reason: &str) {
        let dropped = self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.shared.last_drop_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .shared
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(dropped, "prediction log {reason}: record dropped");
        }
    }
}

impl RecordSink for PredictionLog {
    /// Queues the record without waiting; drops and counts it when the queue is full or the
    /// log is closed.
    fn record(&self, record: PredictionRecord) {
        if self.shared.closed.load(Ordering::Acquire) {
            return self.drop_record("is closed");
        }
        match self
            .shared
            .queue
            .try_send(Message::Record(Box::new(record)))
        {
            Ok(()) => {
                self.shared
                    .counters
                    .accepted
                    .fetch_add(1, Ordering::Relaxed);
                let queue = &self.shared.queue;
                if queue.max_capacity() - queue.capacity()
                    >= WAKE_AFTER.min(queue.max_capacity() / 2)
                {
                    self.shared.wake.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.drop_record("queue is full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.drop_record("is closed"),
        }
    }
}

/// Builds a [`PredictionLog`].
#[derive(Debug, Default)]
pub struct PredictionLogBuilder {
    config: PredictionLogConfig,
    store: Option<Arc<dyn ObjectStore>>,
}

impl PredictionLogBuilder {
    /// The default configuration: the local filesystem under `./serving-data`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration from `SERVING_PREDICTION_LOG_*` variables; see
    /// [`PredictionLogConfig::from_env`].
    pub fn from_env() -> Result<Self> {
        Ok(Self::new().with_config(PredictionLogConfig::from_env()?))
    }

    /// Replaces the whole configuration.
    pub fn with_config(mut self, config: PredictionLogConfig) -> Self {
        self.config = config;
        self
    }

    /// Stores segments on the local filesystem under `dir`.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.dir = dir.into();
        self
    }

    /// Stores segments in `store` (S3, GCS, Azure, in memory, …) instead of the local
    /// filesystem; the same code path serves all.
    pub fn with_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets one KEY-VALUE pair of the configuration.
    pub fn with_setting(mut self, key: &str, value: &str) -> Result<Self> {
        self.config.set(key, value)?;
        Ok(self)
    }

    /// Opens the store and starts the writer on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Storage`] when the local directory cannot be created, [`Error::Action`] when
    /// called outside a tokio runtime.
    pub fn build(self) -> Result<PredictionLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Action {
            action: "starting the prediction log writer".to_owned(),
            source: Box::new(e),
        })?;
        let store = match self.store {
            Some(store) => store,
            None => {
                let dir = &self.config.dir;
                let storage = |e: Box<dyn std::error::Error + Send + Sync>| Error::Storage {
                    location: dir.display().to_string(),
                    source: e,
                };
                std::fs::create_dir_all(dir).map_err(|e| storage(Box::new(e)))?;
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| storage(Box::new(e)))?)
            }
        };
        let prefix = Path::from(self.config.prefix.as_str());
        let counters = Arc::new(Counters::default());
        let (queue, receiver) = mpsc::channel(self.config.queue_capacity);
        let writer = Writer {
            store: Arc::clone(&store),
            prefix: prefix.clone(),
            writer_id: crate::new_request_id()[..12].to_owned(),
            segment_records: self.config.segment_records,
            flush_interval: self.config.flush_interval().max(Duration::from_millis(1)),
            counters: Arc::clone(&counters),
            sequence: 0,
            buffer: Vec::new(),
        };
        let wake = Arc::new(Notify::new());
        let task = runtime.spawn(writer.run(receiver, Arc::clone(&wake)));
        Ok(PredictionLog {
            shared: Arc::new(Shared {
                queue,
                wake,
                store,
                prefix,
                config: self.config,
                counters,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(task)),
                last_drop_warning: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests;
