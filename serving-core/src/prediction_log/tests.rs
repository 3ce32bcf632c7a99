use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

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
