//! The [`FeedbackSink`] trait: where feedback loops export endpoint data; [`DatasetFeedback`]
//! writes exports as files of a dataset, and [`FeedbackLoops`] runs an endpoint's loops
//! ([`FeedbackLoopSpec`]) now or on a schedule, incrementally (see its docs).
//!
//! A loop's export is streamed: the interval's records go from the prediction log's query to
//! the dataset file in small batches, so an export holds a few thousand records whatever the
//! length of its interval, never the interval. [`FeedbackSink::export`] takes its records
//! whole ([`FeedbackExport::records`]); it is for callers that already hold them (and for
//! tests, with [`InMemoryFeedback`]), and the loops do not go through it.

mod dataset;
mod loops;
mod spec;

pub use self::dataset::DatasetFeedback;
pub use self::loops::{ExportSummary, FeedbackLoopStatus, FeedbackLoops, LoopState};
pub use self::spec::{ExportFormat, FeedbackLoopSpec, FeedbackSchedule};

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::observe::record::PredictionRecord;
use crate::sync::Locked;

/// One export of endpoint data into a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackExport {
    /// The endpoint the records come from.
    pub endpoint: String,
    /// The dataset they go to.
    pub dataset: String,
    /// The records: queries, predictions and metadata. Held whole, so that a sink can refuse
    /// an empty export before writing and count what it stores; feedback loops, which export
    /// intervals of any length, stream into [`DatasetFeedback`] instead.
    pub records: Vec<PredictionRecord>,
    /// When the export was made.
    pub exported_at: SystemTime,
}

/// Proof of a completed export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReceipt {
    /// Where the data landed (an object key, a path, an index in memory).
    pub location: String,
    /// How many records were written.
    pub records: usize,
}

/// Receives exports of endpoint data (the original product's feedback loops).
///
/// # Contract
/// - `export` is all or nothing: on `Ok` every record is stored and the receipt counts them
///   all; on `Err` nothing is visible at `location`.
/// - Each successful export lands at a new `location`; earlier exports are never overwritten.
/// - An export with no records is refused with an error, so an empty schedule tick leaves no
///   empty files.
#[async_trait]
pub trait FeedbackSink: Debug + Send + Sync + 'static {
    /// Stores one export.
    async fn export(&self, export: FeedbackExport) -> Result<ExportReceipt>;
}

/// A type-erased feedback sink.
pub type DynFeedbackSink = dyn FeedbackSink;

/// Forwards to the pointee, every method included.
macro_rules! forward_feedback_sink {
    ($pointer:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<S: FeedbackSink + ?Sized> FeedbackSink for $pointer<S> {
            async fn export(&self, export: FeedbackExport) -> Result<ExportReceipt> {
                (**self).export(export).await
            }
        }
    };
}

forward_feedback_sink!(Arc);
forward_feedback_sink!(Box);

/// Keeps exports in memory.
#[derive(Debug, Default)]
pub struct InMemoryFeedback {
    exports: Mutex<Vec<FeedbackExport>>,
}

impl InMemoryFeedback {
    /// No exports yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every export stored, oldest first.
    pub fn exports(&self) -> Vec<FeedbackExport> {
        self.exports.locked().clone()
    }
}

#[async_trait]
impl FeedbackSink for InMemoryFeedback {
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
        let mut exports = self.exports.locked();
        let receipt = ExportReceipt {
            location: format!("memory://{}/{}", export.dataset, exports.len()),
            records: export.records.len(),
        };
        exports.push(export);
        Ok(receipt)
    }
}
