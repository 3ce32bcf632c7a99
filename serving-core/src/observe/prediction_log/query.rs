//! Reading the prediction log back: [`PredictionQuery`] by time range, model, version and
//! status, with offset and size.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

use super::row::{PredictionRow, micros, parse_time};
use super::writer::SegmentName;
use crate::error::{Error, Result};
use crate::observe::record::PredictionRecord;

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
        // `micros` rounds down: a record of µs `first` may start before a fractional end.
        self.start_time.is_none_or(|start| last >= micros(start))
            && self.end_time.is_none_or(|end| first <= micros(end))
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
    /// How many predictions match in all, before offset and size; a lower bound when
    /// `total_exact` is false.
    pub total: usize,
    /// Whether `total` is exact. A query stops reading once it has its page and knows that
    /// more follow, so the total is only exact when the rest can be counted from segment names:
    /// the query filters by time alone, and the segments were written with their record count
    /// in their name.
    pub total_exact: bool,
    /// The predictions of this page, in the query's order.
    pub records: Vec<PredictionRecord>,
}

/// How many predictions match a query; see [`PredictionPage::total`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryTotal {
    /// Matches counted, a lower bound when `exact` is false.
    pub total: usize,
    /// Whether `total` is exact.
    pub exact: bool,
}

impl PredictionQuery {
    /// Whether only the time range filters (so a segment's count is its count of matches).
    fn by_time_only(&self) -> bool {
        self.model.is_none() && self.model_version.is_none() && self.status.is_none()
    }

    /// Whether every start time in `[first, last]` µs lies inside the time range.
    fn contains(&self, name: SegmentName) -> bool {
        let from_micros =
            |us: i64| SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
        self.start_time
            .is_none_or(|start| from_micros(name.first) >= start)
            // A record of the last µs starts before the next µs.
            && self
                .end_time
                .is_none_or(|end| from_micros(name.last.saturating_add(1)) <= end)
    }

    /// Whether `record` comes before every record that starts at `bound` µs or later (oldest
    /// first) or at `bound` µs or earlier (newest first).
    fn settled(&self, record: &PredictionRecord, bound: Option<i64>) -> bool {
        let at = micros(record.start_time);
        bound.is_none_or(|bound| match self.order {
            Order::OldestFirst => at < bound,
            Order::NewestFirst => at > bound,
        })
    }
}

/// A segment that can hold matches.
#[derive(Debug)]
struct Segment {
    location: Path,
    name: SegmentName,
}

/// The order of matches: start time, request id, and the order read (ids may repeat).
type Key = (SystemTime, String, u64);

/// Matches read but not yet placed, because an unread segment may hold earlier ones.
#[derive(Default)]
struct Unplaced {
    records: BTreeMap<Key, PredictionRecord>,
    read: u64,
}

/// Reads the query's page; see [`PredictionLog::query`](super::PredictionLog::query).
///
/// Segments are read one at a time in the query's order (by their names' bounds), streamed
/// line by line, and reading stops once the page is complete and more matches are known to
/// follow. A segment outside the time range is never opened, nor one that falls wholly within
/// `offset` when the count in its name says so.
///
/// Memory holds one chunk of a segment, one line, and the matches that may still enter the
/// page (at most `offset + size`, in practice those of about one segment).
pub(super) async fn scan<S>(
    store: &dyn ObjectStore,
    prefix: &Path,
    query: &PredictionQuery,
    sink: &mut S,
    emit: fn(&mut S, PredictionRecord) -> Result<()>,
) -> Result<QueryTotal> {
    let segments = segments(store, prefix, query).await?;
    let newest_first = query.order == Order::NewestFirst;
    let need = query.offset.saturating_add(query.size);
    let by_time = query.by_time_only();
    let mut unplaced = Unplaced::default();
    // Matches whose place in the order is settled, and matches dropped because they come
    // after the page.
    let (mut placed, mut beyond) = (0usize, 0usize);
    let mut next = 0;
    while next < segments.len() {
        let more_known = !unplaced.records.is_empty() || beyond > 0;
        if placed >= need && (more_known || by_time) {
            break;
        }
        let segment = &segments[next];
        let following = segments.get(next + 1).map(|s| s.name);
        next += 1;
        if unplaced.records.is_empty() && by_time && query.contains(segment.name) {
            let apart = following.is_none_or(|f| {
                if newest_first {
                    segment.name.first > f.last
                } else {
                    segment.name.last < f.first
                }
            });
            if let Some(records) = segment
                .name
                .records
                .filter(|n| apart && placed + n <= query.offset)
            {
                placed += records;
                continue;
            }
        }
        read_lines(store, &segment.location, |line| {
            let Some(record) = decode(line, &segment.location) else {
                return;
            };
            if !query.matches(&record) {
                return;
            }
            unplaced.read += 1;
            let key = (record.start_time, record.request_id.clone(), unplaced.read);
            unplaced.records.insert(key, record);
            // Only the best `need - placed` can still enter the page.
            if unplaced.records.len() > need.saturating_sub(placed) {
                let _worst = if newest_first {
                    unplaced.records.pop_first()
                } else {
                    unplaced.records.pop_last()
                };
                beyond += 1;
            }
        })
        .await?;
        let bound = segments.get(next).map(|s| {
            if newest_first {
                s.name.last
            } else {
                s.name.first
            }
        });
        loop {
            let entry = if newest_first {
                unplaced.records.last_entry()
            } else {
                unplaced.records.first_entry()
            };
            let Some(entry) = entry.filter(|e| query.settled(e.get(), bound)) else {
                break;
            };
            let record = entry.remove();
            if (query.offset..need).contains(&placed) {
                emit(sink, record)?;
            }
            placed += 1;
        }
    }
    let mut total = QueryTotal {
        total: placed + unplaced.records.len() + beyond,
        exact: true,
    };
    for segment in &segments[next..] {
        match segment.name.records {
            Some(records) if by_time && query.contains(segment.name) => total.total += records,
            // A segment across an end of the range: its times are read, nothing else.
            Some(_) if by_time => total.total += count_in_range(store, segment, query).await?,
            _ => {
                total.exact = false;
                break;
            }
        }
    }
    Ok(total)
}

