//! [`PredictionLog`]: every prediction recorded, asynchronously, in segments on an object store.
//!
//! The log is a [`RecordSink`]: give a clone to each endpoint with
//! [`ModelEndpointBuilder::record_sink`](crate::ModelEndpointBuilder::record_sink) and every
//! prediction, failures included, lands in it.
//!
//! # How records travel
//! `record` encodes the record as one JSON line (a [`PredictionRow`]), appends it to its
//! endpoint's pending batch, and returns: a slow store never slows a prediction. At most
//! [`PredictionLogConfig::queue_capacity`] records wait. A background task writes a batch as a
//! segment when [`PredictionLogConfig::segment_records`] have gathered, and every batch every
//! [`PredictionLogConfig::flush_interval_ms`].
//!
//! **When `queue_capacity` records wait, the new record is dropped and counted** in
//! [`PredictionLogStats::dropped`] (exported as `serving_prediction_log_dropped_total` by the
//! Prometheus exposition), with a warning at most every ten seconds. Predictions are never
//! blocked and memory never grows past `queue_capacity` waiting records and the segments being
//! written. A producer that must lose none (a batch run that logs every row) awaits
//! [`RecordSink::ready`] before each burst of at most `queue_capacity` records: when the burst
//! would not fit, the log writes what waits first. A segment that still fails after four attempts is
//! counted in [`PredictionLogStats::failed`].
//!
//! [`PredictionLog::flush`] writes everything accepted before it; [`PredictionLog::close`] (on
//! graceful shutdown) refuses new records and writes every record accepted before, so nothing
//! acknowledged is lost.
//!
//! # Layout
//! `{prefix}/{endpoint}/date={YYYY-MM-DD}/{first µs}-{last µs}-{writer}-{seq}-{records}.jsonl`
//! under the store's root: the local filesystem under [`PredictionLogConfig::dir`] by default,
//! or any [`ObjectStore`] (S3, GCS, Azure, memory) given to [`PredictionLogBuilder::with_store`].
//! The date is the day (UTC) the segment was written; the name's bounds are the start times of
//! its first and last prediction in microseconds and `records` its number of predictions, so
//! queries skip and count segments unread. Segments written before the count was part of the
//! name (`…-{seq}.jsonl`) are read as before. Segments are JSON lines whose columns are all
//! scalars, so `polars.scan_ndjson("serving-data/predictions/**/*.jsonl")` reads them as one
//! table.
//!
//! # Queries
//! [`PredictionLog::query`] reads segments one at a time in the order it answers (by the
//! bounds in their names), streams each line by line, and stops once it has its page and
//! knows whether more matches follow: `size=1` of a large log opens one segment. Segments
//! outside the time range are never opened, nor those wholly inside `offset` when the query
//! filters by time alone. Its memory is one chunk of a segment, one line and the matches that
//! may still enter the page; its work runs on the blocking pool, at most
//! [`PredictionLogConfig::max_concurrent_queries`] at once (the rest wait), so queries never
//! take the threads that serve predictions. [`PredictionPage::total`] is exact when the
//! segments left unread can be counted from their names, and a lower bound otherwise (see
//! [`PredictionPage::total_exact`]).
//!
//! # Retention
//! With [`PredictionLogConfig::retention_max_age_secs`] or
//! [`PredictionLogConfig::retention_max_bytes`] set, the log deletes, when it starts and every
//! minute after, the segments whose newest prediction is older than the age, then the oldest
//! segments until the rest fit in the size ([`PredictionLog::apply_retention`] does it on
//! demand). The limits apply to every endpoint's segments under the prefix together.
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
mod retention;
mod row;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

pub use self::config::{PredictionLogConfig, PredictionLogKey};
pub(crate) use self::csv::write_row;
pub use self::csv::{CSV_COLUMNS, read_csv, write_csv};
pub use self::query::{Order, PredictionPage, PredictionQuery, QueryTotal, StatusFilter};
pub use self::retention::RetentionPass;
pub use self::row::{PredictionRow, format_time, parse_time};

/// The `object_store` crate the log is built on, to build an S3, GCS or Azure store with the
/// same version (enable its `aws`, `gcp` or `azure` feature in your own `Cargo.toml`).
pub use object_store;

