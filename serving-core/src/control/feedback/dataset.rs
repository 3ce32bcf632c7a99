//! [`DatasetFeedback`]: the [`FeedbackSink`] that writes exports as files of a dataset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::loops::end_micros;
use super::spec::ExportFormat;
use super::{ExportReceipt, FeedbackExport, FeedbackSink};
use crate::datasets::{Dataset, DatasetWriter, Overwrite};
use crate::error::{Error, Result};
use crate::observe::prediction_log::{PredictionRow, format_time, write_csv, write_row};
use crate::observe::record::PredictionRecord;

/// Exports into one [`Dataset`] (a folder of the dataset store: the local filesystem, S3, …).
///
/// Each export is one new file that never replaces an existing one, and that a reader sees
/// whole or not at all: one atomic object write for [`FeedbackSink::export`]; for a feedback
/// loop's export, a [`DatasetWriter`] fed as the log's query reads (streamed in parts past
/// 8 MiB, completed only once the query succeeded). A feedback loop's export of the
/// records that ended in `[from, to)` is named `{endpoint}-{from µs}-{to µs}.{csv|jsonl}` (16
/// digits each, so names sort by time); an export through [`FeedbackSink::export`]
/// `{endpoint}-export-{µs}-{random}.{ext}`. The loop's watermark is
/// `_feedback/{endpoint}.json` beside them, written after each export file.
#[derive(Debug, Clone)]
pub struct DatasetFeedback {
    dataset: Dataset,
    format: ExportFormat,
}

/// What a dataset remembers of an endpoint's exports: everything that ended before
/// `through_us` is exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Watermark {
    pub(crate) endpoint: String,
    /// Microseconds since the epoch: every record that ended before it has been exported.
    pub(crate) through_us: i64,
    /// `through_us` as RFC 3339, for people.
    pub(crate) through: String,
    /// The last export's file.
    pub(crate) last_file: String,
}

impl DatasetFeedback {
    /// Exports into `dataset`, in CSV.
    pub fn new(dataset: Dataset) -> Self {
        DatasetFeedback {
            dataset,
            format: ExportFormat::Csv,
        }
    }

    /// The same dataset, exports written in `format`.
    pub fn with_format(mut self, format: ExportFormat) -> Self {
        self.format = format;
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Checks that the dataset's store answers (lists the dataset).
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `dataset` when the store cannot be listed.
    pub async fn check(&self) -> Result<()> {
        self.dataset.exists().await.map(|_| ()).map_err(|e| {
            Error::invalid_request(format!(
                "`dataset` `{}` cannot be reached: {e}",
                self.dataset.name()
            ))
        })
    }

    /// `records` in the dataset's format; in CSV with the header line when `header`, so that
    /// batches encoded one after another make one file.
    fn encode(&self, records: &[PredictionRecord], header: bool) -> Result<Bytes> {
        let mut out = Vec::with_capacity(records.len() * 256);
        match self.format {
            ExportFormat::Csv if header => write_csv(records, &mut out)?,
            ExportFormat::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(&mut out);
                for record in records {
                    write_row(&mut writer, record)?;
                }
                writer.flush().map_err(|e| Error::Action {
                    action: "encoding a feedback export".to_owned(),
                    source: Box::new(e),
                })?;
            }
            ExportFormat::Jsonl => {
                for record in records {
                    serde_json::to_writer(&mut out, &PredictionRow::from(record)).map_err(|e| {
                        Error::Action {
                            action: "encoding a feedback export".to_owned(),
                            source: Box::new(e),
                        }
                    })?;
                    out.push(b'\n');
                }
            }
        }
        Ok(out.into())
    }

    async fn write_new(&self, name: &str, records: &[PredictionRecord]) -> Result<ExportReceipt> {
        self.dataset
            .put(name, self.encode(records, true)?, Overwrite::Refuse)
            .await?;
        Ok(ExportReceipt {
            location: self.dataset.location(name)?.to_string(),
            records: records.len(),
        })
    }

