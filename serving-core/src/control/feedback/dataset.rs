//! [`DatasetFeedback`]: the [`FeedbackSink`] that writes exports as files of a dataset.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};

use super::spec::{ExportFormat, check_dataset_name};
use super::{ExportReceipt, FeedbackExport, FeedbackSink};
use crate::error::{Error, Result};
use crate::observe::prediction_log::{PredictionRow, format_time, write_csv};
use crate::observe::record::PredictionRecord;

/// Exports into one dataset: a folder of an object store (the local filesystem, S3, …).
///
/// Each export is one new file, written with a single `put`, which object stores make atomic
/// (the local filesystem writes a temporary file and renames it): a reader sees the whole file
/// or none. A feedback loop's export of the records that ended in `[from, to)` is named
/// `{endpoint}-{from µs}-{to µs}.{csv|jsonl}` (16 digits each, so names sort by time); an
/// export through [`FeedbackSink::export`] `{endpoint}-export-{µs}-{random}.{ext}`. The loop's
/// watermark is `_feedback/{endpoint}.json` beside them, written after each export file.
#[derive(Debug, Clone)]
pub struct DatasetFeedback {
    store: Arc<dyn ObjectStore>,
    root: Path,
    dataset: String,
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
    /// The dataset named `dataset` under `root` of `store`, written in CSV.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] when the name is not a dataset's name.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, dataset: &str) -> Result<Self> {
        check_dataset_name(dataset)?;
        Ok(DatasetFeedback {
            store,
            root: root.join(dataset),
            dataset: dataset.to_owned(),
            format: ExportFormat::Csv,
        })
    }

    /// The same dataset, exports written in `format`.
    pub fn with_format(mut self, format: ExportFormat) -> Self {
        self.format = format;
        self
    }

    /// The dataset's name.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The dataset's folder in the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that the store answers: lists the dataset's folder.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] naming `dataset` when the store cannot be listed.
    pub async fn check(&self) -> Result<()> {
        let listed = self.store.list_with_delimiter(Some(&self.root)).await;
        match listed {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::invalid_request(format!(
                "`dataset` `{}` cannot be reached: {e}",
                self.dataset
            ))),
        }
    }

    fn encode(&self, records: &[PredictionRecord]) -> Result<Bytes> {
        let mut out = Vec::with_capacity(records.len() * 256);
        match self.format {
            ExportFormat::Csv => write_csv(records, &mut out)?,
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

    async fn put(&self, location: &Path, bytes: Bytes) -> Result<()> {
        self.store
            .put(location, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| Error::Storage {
                location: location.to_string(),
                source: Box::new(e),
            })
    }

    /// Writes the records that ended in `[from_us, to_us)` as one file; the name says the
    /// interval (see the type's docs).
    pub(crate) async fn export_interval(
        &self,
        endpoint: &str,
        records: &[PredictionRecord],
        from_us: i64,
        to_us: i64,
    ) -> Result<ExportReceipt> {
        let name = format!(
            "{endpoint}-{from_us:016}-{to_us:016}.{}",
            self.format.extension()
        );
        let location = self.root.clone().join(name.as_str());
        self.put(&location, self.encode(records)?).await?;
        Ok(ExportReceipt {
            location: location.to_string(),
            records: records.len(),
        })
    }

    fn watermark_location(&self, endpoint: &str) -> Path {
        self.root
            .clone()
            .join("_feedback")
            .join(format!("{endpoint}.json").as_str())
    }

    /// Everything of `endpoint` that ended before the returned µs has been exported: the later
    /// of the watermark object and the newest interval file (the file is written first, so a
    /// crash between the two loses nothing and repeats nothing).
    pub(crate) async fn watermark(&self, endpoint: &str) -> Result<Option<i64>> {
        let location = self.watermark_location(endpoint);
        let storage = |e: object_store::Error| Error::Storage {
            location: location.to_string(),
            source: Box::new(e),
        };
        let saved = match self.store.get(&location).await {
            Ok(object) => {
                let bytes = object.bytes().await.map_err(storage)?;
                let mark: Watermark =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Storage {
                        location: location.to_string(),
                        source: Box::new(e),
                    })?;
                Some(mark.through_us)
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(storage(e)),
        };
        let prefix = format!("{endpoint}-");
        let files: Vec<_> = self
            .store
            .list(Some(&self.root))
            .try_collect()
            .await
            .map_err(|e| Error::Storage {
                location: self.root.to_string(),
                source: Box::new(e),
            })?;
        let newest_file = files
            .iter()
            .filter_map(|meta| interval_of(meta.location.filename()?, &prefix))
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
        self.put(&self.watermark_location(endpoint), bytes.into())
            .await
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
        let at = crate::observe::prediction_log::format_time(export.exported_at);
        let micros = export
            .exported_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let name = format!(
            "{}-export-{micros:016}-{}.{}",
            export.endpoint,
            &crate::new_request_id()[..8],
            self.format.extension()
        );
        let location = self.root.clone().join(name.as_str());
        self.put(&location, self.encode(&export.records)?).await?;
        tracing::debug!(endpoint = %export.endpoint, dataset = %self.dataset, %at, "feedback export written");
        Ok(ExportReceipt {
            location: location.to_string(),
            records: export.records.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
