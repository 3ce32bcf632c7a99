//! [`FeedbackLoops`]: the feedback loops of a process, each exporting an endpoint's prediction
//! log into a dataset now or on a schedule, incrementally.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use super::dataset::{BATCH_RECORDS, BATCHES_IN_FLIGHT, DatasetFeedback, Held, from_micros};
use super::spec::{ExportFormat, FeedbackLoopSpec, FeedbackSchedule};
use crate::datasets::Datasets;
use crate::error::{Error, Result};
use crate::observe::prediction_log::{PredictionLog, PredictionQuery, format_time};
use crate::observe::record::PredictionRecord;
use crate::sync::Locked;

/// How many exports a loop lists in its status (the newest).
const KEPT_EXPORTS: usize = 100;

/// The feedback loops of a process; cheap to clone, every clone manages the same loops.
///
/// # Exactly once, although records arrive late
/// A record reaches the log when its prediction ends, and becomes visible up to one
/// [`flush_interval`](crate::prediction_log::PredictionLogConfig::flush_interval_ms) later
/// (plus the time to write its segment). So exports cut by **end time** (a record's start time
/// plus its `elapsed_ms`), not start time, and an export due at `t` runs at `t + settle`
/// (`settle` = the flush interval + [`FeedbackLoops::with_settle_margin`], 2 s by default): it
/// holds exactly the records that ended in `[watermark, t)`, which by then are all visible,
/// and moves the watermark to `t`. The next export starts there: no gap, no duplicate. A
/// prediction that runs long is exported by its end, in the export after it ends; the query
/// reads back from the watermark minus the endpoint's timeout (plus a minute) to find such
/// records by their start time. A record written later than `settle` after it ended (its
/// segment failed to write for longer) is not exported.
///
/// # Across restarts
/// The watermark lives with the dataset, not in memory: `_feedback/{endpoint}.json`, written
/// after each export file, and the export files' names say their interval
/// (`{endpoint}-{from µs}-{to µs}.csv`). A loop started again (in this process or another)
/// reads the later of the two, so a crash between writing a file and its watermark repeats
/// nothing. Every loop of one endpoint into one dataset shares that watermark: a `now` export
/// and a recurring loop into the same dataset hold each record once between them. Exports of
/// one endpoint into one dataset run one at a time within a process; run a dataset's loops in
/// one process.
///
/// An interval with no record writes no file and leaves the watermark where it was.
///
/// # Memory
/// An export is streamed, whatever the length of its interval: the log's query
/// ([`PredictionLog::query_each`]) hands the records in batches of 512 over a channel of two
/// batches to the dataset's file writer ([`Dataset::writer`](crate::datasets::Dataset::writer)),
/// which uploads in parts past 8 MiB and shows the file only once it is complete (never
/// replacing one). So an export holds at most 2,048 records, the writer's few parts, and the
/// query's own lookahead (about one log segment); a query that fails part-way leaves no file.
#[derive(Debug, Clone)]
pub struct FeedbackLoops {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: PredictionLog,
    datasets: Datasets,
    /// Microseconds past the log's flush interval that an export waits.
    settle_margin_us: AtomicU64,
    loops: Mutex<BTreeMap<String, Arc<Loop>>>,
    /// One lock and watermark per (dataset, endpoint): exports into it run one at a time.
    cursors: Mutex<HashMap<(String, String), Cursor>>,
    /// Records its exports hold between the log and the files (and the most they held).
    held: Arc<Held>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for entry in self.loops.locked().values() {
            entry.stop.send_replace(true);
        }
    }
}

/// The watermark of one (dataset, endpoint) once read, behind the lock its exports take.
type Cursor = Arc<tokio::sync::Mutex<Option<i64>>>;

/// One loop and what it has done.
#[derive(Debug)]
struct Loop {
    id: String,
    endpoint: String,
    spec: FeedbackLoopSpec,
    /// How far back from the watermark to read: the endpoint's timeout and a minute.
    lookback: Duration,
    created_at: SystemTime,
    stop: watch::Sender<bool>,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    state: LoopState,
    next_run: Option<SystemTime>,
    exports: VecDeque<ExportSummary>,
    exported_records: u64,
    last_error: Option<String>,
}