    /// Streams the batches of the records that ended in `[from_us, to_us)` into one new file
    /// named for the interval (see the type's docs), as they come: `None`, and nothing
    /// written, when the channel closes before a first batch. The file stays staged
    /// (invisible) until [`StagedExport::finish`], so that the caller finishes it only once
    /// the query that fed the batches succeeded; an error aborts it here.
    pub(crate) async fn stage_interval(
        &self,
        endpoint: &str,
        from_us: i64,
        to_us: i64,
        batches: &mut tokio::sync::mpsc::Receiver<Vec<PredictionRecord>>,
        held: &Held,
    ) -> Result<Option<StagedExport>> {
        // Peek the first batch before opening the writer: an empty interval writes nothing.
        let Some(first) = batches.recv().await else {
            return Ok(None);
        };
        let name = format!(
            "{endpoint}-{from_us:016}-{to_us:016}.{}",
            self.format.extension()
        );
        let writer = self.dataset.writer(&name, Overwrite::Refuse).await?;
        let mut staged = StagedExport {
            writer,
            records: 0,
            ended: None,
        };
        let mut batch = Some(first);
        while let Some(records) = batch {
            let written = match self.encode(&records, staged.records == 0) {
                Ok(bytes) => staged.writer.write(bytes).await,
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                let _ = staged.abort().await;
                return Err(error);
            }
            staged.records += records.len();
            for record in &records {
                let end = end_micros(record);
                staged.ended = Some(
                    staged
                        .ended
                        .map_or((end, end), |(first, last)| (first.min(end), last.max(end))),
                );
            }
            held.release(records.len());
            batch = batches.recv().await;
        }
        Ok(Some(staged))
    }

    fn watermark_path(endpoint: &str) -> String {
        format!("_feedback/{endpoint}.json")
    }

