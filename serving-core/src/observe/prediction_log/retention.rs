//! Retention: the oldest segments deleted once they are older or larger than allowed.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::row::micros;
use super::writer::SegmentName;
use crate::error::{Error, Result};

/// How often the log applies its retention, from its start.
pub(super) const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The limits of [`PredictionLogConfig::retention_max_age_secs`](super::PredictionLogConfig::retention_max_age_secs)
/// and [`PredictionLogConfig::retention_max_bytes`](super::PredictionLogConfig::retention_max_bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retention {
    pub(super) max_age: Option<Duration>,
    pub(super) max_bytes: Option<u64>,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionPass {
    /// Segments deleted.
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Deletes, among the segments under `prefix` (every endpoint), those whose newest record
/// started before `now - max_age`, then the oldest until the rest hold at most `max_bytes`.
/// Age is read from the names; objects that are not segments are left alone and not counted.
pub(super) async fn apply(
    store: &dyn ObjectStore,
    prefix: &Path,
    retention: Retention,
    now: SystemTime,
) -> Result<RetentionPass> {
    let storage = |location: &Path| {
        let location = location.to_string();
        move |error: object_store::Error| Error::Storage {
            location,
            source: Box::new(error),
        }
    };
    let mut segments: Vec<(i64, Path, u64)> = store
        .list(Some(prefix))
        .try_filter_map(|object| async move {
            Ok(object
                .location
                .filename()
                .and_then(SegmentName::parse)
                .map(|name| (name.last, object.location.clone(), object.size)))
        })
        .try_collect()
        .await
        .map_err(storage(prefix))?;
    segments.sort();
    let oldest_kept = retention.max_age.map_or(i64::MIN, |age| {
        micros(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH))
    });
    let mut bytes: u64 = segments.iter().map(|(_, _, size)| size).sum();
    let mut pass = RetentionPass::default();
    for (last, location, size) in &segments {
        let too_old = *last < oldest_kept;
        let too_big = retention.max_bytes.is_some_and(|max| bytes > max);
        if !too_old && !too_big {
            break;
        }
        match store.delete(location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(storage(location)(error)),
        }
        bytes -= size;
        pass.segments += 1;
        pass.bytes += size;
    }
    if pass.segments > 0 {
        tracing::info!(
            segments = pass.segments,
            bytes = pass.bytes,
            kept_bytes = bytes,
            "prediction log retention deleted the oldest segments"
        );
    }
    Ok(pass)
}