/// Where a feedback loop is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopState {
    /// Waiting for its next export (or running it).
    #[default]
    Running,
    /// A `now` loop whose export is done (or found nothing to export).
    Done,
    /// A `now` loop whose export failed (see `last_error`).
    Failed,
    /// Stopped: it exports no more.
    Stopped,
}

/// One export a loop made.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// The file, as a path in the dataset store.
    pub file: String,
    /// How many records it holds.
    pub records: usize,
    /// The records ended at or after this time (RFC 3339)…
    pub from: String,
    /// …and before this one.
    pub to: String,
    /// When the file was written.
    pub exported_at: String,
}

/// A feedback loop as the admin API shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackLoopStatus {
    /// The loop's id.
    pub id: String,
    /// The endpoint whose predictions it exports.
    pub endpoint: String,
    /// The dataset they go to.
    pub dataset: String,
    /// When it exports.
    pub schedule: FeedbackSchedule,
    /// The files' format.
    pub format: ExportFormat,
    /// Where it is.
    pub state: LoopState,
    /// When it was started (RFC 3339).
    pub created_at: String,
    /// When its next export is due (RFC 3339); none once done or stopped.
    pub next_run: Option<String>,
    /// Records exported by this loop since it started.
    pub exported_records: u64,
    /// Its exports, oldest first (the newest 100).
    pub exports: Vec<ExportSummary>,
    /// Why its last export failed, when it did; the next one retries the same records.
    pub last_error: Option<String>,
}

impl FeedbackLoops {
    /// Loops that read `log` and export into `datasets`.
    pub fn new(log: PredictionLog, datasets: Datasets) -> Self {
        FeedbackLoops {
            inner: Arc::new(Inner {
                log,
                datasets,
                settle_margin_us: AtomicU64::new(2_000_000),
                loops: Mutex::new(BTreeMap::new()),
                cursors: Mutex::new(HashMap::new()),
                held: Arc::default(),
            }),
        }
    }

    /// How long past the log's flush interval an export waits for records to become visible
    /// (2 s by default); loops started after it use it, those of every clone included.
    pub fn with_settle_margin(self, margin: Duration) -> Self {
        let micros = u64::try_from(margin.as_micros()).unwrap_or(u64::MAX);
        self.inner.settle_margin_us.store(micros, Ordering::Relaxed);
        self
    }

    /// How long after an export's cut it runs: the log's flush interval and the margin.
    pub fn settle(&self) -> Duration {
        let margin = Duration::from_micros(self.inner.settle_margin_us.load(Ordering::Relaxed));
        self.inner.log.config().flush_interval() + margin
    }

    /// The datasets it exports into.
    pub fn datasets(&self) -> &Datasets {
        &self.inner.datasets
    }

    /// The dataset `name`, written in `format`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `dataset` for an invalid name.
    pub fn dataset(&self, name: &str, format: ExportFormat) -> Result<DatasetFeedback> {
        super::spec::check_dataset_name(name)?;
        Ok(DatasetFeedback::new(self.inner.datasets.dataset(name)?).with_format(format))
    }

    /// Starts a loop on `endpoint` (whose predictions time out after `timeout`), and returns
    /// its id. A `now` loop exports once, after [`FeedbackLoops::settle`], everything up to
    /// this call; a recurring one at each time of its schedule.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the field: the spec is invalid, or the dataset's store
    /// cannot be reached.
    pub async fn start(
        &self,
        endpoint: &str,
        timeout: Duration,
        spec: FeedbackLoopSpec,
    ) -> Result<String> {
        spec.validate()?;
        self.dataset(&spec.dataset, spec.format)?.check().await?;
        self.start_unchecked(endpoint, timeout, spec)
    }

