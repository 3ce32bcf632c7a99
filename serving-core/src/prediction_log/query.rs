//! Reading the prediction log back: [`PredictionQuery`] by time range, model, version and
//! status, with offset and size.

use std::str::FromStr;
use std::time::SystemTime;

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use super::row::{PredictionRow, micros};
use super::writer::segment_bounds;
use crate::error::{Error, Result};
use crate::record::PredictionRecord;

/// Which predictions to read, like the original SDK's
/// `get_predictions(start_time, end_time, offset, size, model)`.
///
/// Times select on the prediction's start time, in the half-open range
/// `[start_time, end_time)`; every other filter is an exact match.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PredictionQuery {
    /// The endpoint whose predictions to read.
    pub endpoint: String,
    /// Earliest start time, inclusive.
    pub start_time: Option<SystemTime>,
    /// Latest start time, exclusive.
    pub end_time: Option<SystemTime>,
    /// Only this model name.
    pub model: Option<String>,
    /// Only this model version.
    pub model_version: Option<String>,
    /// Only these outcomes.
    pub status: Option<StatusFilter>,
    /// Matching predictions to skip, in `order`.
    pub offset: usize,
    /// Most predictions to return.
    pub size: usize,
    /// Oldest or newest first.
    pub order: Order,
}

impl PredictionQuery {
    /// The first 100 predictions of `endpoint`, oldest first.
    pub fn new(endpoint: impl Into<String>) -> Self {
        PredictionQuery {
            endpoint: endpoint.into(),
            start_time: None,
            end_time: None,
            model: None,
            model_version: None,
            status: None,
            offset: 0,
            size: 100,
            order: Order::OldestFirst,
        }
    }

    /// Predictions that started in `[start, end)`.
    pub fn between(mut self, start: SystemTime, end: SystemTime) -> Self {
        self.start_time = Some(start);
        self.end_time = Some(end);
        self
    }

    /// Predictions that started at or after `start`.
    pub fn since(mut self, start: SystemTime) -> Self {
        self.start_time = Some(start);
        self
    }

    /// Only predictions of this model name.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only predictions of this model version.
    pub fn model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = Some(version.into());
        self
    }

    /// Only predictions with this outcome.
    pub fn status(mut self, status: StatusFilter) -> Self {
        self.status = Some(status);
        self
    }

    /// Skips `offset` matches and returns at most `size`.
    pub fn page(mut self, offset: usize, size: usize) -> Self {
        self.offset = offset;
        self.size = size;
        self
    }

    /// Sets the order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    fn matches(&self, record: &PredictionRecord) -> bool {
        self.start_time
            .is_none_or(|start| record.start_time >= start)
            && self.end_time.is_none_or(|end| record.start_time < end)
            && self.model.as_ref().is_none_or(|m| *m == record.model)
            && self
                .model_version
                .as_ref()
                .is_none_or(|v| *v == record.model_version)
            && self.status.is_none_or(|s| s.matches(record.status))
    }

    /// Whether a segment whose start times span `[first, last]` µs can hold a match.
    fn overlaps(&self, first: i64, last: i64) -> bool {
        self.start_time.is_none_or(|start| last >= micros(start))
            && self.end_time.is_none_or(|end| first < micros(end))
    }
}

/// Selects predictions by outcome. Parses from `ok` (2xx), `error` (any other status) or a
/// status code such as `422`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Successful predictions (2xx).
    Ok,
    /// Failed predictions (any status outside 2xx).
    Error,
    /// Exactly this status.
    Code(u16),
}

impl StatusFilter {
    /// Whether `status` passes the filter.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Ok => (200..300).contains(&status),
            StatusFilter::Error => !(200..300).contains(&status),
            StatusFilter::Code(code) => status == code,
        }
    }
}

