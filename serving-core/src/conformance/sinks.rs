//! The suites of the shared sinks: [`RecordSink`] and [`MetricHistory`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::{MetricHistory, MetricSample, MetricSink, PredictionRecord, RecordSink, RequestEvent};

/// The endpoint every record of [`record_sink`] belongs to.
pub const RECORDS_ENDPOINT: &str = "conformance";

/// Records the burst of [`record_sink`] sends from several threads at once.
const BURST_THREADS: usize = 4;
const BURST_PER_THREAD: usize = 50;

/// `sink` takes every kind of record without blocking, from several threads at once, and
/// keeps each exactly once as it was given.
///
/// `read_back` returns what the sink kept, as its readers see it (a prediction log's query,
/// parsed log lines, a collector's records), in any order; it is called once, after the last
/// record, and waits for records still being written. A sink whose output has no place for
/// custom metrics and parameters (a log line) reads them back empty, for every record.
/// Every record's endpoint is [`RECORDS_ENDPOINT`]; `tracing` events the records cause on the
/// suite's threads go to the caller's default subscriber.
pub async fn record_sink<R, Fut>(sink: &dyn RecordSink, read_back: R)
where
    R: FnOnce() -> Fut,
    Fut: Future<Output = Vec<PredictionRecord>>,
{
    let given = sample_records();
    for record in &given {
        sink.record(record.clone());
    }
    let burst = burst_records();
    let started = Instant::now();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::scope(|scope| {
        for chunk in burst.chunks(BURST_PER_THREAD) {
            let dispatch = dispatch.clone();
            scope.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    chunk.iter().for_each(|record| sink.record(record.clone()));
                });
            });
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "record must not block: {} records took {:?}",
        burst.len(),
        started.elapsed()
    );

    let kept = read_back().await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for record in &kept {
        *seen.entry(record.request_id.as_str()).or_default() += 1;
    }
    for record in given.iter().chain(&burst) {
        assert_eq!(
            seen.get(record.request_id.as_str()).copied(),
            Some(1),
            "record {} is kept exactly once",
            record.request_id
        );
    }
    assert_eq!(
        kept.len(),
        given.len() + burst.len(),
        "nothing is kept that was not given"
    );
    let by_id: HashMap<&str, &PredictionRecord> =
        kept.iter().map(|r| (r.request_id.as_str(), r)).collect();
    let keeps_tags = given
        .iter()
        .any(|r| !by_id[r.request_id.as_str()].metrics.is_empty());
    for expected in given.iter().chain(&burst) {
        let got = by_id[expected.request_id.as_str()];
        assert_same(expected, got, keeps_tags);
    }
}

/// The fields a sink must keep, compared; times to the microsecond, metrics and parameters
/// when the sink keeps them.
fn assert_same(expected: &PredictionRecord, got: &PredictionRecord, keeps_tags: bool) {
    let id = &expected.request_id;
    assert_eq!(got.endpoint, expected.endpoint, "{id}: endpoint");
    assert_eq!(got.model, expected.model, "{id}: model");
    assert_eq!(got.model_version, expected.model_version, "{id}: version");
    assert_eq!(got.status, expected.status, "{id}: status");
    assert_eq!(got.input, expected.input, "{id}: input");
    assert_eq!(got.output, expected.output, "{id}: output");
    assert_eq!(got.error, expected.error, "{id}: error");
    let micros = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    };
    let (want, have) = (micros(expected.start_time), micros(got.start_time));
    assert!(
        want.abs_diff(have) <= 1,
        "{id}: start_time {have} µs, given {want} µs"
    );
    assert!(
        (got.elapsed_ms - expected.elapsed_ms).abs() < 1e-6,
        "{id}: elapsed_ms {} given {}",
        got.elapsed_ms,
        expected.elapsed_ms
    );
    if keeps_tags {
        assert_eq!(got.metrics, expected.metrics, "{id}: metrics");
        assert_eq!(got.params, expected.params, "{id}: params");
    } else {
        assert!(
            got.metrics.is_empty() && got.params.is_empty(),
            "{id}: a sink keeps metrics and parameters for every record or for none"
        );
    }
}

