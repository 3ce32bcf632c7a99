//! The batch runner on the local filesystem: runs end to end, both formats, both paths, bad
//! input, scale to zero, records, cancel, compare, and the transport suite.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use polars::prelude::{DataFrame, Series};
use serde_json::Value;
use serving_core::conformance::transport::{
    self, Delivered, Payload, Submission, TransportHarness, TransportKit,
};
use serving_core::datasets::{Datasets, Overwrite};
use serving_core::runner::{OutputOrder, Runner};
use serving_core::{
    AutoscaleBounds, Autoscaler, BatchRequest, BatchRuns, BatchStatus, Bytes, EndpointSpec, Error,
    FileInput, InMemoryRecords, ModelRef, ModelRegistry, OutputFormat, PredictionDistribution,
    Result, log_metric, predictor_fn,
};
use tokio::sync::mpsc;

use serving_core::Settings as _;
use serving_core::prediction_log::object_store::ObjectStoreExt as _;

use super::*;
use crate::output::{CsvOutput, Target};
use crate::rows::{RowJob, run_rows};
use crate::run::Live;
use crate::source::{Read, read_csv};

/// Records every scale call.
#[derive(Debug, Default)]
struct Scales(Mutex<Vec<u32>>);

#[async_trait]
impl Autoscaler for Scales {
    async fn scale(&self, _endpoint: &str, _bounds: AutoscaleBounds, desired: u32) -> Result<u32> {
        self.0.lock().unwrap().push(desired);
        Ok(desired)
    }

    async fn replicas(&self, _endpoint: &str) -> Result<u32> {
        Ok(self.0.lock().unwrap().last().copied().unwrap_or(0))
    }
}

fn spec(name: &str, model: &str, version: &str, settings: &[(&str, &str)]) -> EndpointSpec {
    let mut config = BatchJobConfig::default();
    config.apply(settings.iter().copied()).unwrap();
    let mut spec = EndpointSpec::new(name, ModelRef::new(model, version));
    spec.kind = config.into();
    spec
}

struct Fixture {
    _dir: tempfile::TempDir,
    datasets: Datasets,
    registry: Arc<ModelRegistry>,
    scales: Arc<Scales>,
    records: InMemoryRecords,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let datasets = Datasets::local(dir.path().join("datasets")).unwrap();
        let registry = Arc::new(ModelRegistry::new());
        registry.register("sum", "1", || {
            Ok(predictor_fn(|a: f64, b: f64| -> Result<f64> {
                log_metric("a", a);
                Ok(a + b)
            }))
        });
        registry.register("sum", "2", || {
            Ok(predictor_fn(|a: f64, b: f64| -> Result<f64> {
                Ok(if a > 10.0 { a + b + 1.0 } else { a + b })
            }))
        });
        registry.register("panics", "1", || {
            Ok(predictor_fn(|a: f64, b: f64| -> Result<f64> {
                assert!(a != 3.0, "three is not allowed");
                Ok(a * b)
            }))
        });
        registry.register("slow", "1", || {
            std::thread::sleep(Duration::from_millis(150));
            Ok(predictor_fn(|a: f64| -> Result<f64> {
                std::thread::sleep(Duration::from_millis(2));
                Ok(a)
            }))
        });
        registry.register("length", "1", || {
            Ok(predictor_fn(|file: Bytes| -> Result<usize> {
                Ok(file.len())
            }))
        });
        registry.register(
            "broken",
            "1",
            || -> Result<Arc<serving_core::DynPredictor>> {
                Err(Error::invalid_request("the model file is missing"))
            },
        );
        Fixture {
            _dir: dir,
            datasets,
            registry,
            scales: Arc::default(),
            records: InMemoryRecords::new(),
        }
    }

    fn service(&self, endpoints: Vec<EndpointSpec>) -> BatchService {
        let mut builder = BatchService::builder(self.datasets.clone())
            .registry(Arc::clone(&self.registry))
            .autoscaler(self.scales.clone())
            .record_sink(Arc::new(self.records.clone()))
            .local_input(true);
        for spec in endpoints {
            builder = builder.endpoint(spec).unwrap();
        }
        builder
            .chunk_endpoint(spec("vector", "sum", "v", &[("chunk_rows", "100")]), || {
                Ok(Sum::default())
            })
            .unwrap()
            .chunk_endpoint(
                spec("vector-slow", "sum", "v", &[("chunk_rows", "100")]),
                || Ok(SlowSum),
            )
            .unwrap()
            .build()
            .unwrap()
    }

    async fn put(&self, path: &str, text: &str) {
        self.datasets
            .dataset("data")
            .unwrap()
            .put(path, Bytes::from(text.to_owned()), Overwrite::Replace)
            .await
            .unwrap();
    }

    async fn get(&self, path: &str) -> String {
        let bytes = self
            .datasets
            .dataset("data")
            .unwrap()
            .get(path)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn exists(&self, path: &str) -> bool {
        self.datasets
            .dataset("data")
            .unwrap()
            .head(path)
            .await
            .unwrap()
            .is_some()
    }
}