/// The segments of the query's endpoint whose names say they can hold a match, in the
/// query's order.
async fn segments(
    store: &dyn ObjectStore,
    prefix: &Path,
    query: &PredictionQuery,
) -> Result<Vec<Segment>> {
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
    let mut segments = Vec::new();
    for directory in listing.common_prefixes {
        let Some(name) = directory.filename() else {
            continue;
        };
        if first_date.as_deref().is_some_and(|first| name < first) {
            continue;
        }
        let mut objects = store.list(Some(&directory));
        while let Some(object) = objects.try_next().await.map_err(storage(&directory))? {
            let Some(name) = object.location.filename().and_then(SegmentName::parse) else {
                continue;
            };
            if query.overlaps(name.first, name.last) {
                segments.push(Segment {
                    location: object.location,
                    name,
                });
            }
        }
    }
    match query.order {
        Order::OldestFirst => segments.sort_by_key(|s| (s.name.first, s.name.last)),
        Order::NewestFirst => {
            segments.sort_by_key(|s| std::cmp::Reverse((s.name.last, s.name.first)));
        }
    }
    Ok(segments)
}

/// Calls `each` with every non-empty line of the object at `location`, streamed: a whole
/// segment is never held.
async fn read_lines(
    store: &dyn ObjectStore,
    location: &Path,
    mut each: impl FnMut(&[u8]),
) -> Result<()> {
    let mut chunks = match store.get(location).await {
        Ok(object) => object.into_stream(),
        // Deleted by the retention since it was listed.
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(error) => return Err(storage(location)(error)),
    };
    let mut partial = Vec::new();
    while let Some(chunk) = chunks.try_next().await.map_err(storage(location))? {
        let mut rest = &chunk[..];
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let line = if partial.is_empty() {
                &rest[..end]
            } else {
                partial.extend_from_slice(&rest[..end]);
                &partial[..]
            };
            if !line.is_empty() {
                each(line);
            }
            partial.clear();
            rest = &rest[end + 1..];
        }
        partial.extend_from_slice(rest);
    }
    if !partial.is_empty() {
        each(&partial);
    }
    Ok(())
}

fn decode(line: &[u8], location: &Path) -> Option<PredictionRecord> {
    let decoded = serde_json::from_slice::<PredictionRow>(line)
        .map_err(|e| Error::invalid_request(e.to_string()))
        .and_then(PredictionRecord::try_from);
    match decoded {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::warn!(%location, %error, "skipping an unreadable prediction log line");
            None
        }
    }
}

/// How many of the segment's records started inside the query's time range, decoding only
/// their start times.
async fn count_in_range(
    store: &dyn ObjectStore,
    segment: &Segment,
    query: &PredictionQuery,
) -> Result<usize> {
    #[derive(Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        start_time: std::borrow::Cow<'a, str>,
    }
    let mut count = 0;
    read_lines(store, &segment.location, |line| {
        let at = serde_json::from_slice::<Stamp<'_>>(line)
            .ok()
            .and_then(|stamp| parse_time(&stamp.start_time).ok());
        if at.is_some_and(|at| {
            query.start_time.is_none_or(|start| at >= start)
                && query.end_time.is_none_or(|end| at < end)
        }) {
            count += 1;
        }
    })
    .await?;
    Ok(count)
}

fn storage(location: &Path) -> impl FnOnce(object_store::Error) -> Error + use<> {
    let location = location.to_string();
    move |error| Error::Storage {
        location,
        source: Box::new(error),
    }
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