/// One record of each kind an endpoint makes: a success, a refused input, a model failure, a
/// timeout, a shadow's, one refused before the model (no version), and awkward text.
fn sample_records() -> Vec<PredictionRecord> {
    let base = SystemTime::UNIX_EPOCH + Duration::from_micros(1_777_636_800_123_456);
    let record = |id: &str, status: u16, offset_ms: u64| PredictionRecord {
        request_id: id.to_owned(),
        endpoint: RECORDS_ENDPOINT.to_owned(),
        model: "model".to_owned(),
        model_version: "1".to_owned(),
        input: Some(json!([1.5, "a,b"])),
        output: None,
        error: None,
        status,
        start_time: base + Duration::from_millis(offset_ms),
        elapsed_ms: 2.5,
        metrics: BTreeMap::new(),
        params: BTreeMap::new(),
    };
    let mut ok = record("ok", 200, 0);
    ok.output = Some(json!({"class": 1, "scores": [0.25, 0.75]}));
    ok.metrics = BTreeMap::from([("confidence".to_owned(), 0.75)]);
    ok.params = BTreeMap::from([("tag".to_owned(), json!("blue"))]);
    let mut rejected = record("rejected", 422, 1);
    rejected.error = Some("input rejected: expected 2 argument(s), got 1".to_owned());
    let mut failed = record("failed", 500, 2);
    failed.input = None;
    failed.error = Some("model failed: boom\nsecond line \"quoted\"".to_owned());
    let mut timeout = record("timeout", 504, 3);
    timeout.error = Some("prediction timed out after 1s".to_owned());
    timeout.elapsed_ms = 1000.125;
    let mut shadow = record("shadow", 200, 4);
    shadow.model_version = "2".to_owned();
    shadow.output = Some(json!(-1.0));
    shadow.params = BTreeMap::from([("shadow_of".to_owned(), json!("1"))]);
    let mut refused = record("refused", 413, 5);
    refused.model_version = String::new();
    refused.input = None;
    refused.error = Some("payload too large".to_owned());
    let mut text = record("text-é-\u{1F600}", 200, 6);
    text.input = Some(json!("日本語, \u{1b}[31m \"quoted\" \r\n=1+1"));
    text.output = Some(json!({"ünïcode": "\u{0}"}));
    vec![ok, rejected, failed, timeout, shadow, refused, text]
}

/// Plain successes, one per request id, sent concurrently.
fn burst_records() -> Vec<PredictionRecord> {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_640_000);
    (0..BURST_THREADS * BURST_PER_THREAD)
        .map(|i| PredictionRecord {
            request_id: format!("burst-{i:04}"),
            endpoint: RECORDS_ENDPOINT.to_owned(),
            model: "model".to_owned(),
            model_version: "1".to_owned(),
            input: Some(json!([i])),
            output: Some(json!(i * 2)),
            error: None,
            status: 200,
            start_time: base + Duration::from_millis(i as u64),
            elapsed_ms: 0.5,
            metrics: BTreeMap::new(),
            params: BTreeMap::new(),
        })
        .collect()
}

