use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use serde_json::json;

use super::*;

fn record(id: usize, at: SystemTime, version: &str, status: u16) -> PredictionRecord {
    PredictionRecord {
        request_id: format!("r{id:03}"),
        endpoint: "iris".into(),
        model: "tree".into(),
        model_version: version.into(),
        input: Some(json!([id])),
        output: (status == 200).then(|| json!(id * 2)),
        error: (status != 200).then(|| "input rejected: no".to_owned()),
        status,
        start_time: at,
        elapsed_ms: 1.0,
        metrics: BTreeMap::from([("m".into(), id as f64)]),
        params: BTreeMap::new(),
    }
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_636_800 + seconds)
}

fn ids(page: &PredictionPage) -> Vec<&str> {
    page.records.iter().map(|r| r.request_id.as_str()).collect()
}

#[tokio::test]
async fn writes_segments_and_queries_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = PredictionLog::builder()
        .with_dir(dir.path())
        .with_setting("segment_records", "4")
        .unwrap()
        .build()
        .unwrap();
    for id in 0..10 {
        let version = if id % 2 == 0 { "1" } else { "2" };
        let status = if id % 3 == 0 { 422 } else { 200 };
        log.record(record(id, at(id as u64), version, status));
    }
    let mut other = record(99, at(5), "1", 200);
    other.endpoint = "other".into();
    log.record(other);
    log.flush().await.unwrap();
    assert_eq!(log.stats().written, 11);

    let all = log.query(&PredictionQuery::new("iris")).await.unwrap();
    assert_eq!(all.total, 10);
    assert_eq!(all.records[3], record(3, at(3), "2", 422));

    let range = PredictionQuery::new("iris").between(at(2), at(6));
    let page = log.query(&range).await.unwrap();
    assert_eq!(ids(&page), ["r002", "r003", "r004", "r005"]);

    let filtered = range
        .clone()
        .model_version("2")
        .status(StatusFilter::Ok)
        .order(Order::NewestFirst);
    assert_eq!(ids(&log.query(&filtered).await.unwrap()), ["r005"]);

    let paged = PredictionQuery::new("iris")
        .status(StatusFilter::Error)
        .page(1, 2);
    let page = log.query(&paged).await.unwrap();
    assert_eq!((page.total, ids(&page)), (4, vec!["r003", "r006"]));

    assert!(
        log.query(&PredictionQuery::new("iris").model("other-model"))
            .await
            .unwrap()
            .records
            .is_empty()
    );
    let files: Vec<_> = walk(dir.path());
    assert!(
        files
            .iter()
            .all(|f| f.contains("/predictions/") && f.ends_with(".jsonl")),
        "{files:?}"
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn full_segments_are_written_unasked_per_endpoint_and_the_rest_when_the_log_is_dropped() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let log = PredictionLog::builder()
        .with_store(Arc::clone(&store))
        .with_setting("segment_records", "3")
        .unwrap()
        .with_setting("flush_interval_ms", "3600000")
        .unwrap()
        .build()
        .unwrap();
    for id in 0..9 {
        let mut record = record(id, at(id as u64), "1", 200);
        if id % 4 == 3 {
            record.endpoint = "other".into();
        }
        log.record(record);
    }
    // iris has 7 records (two full segments of 3), other has 2: no flush, no interval.
    wait_until(|| log.stats().written == 6).await;
    assert_eq!(log.stats().queued, 3);
    let reader = PredictionLog::builder()
        .with_store(Arc::clone(&store))
        .build()
        .unwrap();
    let iris = reader.query(&PredictionQuery::new("iris")).await.unwrap();
    assert_eq!(ids(&iris), ["r000", "r001", "r002", "r004", "r005", "r006"]);
    // The last handle gone, the writer writes what is left.
    drop(log);
    let other = PredictionQuery::new("other");
    for _ in 0..1000 {
        if reader.query(&other).await.unwrap().total == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let iris = reader.query(&PredictionQuery::new("iris")).await.unwrap();
    assert_eq!(iris.total, 7);
    assert_eq!(ids(&reader.query(&other).await.unwrap()), ["r003", "r007"]);
}

#[tokio::test]
async fn close_writes_everything_accepted_and_refuses_the_rest() {
    let store = Arc::new(InMemory::new());
    // A long interval: only close can write these.
    let log = PredictionLog::builder()
        .with_store(store)
        .with_setting("flush_interval_ms", "3600000")
        .unwrap()
        .build()
        .unwrap();
    for id in 0..500 {
        log.record(record(id, at(id as u64), "1", 200));
    }
    log.close().await.unwrap();
    log.record(record(500, at(500), "1", 200));
    let stats = log.stats();
    assert_eq!(
        (stats.accepted, stats.written, stats.dropped),
        (500, 500, 1)
    );
    let page = log
        .query(&PredictionQuery::new("iris").page(0, 1000))
        .await
        .unwrap();
    assert_eq!(page.total, 500);
    log.close().await.unwrap();
    log.flush().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let slow = ThrottledStore::new(
        InMemory::new(),
        ThrottleConfig {
            wait_put_per_call: Duration::from_millis(1500),
            ..ThrottleConfig::default()
        },
    );
    let log = PredictionLog::builder()
        .with_store(Arc::new(slow))
        .with_setting("queue_capacity", "8")
        .unwrap()
        .with_setting("flush_interval_ms", "3600000")
        .unwrap()
        .build()
        .unwrap();
    log.record(record(0, at(0), "1", 200));
    // The writer takes the record and the flush, then sits in the slow put.
    let flushing = tokio::spawn({
        let log = log.clone();
        async move { log.flush().await }
    });
    wait_until(|| log.stats().queued == 0).await;
    // Had `record` waited for room, all twenty would have been accepted.
    for id in 1..=20 {
        log.record(record(id, at(id as u64), "1", 200));
    }
    let stats = log.stats();
    assert_eq!((stats.accepted, stats.dropped), (9, 12), "{stats:?}");
    flushing.await.unwrap().unwrap();
    log.close().await.unwrap();
    assert_eq!(log.stats().written, 9);
    let page = log.query(&PredictionQuery::new("iris")).await.unwrap();
    assert_eq!(
        ids(&page),
        [
            "r000", "r001", "r002", "r003", "r004", "r005", "r006", "r007", "r008"
        ]
    );
}

#[tokio::test]
async fn segments_that_cannot_be_written_are_counted_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the prefix directory should be: every put fails.
    std::fs::write(dir.path().join("predictions"), b"in the way").unwrap();
    let log = PredictionLog::builder()
        .with_dir(dir.path())
        .build()
        .unwrap();
    log.record(record(0, at(0), "1", 200));
    assert!(matches!(log.flush().await, Err(Error::Storage { .. })));
    let stats = log.stats();
    assert_eq!((stats.accepted, stats.written, stats.failed), (1, 0, 1));
    log.close().await.unwrap();
}