use self::writer::{Pending, Refusal, Writer};
use crate::error::{Error, Result};
use crate::observe::record::{PredictionRecord, RecordSink};
use crate::sync::Locked;

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
    pending: Arc<Pending>,
    writer: Arc<Writer>,
    /// Wakes the writer task when a batch is full.
    wake: Arc<Notify>,
    /// Stops the writer task.
    stop: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Applies the retention every minute, when one is set.
    retention: Option<tokio::task::JoinHandle<()>>,
    /// One permit per query that may run at once.
    queries: Arc<Semaphore>,
    config: PredictionLogConfig,
    counters: Arc<Counters>,
    last_drop_warning: AtomicU64,
}

impl Drop for Shared {
    /// The last handle is gone: the writer writes what is left and stops.
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(retention) = &self.retention {
            retention.abort();
        }
    }
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
    /// Records accepted.
    pub accepted: u64,
    /// Records refused because `queue_capacity` records were waiting or the log had closed.
    pub dropped: u64,
    /// Records written to the store.
    pub written: u64,
    /// Records whose segment could not be written.
    pub failed: u64,
    /// Records waiting to be written now.
    pub queued: u64,
    /// How many records may wait ([`PredictionLogConfig::queue_capacity`]).
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
    ///
    /// A query reads only what its page needs (see [the module docs](self#queries)), on the
    /// blocking pool, never on the threads that serve predictions, and at most
    /// [`PredictionLogConfig::max_concurrent_queries`] run at once: the others wait their turn.
    #[doc(alias = "get_predictions")]
    pub async fn query(&self, query: &PredictionQuery) -> Result<PredictionPage> {
        let (records, total) = self
            .scan(query, Vec::new(), |records, record| {
                records.push(record);
                Ok(())
            })
            .await?;
        Ok(PredictionPage {
            total: total.total,
            total_exact: total.exact,
            records,
        })
    }

    /// Like [`PredictionLog::query`], but hands each record of the page to `each` as it is
    /// placed, in the query's order, instead of collecting the page: an export of a million
    /// rows never holds them all. `each` runs on the blocking pool; an error from it stops
    /// the query and is returned.
    pub async fn query_each<F>(&self, query: &PredictionQuery, each: F) -> Result<QueryTotal>
    where
        F: FnMut(PredictionRecord) -> Result<()> + Send + 'static,
    {
        let (_, total) = self.scan(query, each, |each, record| each(record)).await?;
        Ok(total)
    }

    /// The query's page as CSV, in [`write_csv`]'s format, streamed in chunks of about
    /// 64 KiB as the query reads them: an export of a million rows is never held whole.
    ///
    /// # Errors
    /// An error before the first chunk (the store cannot be listed) is returned; a later one
    /// ends the stream with it. The stream stops the query when it is dropped.
    pub async fn query_csv(
        &self,
        query: &PredictionQuery,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes>>> {
        use futures::StreamExt as _;
        let (chunks, mut received) = tokio::sync::mpsc::channel(2);
        let (log, query) = (self.clone(), query.clone());
        tokio::spawn(async move {
            let sink = csv::CsvChunks::new(chunks.clone());
            match log.scan(&query, sink, csv::CsvChunks::push).await {
                Ok((sink, _)) => sink.finish().await,
                Err(error) => {
                    let _ = chunks.send(Err(error)).await;
                }
            }
        });
        let first = received.recv().await.unwrap_or_else(|| {
            Err(Error::invalid_request(
                "the CSV export stopped before its header",
            ))
        })?;
        let rest = futures::stream::unfold(received, |mut received| async move {
            received.recv().await.map(|chunk| (chunk, received))
        });
        Ok(futures::stream::once(async { Ok(first) })
            .chain(rest)
            .boxed())
    }

    /// Runs a query on the blocking pool once one of the query permits is free.
    async fn scan<S: Send + 'static>(
        &self,
        query: &PredictionQuery,
        mut sink: S,
        emit: fn(&mut S, PredictionRecord) -> Result<()>,
    ) -> Result<(S, QueryTotal)> {
        let permit = Arc::clone(&self.shared.queries)
            .acquire_owned()
            .await
            .map_err(|e| Error::Action {
                action: "waiting for a prediction log query permit".to_owned(),
                source: Box::new(e),
            })?;
        let (writer, query) = (Arc::clone(&self.shared.writer), query.clone());
        let runtime = tokio::runtime::Handle::current();
        // Decoding is CPU work: on a runtime thread it would delay the predictions sharing it.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            runtime.block_on(async {
                let total = query::scan(
                    writer.store.as_ref(),
                    &writer.prefix,
                    &query,
                    &mut sink,
                    emit,
                )
                .await?;
                Ok((sink, total))
            })
        })
        .await
        .map_err(|e| Error::Action {
            action: "querying the prediction log".to_owned(),
            source: Box::new(e),
        })?
    }

    /// Writes every record accepted before this call, and reports whether that worked.
    pub async fn flush(&self) -> Result<()> {
        self.shared.writer.write(&self.shared.pending, true).await
    }

    /// Refuses new records (they count as dropped), writes every record accepted before, and
    /// stops the writer. Call it on graceful shutdown; calling it again does nothing.
    pub async fn close(&self) -> Result<()> {
        self.shared.pending.close();
        if let Some(retention) = &self.shared.retention {
            retention.abort();
        }
        let outcome = self.flush().await;
        let task = self.shared.task.locked().take();
        if let Some(task) = task {
            self.shared.stop.notify_one();
            let _ = task.await;
        }
        outcome
    }

    /// Deletes the segments beyond [`PredictionLogConfig::retention_max_age_secs`] and
    /// [`PredictionLogConfig::retention_max_bytes`] now, oldest first; with neither set, deletes
    /// nothing. The log also does this by itself when it starts and every minute after.
    pub async fn apply_retention(&self) -> Result<RetentionPass> {
        let Some(retention) = self.shared.config.retention() else {
            return Ok(RetentionPass::default());
        };
        let writer = &self.shared.writer;
        retention::apply(
            writer.store.as_ref(),
            &writer.prefix,
            retention,
            SystemTime::now(),
        )
        .await
    }

    /// The counters.
    pub fn stats(&self) -> PredictionLogStats {
        let counters = &self.shared.counters;
        PredictionLogStats {
            accepted: counters.accepted.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            written: counters.written.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            queued: self.shared.pending.len() as u64,
            capacity: self.shared.config.queue_capacity as u64,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &PredictionLogConfig {
        &self.shared.config
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.writer.store
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
    /// Encodes the record and adds it to the pending batch without waiting; drops and counts
    /// it when `queue_capacity` records are waiting or the log is closed.
    fn record(&self, record: PredictionRecord) {
        match self.shared.pending.push(&record) {
            Ok(full) => {
                self.shared
                    .counters
                    .accepted
                    .fetch_add(1, Ordering::Relaxed);
                if full {
                    self.shared.wake.notify_one();
                }
            }
            Err(Refusal::Full) => self.drop_record("queue is full"),
            Err(Refusal::Closed) => self.drop_record("is closed"),
        }
    }

    /// When `records` more would not fit in the queue, writes what waits first (as
    /// [`flush`](Self::flush)), so a producer that awaits this before each burst of at most
    /// `queue_capacity` records loses none.
    fn ready(&self, records: usize) -> crate::observe::record::SinkReady<'_> {
        Box::pin(async move {
            if self.shared.pending.len() + records > self.shared.config.queue_capacity {
                if let Err(error) = self.flush().await {
                    // Counted as failed records by the writer; the producer goes on.
                    tracing::warn!(%error, "prediction log: writing the waiting records failed");
                }
            }
        })
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
        let counters = Arc::new(Counters::default());
        let writer = Arc::new(Writer {
            store,
            prefix: Path::from(self.config.prefix.as_str()),
            writer_id: crate::new_request_id()[..12].to_owned(),
            sequence: AtomicU64::new(0),
            counters: Arc::clone(&counters),
            writing: tokio::sync::Mutex::new(()),
        });
        let pending = Arc::new(Pending::new(
            self.config.queue_capacity,
            self.config.segment_records,
        ));
        let (wake, stop) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = runtime.spawn(Arc::clone(&writer).run(
            Arc::clone(&pending),
            Arc::clone(&wake),
            self.config.flush_interval().max(Duration::from_millis(1)),
            Arc::clone(&stop),
        ));
        let retention = self.config.retention().map(|retention| {
            let writer = Arc::clone(&writer);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(retention::RETENTION_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let (store, prefix) = (writer.store.as_ref(), &writer.prefix);
                    if let Err(error) =
                        retention::apply(store, prefix, retention, SystemTime::now()).await
                    {
                        tracing::warn!(%error, "prediction log retention failed; retrying in a minute");
                    }
                }
            })
        });
        Ok(PredictionLog {
            shared: Arc::new(Shared {
                retention,
                pending,
                writer,
                wake,
                stop,
                task: Mutex::new(Some(task)),
                queries: Arc::new(Semaphore::new(self.config.max_concurrent_queries)),
                config: self.config,
                counters,
                last_drop_warning: AtomicU64::new(0),
            }),
        })
    }
}

#[cfg(test)]
mod tests;