    /// Everything of `endpoint` that ended before the returned µs has been exported: the later
    /// of the watermark object and the newest interval file (the file is written first, so a
    /// crash between the two loses nothing and repeats nothing).
    pub(crate) async fn watermark(&self, endpoint: &str) -> Result<Option<i64>> {
        let path = Self::watermark_path(endpoint);
        let saved = match self.dataset.get(&path).await {
            Ok(bytes) => {
                let mark: Watermark =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Storage {
                        location: self
                            .dataset
                            .location(&path)
                            .map_or_else(|_| path.clone(), |l| l.to_string()),
                        source: Box::new(e),
                    })?;
                Some(mark.through_us)
            }
            Err(Error::DatasetNotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let prefix = format!("{endpoint}-");
        let newest_file = self
            .dataset
            .list()
            .await?
            .iter()
            .filter_map(|file| interval_of(&file.path, &prefix))
            .map(|(_, to)| to)
            .max();
        Ok(saved.max(newest_file))
    }

    pub(crate) async fn save_watermark(
        &self,
        endpoint: &str,
        through_us: i64,
        last_file: &str,
    ) -> Result<()> {
        let mark = Watermark {
            endpoint: endpoint.to_owned(),
            through_us,
            through: format_time(from_micros(through_us)),
            last_file: last_file.to_owned(),
        };
        let bytes = serde_json::to_vec_pretty(&mark).expect("a watermark serializes");
        self.dataset
            .put(
                &Self::watermark_path(endpoint),
                bytes.into(),
                Overwrite::Replace,
            )
            .await
    }
}

/// Records pass from the prediction log's query to an export file in batches of this many…
pub(crate) const BATCH_RECORDS: usize = 512;

/// …and at most this many full batches wait between the two. With the batch the query fills
/// and the one being written, an export holds at most
/// `(BATCHES_IN_FLIGHT + 2) * BATCH_RECORDS` records whatever the size of its interval (and
/// the file writer a few parts of 8 MiB).
pub(crate) const BATCHES_IN_FLIGHT: usize = 2;

/// How many records an export holds between the query and the file, and the most it held.
#[derive(Debug, Default)]
pub(crate) struct Held {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Held {
    /// One more record taken from the query.
    pub(crate) fn take(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// `records` written to the file.
    fn release(&self, records: usize) {
        self.now.fetch_sub(records, Ordering::Relaxed);
    }

    /// The most records held at once.
    #[cfg(test)]
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// An interval file written but not yet visible; see [`DatasetFeedback::stage_interval`].
#[derive(Debug)]
pub(crate) struct StagedExport {
    writer: DatasetWriter,
    records: usize,
    /// The earliest and latest end (µs) of its records.
    ended: Option<(i64, i64)>,
}

impl StagedExport {
    /// The earliest and latest end time of its records, µs.
    pub(crate) fn ended(&self) -> Option<(i64, i64)> {
        self.ended
    }

    /// Makes the file visible, whole; it never replaces an existing one.
    pub(crate) async fn finish(self) -> Result<ExportReceipt> {
        let location = self.writer.location().to_string();
        self.writer.finish().await?;
        Ok(ExportReceipt {
            location,
            records: self.records,
        })
    }

    /// Discards it: nothing appears.
    pub(crate) async fn abort(self) -> Result<()> {
        self.writer.abort().await
    }
}

/// The `[from, to)` µs of an interval file's name `{prefix}{from}-{to}.{ext}`.
fn interval_of(name: &str, prefix: &str) -> Option<(i64, i64)> {
    let rest = name.strip_prefix(prefix)?;
    let (stem, ext) = rest.rsplit_once('.')?;
    if !["csv", "jsonl"].contains(&ext) {
        return None;
    }
    let (from, to) = stem.split_once('-')?;
    let digits = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(from) && digits(to)).then(|| Some((from.parse().ok()?, to.parse().ok()?)))?
}

pub(crate) fn from_micros(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}

#[async_trait]
impl FeedbackSink for DatasetFeedback {
    async fn export(&self, export: FeedbackExport) -> Result<ExportReceipt> {
        if export.records.is_empty() {
            return Err(Error::Action {
                action: format!(
                    "feedback export of `{}` to `{}`",
                    export.endpoint, export.dataset
                ),
                source: "no records to export".into(),
            });
        }
        let micros = export
            .exported_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let name = format!(
            "{}-export-{micros:016}-{}.{}",
            export.endpoint,
            &uuid::Uuid::new_v4().simple().to_string()[..8],
            self.format.extension()
        );
        self.write_new(&name, &export.records).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_feedback_sink_suite_passes_on_local_and_in_memory_datasets() {
        use crate::datasets::Datasets;
        let dir = tempfile::tempdir().unwrap();
        for datasets in [
            Datasets::local(dir.path()).unwrap(),
            Datasets::from_url("memory://").unwrap(),
        ] {
            for format in [ExportFormat::Csv, ExportFormat::Jsonl] {
                let sink =
                    DatasetFeedback::new(datasets.dataset("feedback").unwrap()).with_format(format);
                crate::conformance::feedback_sink(&sink).await;
            }
            let files = datasets.dataset("feedback").unwrap().list().await.unwrap();
            assert_eq!(files.len(), 4, "{files:?}");
            let csv = files.iter().find(|f| f.path.ends_with(".csv")).unwrap();
            let bytes = datasets
                .dataset("feedback")
                .unwrap()
                .get(&csv.path)
                .await
                .unwrap();
            let rows = crate::prediction_log::read_csv(bytes.as_ref()).unwrap();
            assert!(!rows.is_empty() && rows[0].endpoint == "e");
        }
    }

    #[test]
    fn interval_names_parse_back() {
        let name = format!("iris-{:016}-{:016}.csv", 5, 1_800_000_000_000_000i64);
        assert_eq!(
            interval_of(&name, "iris-"),
            Some((5, 1_800_000_000_000_000))
        );
        assert_eq!(interval_of(&name, "iris-x-"), None);
        assert_eq!(
            interval_of("iris-export-0000000000000005-abcd1234.csv", "iris-"),
            None
        );
        assert_eq!(interval_of("iris-1-2.csv", "iris-"), None);
        let jsonl = format!("a-b-{:016}-{:016}.jsonl", 1, 2);
        assert_eq!(interval_of(&jsonl, "a-b-"), Some((1, 2)));
        assert_eq!(interval_of(&jsonl, "a-"), None);
    }
}