#[test]
fn build_outside_a_runtime_is_an_error() {
    let error = PredictionLog::builder()
        .with_store(Arc::new(InMemory::new()))
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Action { .. }), "{error}");
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met within 5 s");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}

/// A store that counts the segments opened, and how many reads ran at once at most, each read
/// taking `delay`.
#[derive(Debug)]
struct CountingStore {
    inner: InMemory,
    delay: Duration,
    reads: std::sync::atomic::AtomicUsize,
    reading: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
}

impl CountingStore {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(CountingStore {
            inner: InMemory::new(),
            delay,
            reads: Default::default(),
            reading: Default::default(),
            most_at_once: Default::default(),
        })
    }

    /// Segments opened since the last call.
    fn take_reads(&self) -> usize {
        self.reads.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        use std::sync::atomic::Ordering::SeqCst;
        self.reads.fetch_add(1, SeqCst);
        let now = self.reading.fetch_add(1, SeqCst) + 1;
        self.most_at_once.fetch_max(now, SeqCst);
        tokio::time::sleep(self.delay).await;
        self.reading.fetch_sub(1, SeqCst);
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A log on `store` with `segments` segments of ten records each, one second apart; every
/// third record failed.
async fn log_of_segments(
    store: &Arc<CountingStore>,
    segments: usize,
    settings: &[(&str, &str)],
) -> PredictionLog {
    let mut builder = PredictionLog::builder()
        .with_store(Arc::clone(store) as Arc<dyn ObjectStore>)
        .with_setting("segment_records", "10")
        .unwrap()
        .with_setting("flush_interval_ms", "3600000")
        .unwrap();
    for (key, value) in settings {
        builder = builder.with_setting(key, value).unwrap();
    }
    let log = builder.build().unwrap();
    for id in 0..segments * 10 {
        let status = if id % 3 == 0 { 422 } else { 200 };
        log.record(record(id, at(id as u64), "1", status));
    }
    log.flush().await.unwrap();
    assert_eq!(log.stats().written as usize, segments * 10);
    store.take_reads();
    log
}

#[tokio::test]
async fn a_query_reads_only_the_segments_its_page_needs() {
    let store = CountingStore::new(Duration::ZERO);
    let log = log_of_segments(&store, 20, &[]).await;

    let newest = PredictionQuery::new("iris")
        .page(0, 1)
        .order(Order::NewestFirst);
    let page = log.query(&newest).await.unwrap();
    assert_eq!(ids(&page), ["r199"]);
    assert_eq!(
        (page.total, page.total_exact),
        (200, true),
        "counted from the names"
    );
    assert_eq!(store.take_reads(), 1, "one segment of twenty read");

    let oldest = log
        .query(&PredictionQuery::new("iris").page(0, 1))
        .await
        .unwrap();
    assert_eq!((ids(&oldest), oldest.total), (vec!["r000"], 200));
    assert_eq!(store.take_reads(), 1);

    // Offset 55 falls in the sixth segment: the first five are counted by name, unread.
    let deep = log
        .query(&PredictionQuery::new("iris").page(55, 10))
        .await
        .unwrap();
    let expected: Vec<String> = (55..65).map(|id| format!("r{id:03}")).collect();
    assert_eq!(ids(&deep), expected);
    assert_eq!(store.take_reads(), 2);

    // Filtered: read until the page and one more match, the total a lower bound.
    let failures = log
        .query(
            &PredictionQuery::new("iris")
                .status(StatusFilter::Error)
                .page(0, 5),
        )
        .await
        .unwrap();
    assert_eq!(ids(&failures), ["r000", "r003", "r006", "r009", "r012"]);
    assert!(!failures.total_exact && failures.total >= 6, "{failures:?}");
    assert_eq!(store.take_reads(), 2);

    // A page past the end reads nothing and counts exactly.
    let past = log
        .query(&PredictionQuery::new("iris").page(500, 10))
        .await
        .unwrap();
    assert_eq!(
        (past.records.len(), past.total, past.total_exact),
        (0, 200, true)
    );
    assert_eq!(store.take_reads(), 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_time_range_opens_only_the_segments_it_overlaps() {
    let store = CountingStore::new(Duration::ZERO);
    let log = log_of_segments(&store, 20, &[]).await;
    // Records 95..125: segments 9 to 12.
    let range = PredictionQuery::new("iris")
        .between(at(95), at(125))
        .page(0, 1000);
    let page = log.query(&range).await.unwrap();
    let expected: Vec<String> = (95..125).map(|id| format!("r{id:03}")).collect();
    assert_eq!(ids(&page), expected);
    assert_eq!((page.total, page.total_exact), (30, true));
    assert_eq!(store.take_reads(), 4);

    // One record of it, newest first: the last segment of the range only, and the total
    // from its names plus the start times of the segment across the range's start.
    let one = log
        .query(&range.clone().page(0, 1).order(Order::NewestFirst))
        .await
        .unwrap();
    assert_eq!(
        (ids(&one), one.total, one.total_exact),
        (vec!["r124"], 30, true)
    );
    assert_eq!(
        store.take_reads(),
        2,
        "the page's segment and the one across the start"
    );

    let before = log
        .query(&PredictionQuery::new("iris").between(at(1_000), at(2_000)))
        .await
        .unwrap();
    assert_eq!((before.records.len(), before.total), (0, 0));
    assert_eq!(store.take_reads(), 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn pages_of_overlapping_segments_are_those_of_the_whole_sorted_log() {
    let store = CountingStore::new(Duration::ZERO);
    let log = PredictionLog::builder()
        .with_store(Arc::clone(&store) as Arc<dyn ObjectStore>)
        .with_setting("segment_records", "7")
        .unwrap()
        .build()
        .unwrap();
    // Start times shuffled, so that segments overlap in time; ids repeat.
    let mut all = Vec::new();
    for n in 0..60u64 {
        // Each second twice.
        let seconds = (n * 37) % 30;
        let record = record(
            (n % 50) as usize,
            at(seconds),
            "1",
            if n % 4 == 0 { 500 } else { 200 },
        );
        log.record(record.clone());
        all.push(record);
    }
    log.flush().await.unwrap();
    all.sort_by(|a, b| (a.start_time, &a.request_id).cmp(&(b.start_time, &b.request_id)));
    for order in [Order::OldestFirst, Order::NewestFirst] {
        for status in [None, Some(StatusFilter::Error)] {
            let mut expected: Vec<&PredictionRecord> = all
                .iter()
                .filter(|r| status.is_none_or(|s| s.matches(r.status)))
                .collect();
            if order == Order::NewestFirst {
                expected.reverse();
            }
            for (offset, size) in [(0, 1), (0, 5), (3, 9), (20, 20), (55, 10), (0, 100)] {
                let mut query = PredictionQuery::new("iris").page(offset, size).order(order);
                query.status = status;
                let page = log.query(&query).await.unwrap();
                let want: Vec<_> = expected
                    .iter()
                    .skip(offset)
                    .take(size)
                    .map(|r| (r.start_time, &r.request_id))
                    .collect();
                let got: Vec<_> = page
                    .records
                    .iter()
                    .map(|r| (r.start_time, &r.request_id))
                    .collect();
                assert_eq!(got, want, "{order:?} {status:?} {offset}+{size}");
                if page.total_exact {
                    assert_eq!(page.total, expected.len());
                } else {
                    assert!(page.total > offset + size && page.total <= expected.len());
                }
            }
        }
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn segments_named_before_counts_were_in_names_stay_readable() {
    let store = CountingStore::new(Duration::ZERO);
    for (seq, ids) in [(1, 0..3), (2, 3..5)] {
        let lines: String = ids
            .clone()
            .map(|id| {
                serde_json::to_string(&PredictionRow::from(&record(id, at(id as u64), "1", 200)))
                    .unwrap()
                    + "\n"
            })
            .collect();
        let (first, last) = (
            super::row::micros(at(ids.start as u64)),
            super::row::micros(at(ids.end as u64 - 1)),
        );
        let old = object_store::path::Path::from(format!(
            "predictions/iris/date=2026-05-01/{first}-{last}-0123456789ab-{seq:08}.jsonl"
        ));
        store.put(&old, lines.into()).await.unwrap();
    }
    let log = log_of_segments(&store, 0, &[]).await;
    let page = log.query(&PredictionQuery::new("iris")).await.unwrap();
    assert_eq!(
        (ids(&page), page.total, page.total_exact),
        (vec!["r000", "r001", "r002", "r003", "r004"], 5, true)
    );
    let one = log
        .query(&PredictionQuery::new("iris").page(0, 1))
        .await
        .unwrap();
    assert_eq!(ids(&one), ["r000"]);
    assert!(
        !one.total_exact,
        "an old segment's count is not in its name"
    );
    assert_eq!(one.total, 3, "the segment read");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_concurrent_queries_run_at_once() {
    let store = CountingStore::new(Duration::from_millis(20));
    let log = log_of_segments(&store, 4, &[("max_concurrent_queries", "2")]).await;
    let queries: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(
                async move { log.query(&PredictionQuery::new("iris").page(0, 1000)).await },
            )
        })
        .collect();
    for query in queries {
        assert_eq!(query.await.unwrap().unwrap().total, 40);
    }
    assert_eq!(store.take_reads(), 8 * 4);
    assert_eq!(
        store.most_at_once.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn retention_deletes_the_oldest_segments_by_age_and_by_size() {
    let store = CountingStore::new(Duration::ZERO);
    // Segments whose records started an hour, a day and a week ago.
    let now = SystemTime::now();
    let writer = PredictionLog::builder()
        .with_store(Arc::clone(&store) as Arc<dyn ObjectStore>)
        .build()
        .unwrap();
    for (id, age_h) in [(1, 168), (2, 24), (3, 1)] {
        writer.record(record(
            id,
            now - Duration::from_secs(age_h * 3600),
            "1",
            200,
        ));
        writer.flush().await.unwrap();
    }
    writer.close().await.unwrap();
    let remaining = |log: &PredictionLog| {
        let log = log.clone();
        async move {
            let page = log.query(&PredictionQuery::new("iris")).await.unwrap();
            page.records
                .into_iter()
                .map(|r| r.request_id)
                .collect::<Vec<_>>()
        }
    };
    let open = |settings: &[(&str, &str)]| {
        let mut builder =
            PredictionLog::builder().with_store(Arc::clone(&store) as Arc<dyn ObjectStore>);
        for (key, value) in settings {
            builder = builder.with_setting(key, value).unwrap();
        }
        builder.build().unwrap()
    };

    let unlimited = open(&[]);
    assert_eq!(
        unlimited.apply_retention().await.unwrap(),
        RetentionPass::default()
    );
    assert_eq!(remaining(&unlimited).await, ["r001", "r002", "r003"]);

    // Two days: the week-old segment goes, and the log does it by itself when it starts.
    let two_days = open(&[("retention_max_age_secs", "172800")]);
    for _ in 0..1000 {
        if remaining(&two_days).await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(remaining(&two_days).await, ["r002", "r003"]);
    assert_eq!(two_days.apply_retention().await.unwrap().segments, 0);

    // Room for one segment: the older of the two goes.
    let segment_bytes = store
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .max()
        .unwrap();
    let small = open(&[("retention_max_bytes", &segment_bytes.to_string())]);
    let pass = small.apply_retention().await.unwrap();
    assert_eq!(pass.segments, 1);
    assert!(pass.bytes > 0);
    assert_eq!(remaining(&small).await, ["r003"]);
    for log in [unlimited, two_days, small] {
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_csv_export_streams_in_chunks_exactly_what_write_csv_writes() {
    let store = CountingStore::new(Duration::ZERO);
    // 2,000 rows of about 100 bytes: several chunks of 64 KiB.
    let log = log_of_segments(&store, 200, &[]).await;
    let query = PredictionQuery::new("iris")
        .page(5, 1_990)
        .order(Order::NewestFirst);
    let mut chunks = log.query_csv(&query).await.unwrap();
    let mut streamed = Vec::new();
    let mut count = 0;
    while let Some(chunk) = chunks.try_next().await.unwrap() {
        streamed.extend_from_slice(&chunk);
        count += 1;
    }
    assert!(count > 2, "{count} chunks");
    let page = log.query(&query).await.unwrap();
    let mut whole = Vec::new();
    write_csv(&page.records, &mut whole).unwrap();
    assert_eq!(
        String::from_utf8(streamed).unwrap(),
        String::from_utf8(whole).unwrap()
    );
    // Exports dropped after their first chunk stop, and give their query permit back.
    for _ in 0..3 {
        let mut dropped = log.query_csv(&query).await.unwrap();
        assert!(dropped.try_next().await.unwrap().is_some());
    }
    let one = query.page(0, 1);
    let after = tokio::time::timeout(Duration::from_secs(30), log.query(&one));
    assert_eq!(
        after
            .await
            .expect("permits are returned")
            .unwrap()
            .records
            .len(),
        1
    );
    log.close().await.unwrap();
}