impl FromStr for StatusFilter {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "ok" => Ok(StatusFilter::Ok),
            "error" => Ok(StatusFilter::Error),
            code => code
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .map(StatusFilter::Code)
                .ok_or_else(|| {
                    Error::invalid_request(format!(
                        "status `{code}` must be `ok`, `error` or an HTTP status code"
                    ))
                }),
        }
    }
}

/// The order of a query's answer, by start time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first: the order for exports.
    #[default]
    OldestFirst,
    /// Newest first: the order for "recent predictions".
    NewestFirst,
}

impl FromStr for Order {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "asc" | "oldest_first" => Ok(Order::OldestFirst),
            "desc" | "newest_first" => Ok(Order::NewestFirst),
            other => Err(Error::invalid_request(format!(
                "order `{other}` must be `asc` or `desc`"
            ))),
        }
    }
}

/// One page of a query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionPage {
    /// How many predictions match in all, before offset and size.
    pub total: usize,
    /// The predictions of this page, in the query's order.
    pub records: Vec<PredictionRecord>,
}

/// Reads every segment of the query's endpoint that can hold a match; see
/// [`PredictionLog::query`](super::PredictionLog::query).
pub(super) async fn run(
    store: &dyn ObjectStore,
    prefix: &Path,
    query: &PredictionQuery,
) -> Result<PredictionPage> {
    let storage = |location: &Path| {
        let location = location.to_string();
        move |error: object_store::Error| Error::Storage {
            location,
            source: Box::new(error),
        }
    };
    let root = prefix.clone().join(query.endpoint.as_str());
    // Segments sit under the date they were written, never before their records started.
    let first_date = query.start_time.map(|start| {
        format!(
            "date={}",
            chrono::DateTime::<chrono::Utc>::from(start).format("%Y-%m-%d")
        )
    });
    let listing = store
        .list_with_delimiter(Some(&root))
        .await
        .map_err(storage(&root))?;
    let mut matches = Vec::new();
    for directory in listing.common_prefixes {
        let Some(name) = directory.filename() else {
            continue;
        };
        if first_date.as_deref().is_some_and(|first| name < first) {
            continue;
        }
        let segments: Vec<_> = store
            .list(Some(&directory))
            .try_collect()
            .await
            .map_err(storage(&directory))?;
        for segment in segments {
            let Some((first, last)) = segment.location.filename().and_then(segment_bounds) else {
                continue;
            };
            if !query.overlaps(first, last) {
                continue;
            }
            let bytes = store
                .get(&segment.location)
                .await
                .map_err(storage(&segment.location))?
                .bytes()
                .await
                .map_err(storage(&segment.location))?;
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let decoded = serde_json::from_slice::<PredictionRow>(line)
                    .map_err(|e| Error::invalid_request(e.to_string()))
                    .and_then(PredictionRecord::try_from);
                match decoded {
                    Ok(record) if query.matches(&record) => matches.push(record),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        location = %segment.location,
                        %error,
                        "skipping an unreadable prediction log line"
                    ),
                }
            }
        }
    }
    matches.sort_by(|a, b| (a.start_time, &a.request_id).cmp(&(b.start_time, &b.request_id)));
    if query.order == Order::NewestFirst {
        matches.reverse();
    }
    let total = matches.len();
    let records = matches
        .into_iter()
        .skip(query.offset)
        .take(query.size)
        .collect();
    Ok(PredictionPage { total, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_parse_and_match() {
        assert!("ok".parse::<StatusFilter>().unwrap().matches(200));
        assert!(!"ok".parse::<StatusFilter>().unwrap().matches(500));
        assert!("error".parse::<StatusFilter>().unwrap().matches(422));
        assert!("422".parse::<StatusFilter>().unwrap().matches(422));
        assert!(!"422".parse::<StatusFilter>().unwrap().matches(500));
        assert!("teapot".parse::<StatusFilter>().is_err());
        assert!("99".parse::<StatusFilter>().is_err());
        assert_eq!("desc".parse::<Order>().unwrap(), Order::NewestFirst);
    }
}