#[derive(Debug, Default)]
struct Sum {
    calls: Arc<AtomicUsize>,
}

impl ChunkPredictor for Sum {
    fn predict_chunk(&self, chunk: &DataFrame) -> Result<Series> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let first = chunk.columns()[0].as_materialized_series().f64().unwrap();
        assert!(first.get(0) != Some(-1.0), "a chunk with -1 panics");
        sum_columns(chunk)
    }
}

#[derive(Debug)]
struct SlowSum;

impl ChunkPredictor for SlowSum {
    fn predict_chunk(&self, chunk: &DataFrame) -> Result<Series> {
        std::thread::sleep(Duration::from_millis(20));
        sum_columns(chunk)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_vectorised_run_stops_and_writes_nothing() {
    let fx = Fixture::new();
    let service = fx.service(vec![]);
    fx.put("slow.csv", &numbers(20_000)).await;
    let id = service
        .submit(
            "vector-slow",
            BatchRequest::new("slow.csv", "slow-out.csv", "data"),
        )
        .await
        .unwrap();
    while service
        .get("vector-slow", &id)
        .await
        .unwrap()
        .rows_predicted
        == 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancelled =
        tokio::time::timeout(Duration::from_secs(10), service.cancel("vector-slow", &id))
            .await
            .expect("the run stops promptly")
            .unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert!(cancelled.rows_predicted < 20_000, "{cancelled:?}");
    assert!(!fx.exists("slow-out.csv").await);
}

fn numbers(rows: usize) -> String {
    let mut text = String::from("a,b\n");
    for i in 0..rows {
        text.push_str(&format!("{i}.5,{}\n", i * 2));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_predicts_every_row_in_order_and_is_recorded() {
    let fx = Fixture::new();
    let service = fx.service(vec![spec("adder", "sum", "1", &[("chunk_rows", "64")])]);
    fx.put("in/rows.csv", &numbers(2000)).await;
    let run = service
        .run(
            "adder",
            BatchRequest::new("in/rows.csv", "out/p.csv", "data"),
        )
        .await
        .unwrap();
    assert_eq!(run.status, BatchStatus::Succeeded, "{run:?}");
    assert_eq!(
        (run.rows_read, run.rows_predicted, run.rows_failed),
        (2000, 2000, 0)
    );
    assert!(
        run.rows_per_second > 0.0 && run.cold_start_seconds.is_some(),
        "{run:?}"
    );
    assert_eq!(
        (run.model.as_str(), run.model_version.as_str()),
        ("sum", "1")
    );
    assert_eq!(run.progress(), Some(1.0));
    let output = fx.get("out/p.csv").await;
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "a,b,prediction,error");
    assert_eq!(lines.len(), 2001);
    for (i, line) in lines[1..].iter().enumerate() {
        let expected = i as f64 + 0.5 + (i * 2) as f64;
        assert_eq!(*line, format!("{i}.5,{},{expected:?},", i * 2), "row {i}");
    }
    let summary = run.metrics["a"];
    assert_eq!(
        (summary.count, summary.min, summary.max),
        (2000, 0.5, 1999.5)
    );
    let PredictionDistribution::Numeric {
        count,
        min,
        quantiles,
        ..
    } = &run.predictions
    else {
        panic!("{:?}", run.predictions);
    };
    assert_eq!((*count, *min), (2000, 0.5));
    assert!(quantiles.contains_key("p50"));
    // Stored beside the datasets, and listed newest first.
    let stored = fx
        .datasets
        .system_path(&format!("batch-runs/adder/{}.json", run.id))
        .unwrap();
    assert!(fx.datasets.store().head(&stored).await.is_ok());
    let again = service
        .run(
            "adder",
            BatchRequest::new("in/rows.csv", "out/q.csv", "data"),
        )
        .await
        .unwrap();
    let listed: Vec<String> = service
        .list("adder")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [again.id.clone(), run.id.clone()]);
    // A restarted service reads the same records.
    let restarted = fx.service(vec![spec("adder", "sum", "1", &[])]);
    assert_eq!(
        restarted
            .get("adder", &run.id)
            .await
            .unwrap()
            .rows_predicted,
        2000
    );
    // Nothing is logged for good rows by default.
    assert!(fx.records.records().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_format_and_typed_columns() {
    let fx = Fixture::new();
    let registry_model = "echo";
    fx.registry.register(registry_model, "1", || {
        Ok(predictor_fn(
            |n: i64, x: f64, name: String, flag: bool| -> Result<String> {
                Ok(format!("{n}|{x}|{name}|{flag}"))
            },
        ))
    });
    let service = fx.service(vec![spec("typed", registry_model, "1", &[])]);
    fx.put(
        "typed.csv",
        "n,x,name,flag\n1,2,ab,true\n3,4.5,\"c,d\",false\n",
    )
    .await;
    let run = service
        .run(
            "typed",
            BatchRequest::new("typed.csv", "typed-out.csv", "data")
                .with_format(OutputFormat::Original),
        )
        .await
        .unwrap();
    assert_eq!(run.status, BatchStatus::Succeeded, "{run:?}");
    assert_eq!(
        fx.get("typed-out.csv").await,
        "input,prediction\n\"[1,2.0,\"\"ab\"\",true]\",1|2|ab|true\n\"[3,4.5,\"\"c,d\"\",false]\",\"3|4.5|c,d|false\"\n"
    );
    let PredictionDistribution::Categorical { counts, .. } = &run.predictions else {
        panic!("{:?}", run.predictions);
    };
    assert_eq!(counts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let fx = Fixture::new();
    let service = fx.service(vec![
        spec("adder", "sum", "1", &[]),
        spec("panics", "panics", "1", &[]),
    ]);
    fx.put("good.csv", "a,b\n1,2\n").await;
    let submit = |input: &str, output: &str, dataset: &str| {
        let service = service.clone();
        let request = BatchRequest::new(input, output, dataset);
        async move { service.run("adder", request).await }
    };
    let missing = submit("nope.csv", "o1.csv", "data").await.unwrap();
    assert_eq!(missing.status, BatchStatus::Failed);
    assert_eq!(
        missing.error.as_deref(),
        Some("dataset `data` has no file `nope.csv`")
    );
    let local = submit("/no/such/file.csv", "o1.csv", "data").await.unwrap();
    assert!(
        local
            .error
            .as_deref()
            .unwrap()
            .contains("cannot open the input file `/no/such/file.csv`"),
        "{local:?}"
    );
    let unknown = submit("good.csv", "o.csv", "nodata").await.unwrap_err();
    assert_eq!(unknown.to_string(), "no dataset named `nodata`");
    for outside in ["/etc/out.csv", "../out.csv", "a/../../out.csv"] {
        let error = submit("good.csv", outside, "data").await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidRequest { .. }),
            "{outside}: {error}"
        );
        assert!(error.to_string().contains("invalid path"), "{error}");
    }
    let no_endpoint = service
        .run("nope", BatchRequest::new("good.csv", "o.csv", "data"))
        .await
        .unwrap_err();
    assert!(matches!(no_endpoint, Error::EndpointNotFound { .. }));

    fx.put("empty.csv", "").await;
    let empty = submit("empty.csv", "o2.csv", "data").await.unwrap();
    assert!(
        empty
            .error
            .as_deref()
            .unwrap()
            .contains("`empty.csv` is empty"),
        "{empty:?}"
    );
    fx.put("header.csv", "a,b\n").await;
    let header = submit("header.csv", "o3.csv", "data").await.unwrap();
    assert!(
        header
            .error
            .as_deref()
            .unwrap()
            .contains("has a header but no rows"),
        "{header:?}"
    );
    for (run, out) in [
        (&missing, "o1.csv"),
        (&empty, "o2.csv"),
        (&header, "o3.csv"),
    ] {
        assert_eq!(run.status, BatchStatus::Failed);
        assert!(!fx.exists(out).await, "a failed run writes nothing");
    }

    fx.put("ragged.csv", "a,b\n1,2\n3\n4,5,6\nx,1\n7,8\n").await;
    let ragged = submit("ragged.csv", "ragged-out.csv", "data")
        .await
        .unwrap();
    assert_eq!(ragged.status, BatchStatus::Succeeded, "{ragged:?}");
    assert_eq!(
        (ragged.rows_read, ragged.rows_predicted, ragged.rows_failed),
        (5, 2, 3)
    );
    assert_eq!(
        fx.get("ragged-out.csv").await,
        "a,b,prediction,error\n\
         1,2,3.0,\n\
         3,,,row 2 has 1 cells; the header has 2 columns: 3\n\
         4,5,,\"row 3 has 3 cells; the header has 2 columns: 4,5,6\"\n\
         x,1,,row 4: column `a`: `x` is not a number like the rest of the column\n\
         7,8,15.0,\n"
    );
    // Failed rows are in the prediction log.
    assert_eq!(
        fx.records
            .records()
            .iter()
            .filter(|r| r.error.is_some())
            .count(),
        3
    );

    fx.put("panics.csv", "a,b\n1,2\n3,4\n5,6\n").await;
    let panics = service
        .run(
            "panics",
            BatchRequest::new("panics.csv", "panics-out.csv", "data"),
        )
        .await
        .unwrap();
    assert_eq!(
        (panics.status, panics.rows_predicted, panics.rows_failed),
        (BatchStatus::Succeeded, 2, 1)
    );
    let output = fx.get("panics-out.csv").await;
    assert!(
        output.contains("3,4,,predictor panicked: three is not allowed"),
        "{output}"
    );
    assert!(output.contains("5,6,30.0,"), "{output}");

    // An existing output is kept unless asked.
    fx.put("keep.csv", "old").await;
    let kept = submit("good.csv", "keep.csv", "data").await.unwrap_err();
    assert!(matches!(kept, Error::AlreadyExists { .. }), "{kept}");
    assert_eq!(fx.get("keep.csv").await, "old");
    let replaced = service
        .run(
            "adder",
            BatchRequest::new("good.csv", "keep.csv", "data").with_overwrite(true),
        )
        .await
        .unwrap();
    assert_eq!(replaced.status, BatchStatus::Succeeded);
    assert_eq!(fx.get("keep.csv").await, "a,b,prediction,error\n1,2,3.0,\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vectorised_path_is_called_once_per_chunk() {
    let fx = Fixture::new();
    let service = fx.service(vec![]);
    fx.put("v.csv", &numbers(1050)).await;
    let run = service
        .run("vector", BatchRequest::new("v.csv", "v-out.csv", "data"))
        .await
        .unwrap();
    assert_eq!(
        (run.status, run.rows_predicted),
        (BatchStatus::Succeeded, 1050),
        "{run:?}"
    );
    let output = fx.get("v-out.csv").await;
    assert_eq!(output.lines().nth(1), Some("0.5,0,0.5,"));
    assert_eq!(output.lines().nth(1050), Some("1049.5,2098,3147.5,"));
    // A panicking chunk fails its rows only; a bad cell fails its row only.
    let mut text = String::from("a,b\n-1,2\n");
    for i in 1..150 {
        text.push_str(&if i == 120 {
            "q,4\n".to_owned()
        } else {
            format!("{i}.5,1\n")
        });
    }
    fx.put("vp.csv", &text).await;
    let run = service
        .run("vector", BatchRequest::new("vp.csv", "vp-out.csv", "data"))
        .await
        .unwrap();
    assert_eq!(
        (run.status, run.rows_failed),
        (BatchStatus::Succeeded, 101),
        "{run:?}"
    );
    let output = fx.get("vp-out.csv").await;
    assert!(
        output.contains("-1,2,,predictor panicked: a chunk with -1 panics"),
        "{output}"
    );
    assert!(output.contains("99.5,1,,predictor panicked"), "{output}");
    assert!(output.contains("q,4,,row 121: column `a`"), "{output}");
    assert!(output.contains("100.5,1,101.5,"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_and_cold_start() {
    let fx = Fixture::new();
    let service = fx.service(vec![
        spec("slow", "slow", "1", &[]),
        spec("broken", "broken", "1", &[]),
    ]);
    fx.put("s.csv", "a\n1\n2\n3\n").await;
    let run = service
        .run("slow", BatchRequest::new("s.csv", "s-out.csv", "data"))
        .await
        .unwrap();
    assert_eq!(run.status, BatchStatus::Succeeded);
    assert!(
        run.cold_start_seconds.unwrap() >= 0.15,
        "building the model counts: {run:?}"
    );
    assert_eq!(*fx.scales.0.lock().unwrap(), [1, 0]);
    let failed = service
        .run("broken", BatchRequest::new("s.csv", "b-out.csv", "data"))
        .await
        .unwrap();
    assert_eq!(failed.status, BatchStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("the model file is missing")
    );
    assert_eq!(
        *fx.scales.0.lock().unwrap(),
        [1, 0, 1, 0],
        "back to zero after a failure too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_compare_and_restart() {
    let fx = Fixture::new();
    let service = fx.service(vec![
        spec("slow", "slow", "1", &[("chunk_rows", "10")]),
        spec("v1", "sum", "1", &[]),
        spec("v2", "sum", "2", &[]),
    ]);
    fx.put(
        "long.csv",
        &"a\n"
            .chars()
            .chain((0..5000).flat_map(|i| format!("{i}\n").chars().collect::<Vec<_>>()))
            .collect::<String>(),
    )
    .await;
    let id = service
        .submit(
            "slow",
            BatchRequest::new("long.csv", "long-out.csv", "data"),
        )
        .await
        .unwrap();
    loop {
        let run = service.get("slow", &id).await.unwrap();
        if run.rows_predicted > 0 {
            assert_eq!(run.status, BatchStatus::Running);
            assert!(run.progress().unwrap() < 1.0, "{run:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = service.cancel("slow", &id).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert!(
        !fx.exists("long-out.csv").await,
        "a cancelled run writes nothing"
    );
    assert_eq!(
        fx.datasets
            .dataset("data")
            .unwrap()
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|f| f.path.starts_with("long-out"))
            .count(),
        0
    );

    fx.put("cmp.csv", &numbers(30)).await;
    let a = service
        .run("v1", BatchRequest::new("cmp.csv", "a.csv", "data"))
        .await
        .unwrap();
    let b = service
        .run("v2", BatchRequest::new("cmp.csv", "b.csv", "data"))
        .await
        .unwrap();
    let comparison = service
        .compare("v1", &[a.id.clone(), a.id.clone()])
        .await
        .unwrap();
    assert_eq!(comparison.differences[0].differing, 0);
    let error = service
        .compare("v1", &[a.id.clone(), b.id.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::BatchRunNotFound { .. }),
        "runs of another endpoint: {error}"
    );
    // Rows 10.5 and up differ between the versions: 20 of 30.
    let diff = service.diff_for_test(&a, &b).await;
    assert_eq!((diff.rows, diff.differing), (30, 20));

    // A record left running by a process that stopped is failed, not running forever.
    let mut stale = a.clone();
    stale.id = "0000000000001-deadbeef".to_owned();
    stale.status = BatchStatus::Running;
    crate::store::RunStore::new(fx.datasets.clone())
        .save(&stale)
        .await
        .unwrap();
    let settled = service.get("v1", &stale.id).await.unwrap();
    assert_eq!(settled.status, BatchStatus::Failed);
    assert!(
        settled
            .error
            .unwrap()
            .contains("stopped before the run ended")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_decoded_before_predict() {
    use base64::Engine as _;
    let fx = Fixture::new();
    let mut files = spec("files", "length", "1", &[]);
    files.files = FileInput::Bytes;
    let service = fx.service(vec![files]);
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    fx.put(
        "f.csv",
        &format!(
            "file\n{}\n{}\nnot base64!\n",
            encode(b"hello"),
            encode(&[0u8; 300])
        ),
    )
    .await;
    let run = service
        .run("files", BatchRequest::new("f.csv", "f-out.csv", "data"))
        .await
        .unwrap();
    assert_eq!((run.rows_predicted, run.rows_failed), (2, 1), "{run:?}");
    let output = fx.get("f-out.csv").await;
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines[1].ends_with(",5,"), "{output}");
    assert!(lines[2].ends_with(",300,"), "{output}");
    assert!(lines[3].starts_with("not base64!,,"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rows_logged_are_bounded_and_every_row_is_a_setting() {
    let fx = Fixture::new();
    let service = fx.service(vec![
        spec("bounded", "sum", "1", &[("failed_rows_logged", "2")]),
        spec("every", "sum", "1", &[("log_every_row", "true")]),
    ]);
    fx.put("bad.csv", "a,b\nx,1\ny,1\nz,1\n1,1\n").await;
    service
        .run("bounded", BatchRequest::new("bad.csv", "b1.csv", "data"))
        .await
        .unwrap();
    assert_eq!(fx.records.records().len(), 2);
    service
        .run("every", BatchRequest::new("bad.csv", "b2.csv", "data"))
        .await
        .unwrap();
    assert_eq!(fx.records.records().len(), 2 + 4);
}

/// Only failed rows are logged by default, and a row the model failed on is logged with its
/// input, parsed again from its cells (no copy of every input is kept for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_model_failed_on_is_logged_with_its_input() {
    let fx = Fixture::new();
    let service = fx.service(vec![spec("failing", "panics", "1", &[("chunk_rows", "2")])]);
    fx.put("rows.csv", "a,b\n1,2\n3,4\n5,6\n").await;
    let run = service
        .run("failing", BatchRequest::new("rows.csv", "out.csv", "data"))
        .await
        .unwrap();
    assert_eq!((run.rows_predicted, run.rows_failed), (2, 1), "{run:?}");
    let records = fx.records.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].input, Some(serde_json::json!([3, 4])));
    assert!(
        records[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("three is not allowed")),
        "{records:?}"
    );
    assert_eq!(records[0].model_version, "1");
}

/// A prediction log whose queue holds 1,000 records takes 20,000 logged rows of each path
/// without dropping one: the run waits between chunks for the log to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_every_row_waits_for_the_prediction_log_instead_of_dropping() {
    let fx = Fixture::new();
    let log_dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        serving_core::prediction_log::PredictionLog::builder()
            .with_dir(log_dir.path())
            .with_setting("queue_capacity", "1000")
            .unwrap()
            .with_setting("segment_records", "400")
            .unwrap()
            .build()
            .unwrap(),
    );
    let settings = [("chunk_rows", "200"), ("log_every_row", "true")];
    let service = BatchService::builder(fx.datasets.clone())
        .registry(Arc::clone(&fx.registry))
        .record_sink(Arc::clone(&log) as Arc<serving_core::DynRecordSink>)
        .endpoint(spec("rows", "sum", "1", &settings))
        .unwrap()
        .chunk_endpoint(spec("chunks", "sum", "v", &settings), || Ok(Sum::default()))
        .unwrap()
        .build()
        .unwrap();
    let rows: String = (0..20_000).map(|i| format!("{i}.5,1.5\n")).collect();
    fx.put("many.csv", &format!("a,b\n{rows}")).await;
    for endpoint in ["rows", "chunks"] {
        let run = service
            .run(
                endpoint,
                BatchRequest::new("many.csv", format!("{endpoint}.csv"), "data"),
            )
            .await
            .unwrap();
        assert_eq!(run.rows_predicted, 20_000, "{run:?}");
    }
    log.flush().await.unwrap();
    let stats = log.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(stats.written, 40_000, "{stats:?}");
}

impl BatchService {
    async fn diff_for_test(
        &self,
        a: &serving_core::BatchRun,
        b: &serving_core::BatchRun,
    ) -> serving_core::PredictionDiff {
        self.diff(a, b).await.unwrap()
    }
}

/// The batch transport over an in-memory CSV: rows → runner → CSV writer, as a run does.
struct BatchHarness {
    endpoint: serving_core::ModelEndpoint,
    concurrency: usize,
}

impl BatchHarness {
    fn csv(items: &[Submission]) -> String {
        let mut text = String::from("id,suite,item,sleep_ms\n");
        for submission in items {
            let id = submission.request_id.clone().unwrap_or_default();
            match &submission.payload {
                Payload::Json(value) => text.push_str(&format!(
                    "{id},{},{},{}\n",
                    value["suite"].as_str().unwrap(),
                    value["item"],
                    value["sleep_ms"]
                )),
                // A ragged row: the batch's undecodable item.
                _ => text.push_str(&format!("{id},x\n")),
            }
        }
        text
    }

    async fn run(&self, items: Vec<Submission>, stop: BoxFuture<'static, ()>) -> Vec<Delivered> {
        let text = Self::csv(&items);
        let (tx, mut rx) = mpsc::channel(2);
        let reader = tokio::task::spawn_blocking(move || {
            read_csv(
                Box::new(std::io::Cursor::new(text.into_bytes())),
                "suite.csv",
                4,
                "id",
                Arc::default(),
                tx,
            )
        });
        let Some(Read::Schema(schema)) = rx.recv().await else {
            panic!("a schema")
        };
        let live = Arc::new(Live::new(serving_core::BatchRun::queued(
            "t",
            "transport",
            "m",
            "1",
            BatchRequest::new("i", "o", "d"),
        )));
        let mut output = CsvOutput::new(
            Target::Memory(Vec::new()),
            OutputFormat::Full,
            &schema.names,
            "prediction",
        )
        .unwrap();
        // The run's own row-wise path.
        let job = Arc::new(RowJob {
            endpoint: self.endpoint.clone(),
            schema,
            mode: RowInput::Object,
            files: FileInput::Off,
            format: OutputFormat::Full,
            stop: Arc::default(),
            records: None,
            spare: Default::default(),
        });
        run_rows(rx, job, self.concurrency, &mut output, &live, stop)
            .await
            .unwrap();
        drop(reader);
        let Target::Memory(bytes) = output.into_target().await.unwrap() else {
            unreachable!()
        };
        let mut csv = csv::Reader::from_reader(bytes.as_slice());
        csv.records()
            .map(|record| {
                let record = record.unwrap();
                let output = (record[5].is_empty())
                    .then(|| serde_json::from_str::<Value>(&record[4]).unwrap());
                Delivered::new(Some(record[0].to_owned()), output)
            })
            .collect()
    }
}

#[async_trait]
impl TransportHarness for BatchHarness {
    fn order(&self) -> OutputOrder {
        OutputOrder::Input
    }

    async fn submit(&mut self, items: Vec<Submission>) -> Vec<Delivered> {
        self.run(items, Box::pin(futures::future::pending())).await
    }

    async fn submit_then_shut_down(
        &mut self,
        items: Vec<Submission>,
        busy: BoxFuture<'static, ()>,
    ) -> Vec<Delivered> {
        self.run(items, busy).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_transport_conforms() {
    let kit = TransportKit::new();
    let endpoint = kit.endpoint();
    let concurrency = Runner::new(endpoint.clone()).concurrency();
    transport::transport(
        &mut BatchHarness {
            endpoint,
            concurrency,
        },
        &kit,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vectorised_path_measures_every_row_and_logs_as_set() {
    let fx = Fixture::new();
    let metrics = Arc::new(serving_core::InMemoryMetrics::new());
    let service = BatchService::builder(fx.datasets.clone())
        .record_sink(Arc::new(fx.records.clone()))
        .metric_sink(metrics.clone())
        .chunk_endpoint(
            spec(
                "bounded",
                "sum",
                "v",
                &[("chunk_rows", "3"), ("failed_rows_logged", "1")],
            ),
            || Ok(Sum::default()),
        )
        .unwrap()
        .chunk_endpoint(
            spec(
                "every",
                "sum",
                "v",
                &[("chunk_rows", "3"), ("log_every_row", "true")],
            ),
            || Ok(Sum::default()),
        )
        .unwrap()
        .build()
        .unwrap();
    fx.put("mixed.csv", "a,b\n1.5,2\nx,1\n3.5,4\ny,1\n5.5,6\n")
        .await;
    let run = service
        .run("bounded", BatchRequest::new("mixed.csv", "m1.csv", "data"))
        .await
        .unwrap();
    assert_eq!((run.rows_predicted, run.rows_failed), (3, 2), "{run:?}");
    // Every row is a request of the endpoint, its own outcome included.
    let events = metrics.requests();
    assert_eq!(events.len(), 5, "{events:?}");
    let ok = events
        .iter()
        .filter(|e| e.outcome == serving_core::Outcome::Ok)
        .count();
    assert_eq!(ok, 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| &*e.endpoint == "bounded" && &*e.model_version == "v"),
        "{events:?}"
    );
    // Only failed rows are recorded, up to the bound.
    let records = fx.records.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("row 2: column `a`"),
        "{records:?}"
    );
    service
        .run("every", BatchRequest::new("mixed.csv", "m2.csv", "data"))
        .await
        .unwrap();
    let records = fx.records.records();
    assert_eq!(records.len(), 1 + 5, "{records:?}");
    let outputs: Vec<Option<Value>> = records[1..].iter().map(|r| r.output.clone()).collect();
    assert_eq!(
        outputs,
        [Some(3.5), None, Some(7.5), None, Some(11.5)].map(|v| v.map(|v| serde_json::json!(v)))
    );
    assert!(records[1..].iter().all(|r| !r.request_id.is_empty()));
    assert_eq!(
        fx.get("m2.csv").await,
        "a,b,prediction,error\n1.5,2,3.5,\n\
         x,1,,row 2: column `a`: `x` is not a number like the rest of the column\n\
         3.5,4,7.5,\n\
         y,1,,row 4: column `a`: `y` is not a number like the rest of the column\n\
         5.5,6,11.5,\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_that_need_quotes_are_written_back_quoted_on_both_paths() {
    let fx = Fixture::new();
    let service = fx.service(vec![spec("rows", "sum", "1", &[])]);
    fx.put("q.csv", "a,b\n\"x,y\",1\n2,3\n\"say \"\"hi\"\"\",4\n")
        .await;
    service
        .run("rows", BatchRequest::new("q.csv", "q-rows.csv", "data"))
        .await
        .unwrap();
    let output = fx.get("q-rows.csv").await;
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines[1].starts_with("\"x,y\",1,,"), "{output}");
    // `a` is a text column (one number in two cells): `2` is text too, and the error says so.
    assert!(lines[2].starts_with("2,3,,"), "{output}");
    assert!(lines[3].starts_with("\"say \"\"hi\"\"\",4,,"), "{output}");
    // Plain chunks take the one-copy path: the same text.
    fx.put("p.csv", "a,b\n1.5,2\n2.5,3\n").await;
    service
        .run("vector", BatchRequest::new("p.csv", "p-vector.csv", "data"))
        .await
        .unwrap();
    assert_eq!(
        fx.get("p-vector.csv").await,
        "a,b,prediction,error\n1.5,2,3.5,\n2.5,3,5.5,\n"
    );
}