/// What `sink` was given, `history` reads back: each sample once, per endpoint and key, in
/// the order recorded, filtered by time; requests are not samples.
///
/// `history` is the reader of what `sink` keeps: the same [`InMemoryMetrics`](crate::InMemoryMetrics),
/// or a [`FanOut`](crate::FanOut) with the reader among its sinks.
pub fn metric_history(sink: &dyn MetricSink, history: &dyn MetricHistory) {
    let start = SystemTime::now();
    let sample =
        |endpoint: &str, version: &str, key: &str, value: f64, at: SystemTime| MetricSample {
            endpoint: endpoint.into(),
            model_version: version.into(),
            key: key.into(),
            value,
            at,
        };
    assert!(
        history
            .samples("history-a", "accuracy", SystemTime::UNIX_EPOCH)
            .is_empty(),
        "nothing before anything is recorded"
    );
    sink.record_request(&RequestEvent {
        endpoint: "history-a".into(),
        model_version: "1".into(),
        status: 200,
        outcome: crate::Outcome::Ok,
        latency: Duration::from_millis(3),
        at: start,
    });
    let old = start - Duration::from_secs(3600);
    sink.record_metric(&sample("history-a", "1", "accuracy", 0.5, old));
    sink.record_metric(&sample("history-a", "2", "accuracy", 0.9, start));
    sink.record_metric(&sample("history-a", "1", "accuracy", 0.8, start));
    sink.record_metric(&sample("history-a", "1", "drift", 7.0, start));
    sink.record_metric(&sample("history-b", "1", "accuracy", 0.1, start));
    let recent = history.samples("history-a", "accuracy", start);
    assert_eq!(
        recent
            .iter()
            .map(|s| (s.model_version.as_str(), s.value))
            .collect::<Vec<_>>(),
        [("2", 0.9), ("1", 0.8)],
        "the samples of one series since `since`, in order, with their versions"
    );
    assert_eq!(recent[0], sample("history-a", "2", "accuracy", 0.9, start));
    assert_eq!(
        history
            .samples("history-a", "accuracy", SystemTime::UNIX_EPOCH)
            .len(),
        3,
        "each sample kept once"
    );
    assert_eq!(history.samples("history-a", "drift", start).len(), 1);
    assert_eq!(history.samples("history-b", "accuracy", start).len(), 1);
    assert!(history.samples("history-a", "missing", start).is_empty());
    assert!(
        history
            .samples("history-a", "accuracy", start + Duration::from_secs(60))
            .is_empty(),
        "nothing after `since`"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use object_store::memory::InMemory;
    use serde_json::Value;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;
    use crate::observe::prediction_log::{PredictionLog, PredictionQuery};
    use crate::{
        ChartMetrics, DynMetricHistory, DynMetricSink, DynRecordSink, FanOut, InMemoryMetrics,
        InMemoryRecords, PREDICTION_TARGET, RecordFanOut, TracingRecords,
    };

    const WAIT: Duration = Duration::from_secs(10);

    async fn wait_all(records: &InMemoryRecords) -> Vec<PredictionRecord> {
        records.records()
    }

    #[tokio::test]
    async fn in_memory_records_conform() {
        let records = InMemoryRecords::new();
        record_sink(&records, || wait_all(&records)).await;
        assert_eq!(records.dropped(), 0);
    }

    #[tokio::test]
    async fn record_sinks_conform_through_box_and_arc() {
        let records = InMemoryRecords::new();
        let boxed: Box<DynRecordSink> = Box::new(records.clone());
        record_sink(&boxed, || wait_all(&records)).await;
        let records = InMemoryRecords::new();
        let shared: Arc<DynRecordSink> = Arc::new(records.clone());
        record_sink(&shared, || wait_all(&records)).await;
    }

    #[tokio::test]
    async fn the_prediction_log_over_an_in_memory_store_conforms() {
        let log = PredictionLog::builder()
            .with_store(Arc::new(InMemory::new()))
            .build()
            .unwrap();
        record_sink(&log, || async {
            log.flush().await.expect("the log flushes");
            log.query(&PredictionQuery::new(RECORDS_ENDPOINT).page(0, 10_000))
                .await
                .expect("the log answers")
                .records
        })
        .await;
        assert_eq!(log.stats().dropped, 0);
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn tracing_records_conform() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let dispatch = tracing::Dispatch::new(Lines(Arc::clone(&lines)));
        // With one registered dispatcher, `tracing` caches a callsite's interest from the default
        // of whichever thread reaches it first (another test's, with no subscriber); with two,
        // it asks every registered dispatcher.
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _scope = tracing::dispatcher::set_default(&dispatch);
        record_sink(&TracingRecords, || async {
            lines.lock().unwrap().drain(..).collect()
        })
        .await;
    }

    #[tokio::test]
    async fn the_record_fan_out_conforms() {
        let (first, last) = (InMemoryRecords::new(), InMemoryRecords::new());
        let log = PredictionLog::builder()
            .with_store(Arc::new(InMemory::new()))
            .build()
            .unwrap();
        let fan_out = RecordFanOut::new(vec![
            Arc::new(first.clone()),
            Arc::new(TracingRecords),
            Arc::new(log.clone()),
            Arc::new(last.clone()),
        ]);
        record_sink(&fan_out, || wait_all(&first)).await;
        let sorted = |records: &InMemoryRecords| {
            let mut records = records.records();
            records.sort_by(|a, b| a.request_id.cmp(&b.request_id));
            records
        };
        assert!(
            sorted(&last) == sorted(&first),
            "every sink got every record"
        );
        log.flush().await.unwrap();
        let logged = log
            .query(&PredictionQuery::new(RECORDS_ENDPOINT).page(0, 10_000))
            .await
            .unwrap();
        assert_eq!(logged.total, first.len());
        let boxed: Box<DynRecordSink> = Box::new(fan_out);
        let _ = first.wait_for(first.len(), WAIT).await;
        first.clear();
        last.clear();
        record_sink(&boxed, || wait_all(&last)).await;
    }

    #[test]
    fn in_memory_metrics_are_their_own_history() {
        let metrics = InMemoryMetrics::new();
        metric_history(&metrics, &metrics);
        let metrics = Arc::new(InMemoryMetrics::new());
        let sink: Box<DynMetricSink> = Box::new(Arc::clone(&metrics));
        let history: Arc<DynMetricHistory> = metrics;
        metric_history(&sink, &history);
    }

    /// A sink written against the trait as it was, when every sink had to answer for history:
    /// it keeps none and says it has nothing.
    #[derive(Debug)]
    struct KeepsNothing;

    impl MetricSink for KeepsNothing {
        fn record_request(&self, _: &RequestEvent) {}

        fn record_metric(&self, _: &MetricSample) {}

        fn recent_metric(&self, _: &str, _: &str, _: SystemTime) -> Option<Vec<MetricSample>> {
            Some(Vec::new())
        }
    }

    #[test]
    fn a_fan_out_is_read_through_its_history_whatever_comes_first() {
        let history = Arc::new(InMemoryMetrics::new());
        let fan_out = FanOut::new(vec![
            Arc::new(KeepsNothing),
            Arc::new(ChartMetrics::new()),
            Arc::clone(&history) as Arc<DynMetricSink>,
        ]);
        metric_history(&fan_out, &*history);
        // Read the deprecated way, the first sink's "nothing" hides no samples either.
        #[allow(deprecated)]
        let asked_in_turn = fan_out.recent_metric("history-a", "accuracy", SystemTime::UNIX_EPOCH);
        assert_eq!(
            asked_in_turn.map(|samples| samples.len()),
            Some(3),
            "the samples a later sink kept"
        );
    }

    /// Turns `TracingRecords`' lines back into records, as a log shipper would.
    struct Lines(Arc<Mutex<Vec<PredictionRecord>>>);

    #[derive(Default)]
    struct Fields(BTreeMap<String, String>, BTreeMap<String, f64>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }

        fn record_f64(&mut self, field: &Field, value: f64) {
            self.1.insert(field.name().to_owned(), value);
        }

        fn record_u64(&mut self, field: &Field, value: u64) {
            self.1.insert(field.name().to_owned(), value as f64);
        }
    }

    impl Subscriber for Lines {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            if event.metadata().target() != PREDICTION_TARGET {
                return;
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            let Fields(text, numbers) = fields;
            let json = |name: &str| {
                text.get(name)
                    .map(|t| serde_json::from_str::<Value>(t).expect("JSON text"))
            };
            self.0.lock().unwrap().push(PredictionRecord {
                request_id: text["request_id"].clone(),
                endpoint: text["endpoint"].clone(),
                model: text["model"].clone(),
                model_version: text["model_version"].clone(),
                input: json("input"),
                output: json("output"),
                error: text.get("error_message").cloned(),
                status: numbers["status"] as u16,
                start_time: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(numbers["start_time"]),
                elapsed_ms: numbers["elapsed_time"],
                metrics: BTreeMap::new(),
                params: BTreeMap::new(),
            });
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }
}