    /// Starts a loop as [`FeedbackLoops::start`] does without first checking that the
    /// dataset's store answers: how a spec's loops start when the service is built, so that
    /// they run (and are listed, and stay in the spec) at once. A store that cannot be reached
    /// shows in the loop's `last_error`, and each export tries again.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming the field for an invalid spec; [`Error::Action`]
    /// outside a tokio runtime.
    pub fn start_unchecked(
        &self,
        endpoint: &str,
        timeout: Duration,
        spec: FeedbackLoopSpec,
    ) -> Result<String> {
        spec.validate()?;
        let dataset = self.dataset(&spec.dataset, spec.format)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Action {
            action: "starting a feedback loop".to_owned(),
            source: Box::new(e),
        })?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let now = SystemTime::now();
        let (stop, stopped) = watch::channel(false);
        let spec_schedule = spec.schedule.clone();
        let entry = Arc::new(Loop {
            id: id.clone(),
            endpoint: endpoint.to_owned(),
            spec,
            lookback: timeout + Duration::from_secs(60),
            created_at: now,
            stop,
            progress: Mutex::new(Progress {
                next_run: match &spec_schedule {
                    FeedbackSchedule::Now => Some(now),
                    schedule => schedule.next_after(now),
                },
                ..Progress::default()
            }),
        });
        self.inner
            .loops
            .locked()
            .insert(id.clone(), Arc::clone(&entry));
        // The task holds the loops weakly: once every handle is gone, the loops stop.
        let (loops, settle) = (Arc::downgrade(&self.inner), self.settle());
        runtime.spawn(async move { Self::run(loops, settle, entry, dataset, now, stopped).await });
        Ok(id)
    }

    async fn run(
        loops: Weak<Inner>,
        settle: Duration,
        entry: Arc<Loop>,
        dataset: DatasetFeedback,
        started: SystemTime,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut due = match entry.spec.schedule {
            FeedbackSchedule::Now => Some(started),
            ref schedule => schedule.next_after(started),
        };
        while let Some(at) = due {
            entry.progress.locked().next_run = Some(at);
            let wake = at + settle;
            let wait = wake.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => break,
            }
            let Some(inner) = loops.upgrade() else {
                break;
            };
            let outcome = FeedbackLoops { inner }
                .export_until(&entry, &dataset, at)
                .await;
            let mut progress = entry.progress.locked();
            match outcome {
                Ok(Some(summary)) => {
                    progress.exported_records += summary.records as u64;
                    if progress.exports.len() == KEPT_EXPORTS {
                        progress.exports.pop_front();
                    }
                    progress.exports.push_back(summary);
                    progress.last_error = None;
                }
                Ok(None) => progress.last_error = None,
                Err(error) => {
                    tracing::warn!(endpoint = %entry.endpoint, dataset = %entry.spec.dataset, %error, "feedback export failed; the next one retries its records");
                    progress.last_error = Some(error.to_string());
                }
            }
            if !entry.spec.schedule.is_recurring() {
                progress.state = if progress.last_error.is_some() {
                    LoopState::Failed
                } else {
                    LoopState::Done
                };
                progress.next_run = None;
                return;
            }
            // Ticks missed while exporting are skipped, not run back to back.
            let mut next = entry.spec.schedule.next_after(at);
            let now = SystemTime::now();
            while let Some(time) = next.filter(|time| *time + settle < now) {
                next = entry.spec.schedule.next_after(time.max(now - settle));
            }
            due = next;
        }
        let mut progress = entry.progress.locked();
        progress.state = LoopState::Stopped;
        progress.next_run = None;
    }

    /// Exports the records of the loop's endpoint that ended before `cut` and after the
    /// dataset's watermark, and moves the watermark to `cut`; `None` when there were none.
    async fn export_until(
        &self,
        entry: &Loop,
        dataset: &DatasetFeedback,
        cut: SystemTime,
    ) -> Result<Option<ExportSummary>> {
        let cursor = {
            let key = (dataset.dataset().name().to_owned(), entry.endpoint.clone());
            Arc::clone(self.inner.cursors.locked().entry(key).or_default())
        };
        let mut through = cursor.lock().await;
        let from_us = match *through {
            Some(us) => us,
            None => {
                let us = dataset.watermark(&entry.endpoint).await?.unwrap_or(0);
                *through = Some(us);
                us
            }
        };
        let cut_us = micros(cut);
        if cut_us <= from_us {
            return Ok(None);
        }
        let lookback_us = i64::try_from(entry.lookback.as_micros()).unwrap_or(i64::MAX);
        let query = PredictionQuery::new(entry.endpoint.as_str())
            .between(
                from_micros(from_us.saturating_sub(lookback_us)),
                from_micros(cut_us),
            )
            .page(0, usize::MAX);
        // The query streams the interval's records to the file in small batches over a
        // bounded channel: however long the interval, an export holds a few batches (see
        // `BATCHES_IN_FLIGHT`), never the interval.
        let (batches, mut received) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        let batch = Arc::new(Mutex::new(Vec::with_capacity(BATCH_RECORDS)));
        let read = async {
            let (filling, sender) = (Arc::clone(&batch), batches.clone());
            let held = Arc::clone(&self.inner.held);
            self.inner
                .log
                .query_each(&query, move |record| {
                    if !(from_us..cut_us).contains(&end_micros(&record)) {
                        return Ok(());
                    }
                    held.take();
                    let full = {
                        let mut batch = filling.locked();
                        batch.push(record);
                        (batch.len() >= BATCH_RECORDS).then(|| std::mem::take(&mut *batch))
                    };
                    match full {
                        // On the query's blocking thread: waiting for room blocks only it.
                        Some(full) => {
                            futures::executor::block_on(sender.send(full)).map_err(|_| file_gone())
                        }
                        None => Ok(()),
                    }
                })
                .await?;
            let rest = std::mem::take(&mut *batch.locked());
            if !rest.is_empty() {
                batches.send(rest).await.map_err(|_| file_gone())?;
            }
            // The last sender goes: the file side sees the end.
            drop(batches);
            Ok::<_, Error>(())
        };
        let staged = dataset.stage_interval(
            &entry.endpoint,
            from_us,
            cut_us,
            &mut received,
            &self.inner.held,
        );
        let (read, staged) = tokio::join!(read, staged);
        let staged = match (read, staged) {
            (Ok(_), Ok(None)) => return Ok(None),
            (Ok(_), Ok(Some(staged))) => staged,
            // The query failed part-way: the staged file is dropped, never shown.
            (Err(error), Ok(staged)) => {
                if let Some(staged) = staged {
                    let _ = staged.abort().await;
                }
                return Err(error);
            }
            (_, Err(error)) => return Err(error),
        };
        let ended = staged.ended().map(|(first, last)| {
            (
                format_time(from_micros(first)),
                format_time(from_micros(last)),
            )
        });
        let receipt = staged.finish().await?;
        // The file is written: its name carries the watermark even if the object below fails.
        *through = Some(cut_us);
        if let Err(error) = dataset
            .save_watermark(&entry.endpoint, cut_us, &receipt.location)
            .await
        {
            tracing::warn!(%error, "writing a feedback watermark failed; the export file's name keeps it");
        }
        tracing::info!(endpoint = %entry.endpoint, dataset = %entry.spec.dataset, file = %receipt.location, records = receipt.records, ?ended, "feedback export written");
        Ok(Some(ExportSummary {
            file: receipt.location,
            records: receipt.records,
            from: format_time(from_micros(from_us)),
            to: format_time(cut),
            exported_at: format_time(SystemTime::now()),
        }))
    }

    /// Stops the loop `id` of `endpoint`: it exports no more (an export under way finishes).
    /// Returns its status, or `None` when the endpoint has no such loop.
    pub fn stop(&self, endpoint: &str, id: &str) -> Option<FeedbackLoopStatus> {
        let entry = self.find(endpoint, id)?;
        entry.stop.send_replace(true);
        {
            let mut progress = entry.progress.locked();
            if progress.state == LoopState::Running {
                progress.state = LoopState::Stopped;
                progress.next_run = None;
            }
        }
        Some(status(&entry))
    }

    /// Stops every loop.
    pub fn stop_all(&self) {
        let loops: Vec<_> = self.inner.loops.locked().values().cloned().collect();
        for entry in loops {
            self.stop(&entry.endpoint, &entry.id);
        }
    }

    fn find(&self, endpoint: &str, id: &str) -> Option<Arc<Loop>> {
        self.inner
            .loops
            .locked()
            .get(id)
            .filter(|entry| entry.endpoint == endpoint)
            .cloned()
    }

    /// The loop `id` of `endpoint`.
    pub fn get(&self, endpoint: &str, id: &str) -> Option<FeedbackLoopStatus> {
        self.find(endpoint, id).map(|entry| status(&entry))
    }

    /// Every loop of `endpoint`, oldest first.
    pub fn list(&self, endpoint: &str) -> Vec<FeedbackLoopStatus> {
        let mut loops: Vec<_> = self
            .inner
            .loops
            .locked()
            .values()
            .filter(|entry| entry.endpoint == endpoint)
            .cloned()
            .collect();
        loops.sort_by_key(|entry| entry.created_at);
        loops.iter().map(|entry| status(entry)).collect()
    }

    /// The recurring loops of `endpoint` that still run: what its spec holds, so that
    /// deploying the spec again starts them again.
    pub fn specs(&self, endpoint: &str) -> Vec<FeedbackLoopSpec> {
        let mut loops: Vec<_> = self
            .inner
            .loops
            .locked()
            .values()
            .filter(|entry| {
                entry.endpoint == endpoint
                    && entry.spec.schedule.is_recurring()
                    && entry.progress.locked().state == LoopState::Running
            })
            .cloned()
            .collect();
        loops.sort_by_key(|entry| entry.created_at);
        loops.iter().map(|entry| entry.spec.clone()).collect()
    }
}

fn status(entry: &Loop) -> FeedbackLoopStatus {
    let progress = entry.progress.locked();
    FeedbackLoopStatus {
        id: entry.id.clone(),
        endpoint: entry.endpoint.clone(),
        dataset: entry.spec.dataset.clone(),
        schedule: entry.spec.schedule.clone(),
        format: entry.spec.format,
        state: progress.state,
        created_at: format_time(entry.created_at),
        next_run: progress.next_run.map(format_time),
        exported_records: progress.exported_records,
        exports: progress.exports.iter().cloned().collect(),
        last_error: progress.last_error.clone(),
    }
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The error a query stops with once the export file's side has failed (its error is the one
/// reported).
fn file_gone() -> Error {
    Error::Action {
        action: "streaming a feedback export".to_owned(),
        source: "the export file stopped taking records".into(),
    }
}

/// When a record's prediction ended, in µs: its start plus its duration. Computed from the
/// stored values only, so every read of a record gives the same answer.
pub(crate) fn end_micros(record: &PredictionRecord) -> i64 {
    let elapsed_us = (record.elapsed_ms.max(0.0) * 1000.0) as i64;
    micros(record.start_time).saturating_add(elapsed_us)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::prediction_log::read_csv;
    use crate::{Endpoint as _, ModelEndpoint, PredictRequest, predictor_fn};

    /// Every request id in the dataset's export files, with how often it appears.
    fn exported(dir: &std::path::Path) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            let rows = match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => read_csv(std::fs::File::open(&path).unwrap()).unwrap(),
                Some("jsonl") => std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|line| serde_json::from_str(line).unwrap())
                    .collect(),
                _ => continue,
            };
            assert!(!rows.is_empty(), "{path:?} is empty");
            for row in rows {
                *ids.entry(row.request_id).or_default() += 1;
            }
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_hold_every_record_once_across_loops_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let log = PredictionLog::builder()
            .with_dir(dir.path().join("log"))
            .with_setting("flush_interval_ms", "50")
            .unwrap()
            .build()
            .unwrap();
        // Slow predictions: records end well after they start.
        let slow = predictor_fn(|x: f64| -> crate::Result<f64> {
            std::thread::sleep(Duration::from_millis((x as u64 % 7) * 20));
            Ok(x)
        });
        let endpoint = ModelEndpoint::builder("slow", slow)
            .record_sink(Arc::new(log.clone()))
            .build()
            .unwrap();
        let datasets = Datasets::local(dir.path().join("datasets/sets")).unwrap();
        let open = || {
            FeedbackLoops::new(log.clone(), datasets.clone())
                .with_settle_margin(Duration::from_millis(100))
        };
        let loops = open();
        let timeout = Duration::from_secs(1);
        let recurring = loops
            .start(
                "slow",
                timeout,
                FeedbackLoopSpec::new("fb", FeedbackSchedule::EverySecs(1)),
            )
            .await
            .unwrap();
        let endpoint = Arc::new(endpoint);
        let traffic = |n: usize| {
            let endpoint = Arc::clone(&endpoint);
            tokio::spawn(async move {
                let calls = (0..n).map(|i| {
                    let endpoint = Arc::clone(&endpoint);
                    async move {
                        tokio::time::sleep(Duration::from_millis(i as u64 * 7)).await;
                        endpoint
                            .predict(PredictRequest::new(serde_json::json!(i as f64)))
                            .await
                            .unwrap();
                    }
                });
                futures::future::join_all(calls).await;
            })
        };
        traffic(300).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        // A second process: the first's loops stop, a new one reads the watermark back.
        let status = loops.stop("slow", &recurring).unwrap();
        assert_eq!(status.state, LoopState::Stopped);
        assert!(!status.exports.is_empty(), "{status:?}");
        drop(loops);
        traffic(100).await.unwrap();
        let loops = open();
        let now = loops
            .start(
                "slow",
                timeout,
                FeedbackLoopSpec::new("fb", FeedbackSchedule::Now).with_format(ExportFormat::Jsonl),
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while loops.get("slow", &now).unwrap().state == LoopState::Running {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let done = loops.get("slow", &now).unwrap();
        assert_eq!(done.state, LoopState::Done, "{done:?}");
        // An empty interval writes no file.
        let files = std::fs::read_dir(dir.path().join("datasets/sets/fb"))
            .unwrap()
            .count();
        let again = loops
            .start(
                "slow",
                timeout,
                FeedbackLoopSpec::new("fb", FeedbackSchedule::Now),
            )
            .await
            .unwrap();
        while loops.get("slow", &again).unwrap().state == LoopState::Running {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(loops.get("slow", &again).unwrap().exports.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("datasets/sets/fb"))
                .unwrap()
                .count(),
            files
        );

        log.flush().await.unwrap();
        let all = log
            .query(&PredictionQuery::new("slow").page(0, 10_000))
            .await
            .unwrap();
        assert_eq!(all.records.len(), 400);
        let ids = exported(&dir.path().join("datasets/sets/fb"));
        let missing = all
            .records
            .iter()
            .filter(|r| !ids.contains_key(&r.request_id))
            .count();
        let twice = ids.values().filter(|n| **n > 1).count();
        assert_eq!((ids.len(), missing, twice), (400, 0, 0));
        let mark = std::fs::read_to_string(dir.path().join("datasets/sets/fb/_feedback/slow.json"))
            .unwrap();
        assert!(mark.contains("through_us"), "{mark}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cron_loop_exports_at_its_times_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = PredictionLog::builder()
            .with_dir(dir.path().join("log"))
            .with_setting("flush_interval_ms", "50")
            .unwrap()
            .build()
            .unwrap();
        let endpoint =
            ModelEndpoint::builder("e", predictor_fn(|x: f64| -> crate::Result<f64> { Ok(x) }))
                .record_sink(Arc::new(log.clone()))
                .build()
                .unwrap();
        let datasets = Datasets::from_url("memory://").unwrap();
        let loops = FeedbackLoops::new(log, datasets.clone())
            .with_settle_margin(Duration::from_millis(100));
        let every_second = FeedbackSchedule::Cron("* * * * * *".into());
        let id = loops
            .start(
                "e",
                Duration::from_secs(1),
                FeedbackLoopSpec::new("c", every_second),
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        while loops.get("e", &id).unwrap().exports.len() < 2 {
            assert!(std::time::Instant::now() < deadline);
            endpoint
                .predict(PredictRequest::new(serde_json::json!(1.0)))
                .await
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = loops.stop("e", &id).unwrap();
        assert_eq!(status.state, LoopState::Stopped);
        assert!(status.next_run.is_none());
        // Each export is cut on a whole second, as the expression says.
        for export in &status.exports {
            assert!(export.to.ends_with(".000000Z"), "{export:?}");
        }
        assert!(status.exported_records <= sent);
        let files = datasets.dataset("c").unwrap().list().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            datasets.dataset("c").unwrap().list().await.unwrap(),
            files,
            "stopped"
        );
        assert_eq!(loops.get("e", &id).unwrap().state, LoopState::Stopped);
        assert!(
            loops.specs("e").is_empty(),
            "a stopped loop leaves the spec"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_interval_is_streamed_holding_a_few_batches() {
        use crate::RecordSink as _;
        const RECORDS: usize = 50_000;
        let dir = tempfile::tempdir().unwrap();
        let log = PredictionLog::builder()
            .with_dir(dir.path().join("log"))
            .with_setting("queue_capacity", "100000")
            .unwrap()
            .build()
            .unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // About 200 bytes a row: the file passes 8 MiB, so the writer streams it in parts.
        let pad = "x".repeat(160);
        for i in 0..RECORDS {
            log.record(PredictionRecord {
                request_id: format!("r{i:06}"),
                endpoint: "big".into(),
                model: "m".into(),
                model_version: "1".into(),
                input: Some(serde_json::json!(pad)),
                output: Some(serde_json::json!(i)),
                error: None,
                status: 200,
                start_time: start + Duration::from_millis(i as u64),
                elapsed_ms: 1.0,
                metrics: Default::default(),
                params: Default::default(),
            });
        }
        log.flush().await.unwrap();
        let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
        let loops =
            FeedbackLoops::new(log, datasets.clone()).with_settle_margin(Duration::from_millis(10));
        let id = loops
            .start(
                "big",
                Duration::from_secs(1),
                FeedbackLoopSpec::new("big", FeedbackSchedule::Now),
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while loops.get("big", &id).unwrap().state == LoopState::Running {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = loops.get("big", &id).unwrap();
        assert_eq!(status.state, LoopState::Done, "{status:?}");
        assert_eq!(status.exports.len(), 1, "{status:?}");
        assert_eq!(status.exports[0].records, RECORDS);
        // The old export collected the whole interval (50,000 records) before writing.
        let peak = loops.inner.held.peak();
        assert!(
            peak > 0 && peak <= (BATCHES_IN_FLIGHT + 2) * BATCH_RECORDS,
            "held {peak} records at once"
        );
        let files = datasets.dataset("big").unwrap().list().await.unwrap();
        let file = files.iter().find(|f| f.path.ends_with(".csv")).unwrap();
        assert!(file.size > 8 * 1024 * 1024, "{file:?}");
        let ids = exported(&dir.path().join("datasets/big"));
        assert_eq!(ids.len(), RECORDS);
        assert!(ids.values().all(|n| *n == 1));
    }

    #[tokio::test]
    async fn an_unreachable_dataset_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let log = PredictionLog::builder()
            .with_dir(dir.path())
            .build()
            .unwrap();
        // A file where the datasets' folder should be: listing it fails.
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(&file).unwrap();
        let datasets = Datasets::with_store(Arc::new(store), Default::default(), "file:///x");
        let loops = FeedbackLoops::new(log, datasets);
        let error = loops
            .start(
                "e",
                Duration::from_secs(1),
                FeedbackLoopSpec::new("d", FeedbackSchedule::Now),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("`dataset` `d` cannot be reached"), "{error}");
    }
}
