//! The dashboard's Batch runs tab: a web service with a batch endpoint attached, two runs over
//! the same input with a model changed in between, listed newest first and compared, and a
//! third run's progress followed until it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use fantoccini::Locator;
use serde_json::json;
use serving::batch::{BatchJobConfig, BatchService};
use serving::datasets::{Datasets, Overwrite};
use serving::http::{Observability, Token, WebService};
use serving::{
    BatchRequest, BatchRuns, BatchStatus, Bytes, EndpointSpec, ModelRef, ModelRegistry, Result,
    predictor_fn,
};

use super::super::{Running, TOKEN};
use super::{Driver, browser, screenshot_path, until};

const ROWS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_batch_runs_and_compares_them() {
    let dir = tempfile::tempdir().unwrap();
    let datasets = Datasets::local(dir.path()).unwrap();
    let rows: String = (0..ROWS).map(|i| format!("{i},1\n")).collect();
    datasets
        .dataset("scores")
        .unwrap()
        .put(
            "in.csv",
            Bytes::from(format!("a,b\n{rows}")),
            Overwrite::Refuse,
        )
        .await
        .unwrap();
    // `a + b`, plus one from `cutoff` on: lowering the cutoff between two runs changes the
    // predictions of the rows above it, as a new model version would.
    let cutoff = Arc::new(AtomicU64::new(u64::MAX));
    let registry = Arc::new(ModelRegistry::new());
    let model_cutoff = Arc::clone(&cutoff);
    // Closed, the gate holds every prediction: a run stays running until the test opens it.
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let model_gate = Arc::clone(&gate);
    registry.register("score", "1", move || {
        let cutoff = model_cutoff.load(Ordering::SeqCst) as f64;
        let gate = Arc::clone(&model_gate);
        Ok(predictor_fn(move |a: f64, b: f64| -> Result<f64> {
            let (open, opened) = &*gate;
            let _open = opened
                .wait_while(open.lock().unwrap(), |open| !*open)
                .unwrap();
            Ok(if a >= cutoff { a + b + 1.0 } else { a + b })
        }))
    });
    let mut spec = EndpointSpec::new("scores", ModelRef::new("score", "1"));
    spec.kind = BatchJobConfig::default().into();
    let batches = BatchService::builder(datasets)
        .registry(registry)
        .endpoint(spec)
        .unwrap()
        .build()
        .unwrap();
    let first = batches
        .run(
            "scores",
            BatchRequest::new("in.csv", "out/first.csv", "scores"),
        )
        .await
        .unwrap();
    cutoff.store(ROWS - 2, Ordering::SeqCst);
    let second = batches
        .run(
            "scores",
            BatchRequest::new("in.csv", "out/second.csv", "scores"),
        )
        .await
        .unwrap();
    assert_eq!(
        (first.status, second.status),
        (BatchStatus::Succeeded, BatchStatus::Succeeded)
    );

    let observability = Observability::new();
    let runs: Arc<dyn BatchRuns> = Arc::new(batches);
    let service = WebService::builder()
        .observability(observability)
        .batch_endpoint_with_token("scores", Arc::clone(&runs), Token::new(TOKEN))
        .build()
        .unwrap();
    let running = Running::start(service).await;

    let driver = Driver::start().await;
    let (profile, downloads) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client = browser(&driver, profile.path(), downloads.path()).await;
    client
        .goto(&format!(
            "{}/dashboard#endpoint=scores&token={TOKEN}",
            running.base
        ))
        .await
        .unwrap();
    client
        .find(Locator::Css(r#"#tabs button[data-view="batch"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Both runs, newest first, with their figures.
    let listed = until(
        &client,
        "two batch runs listed",
        "document.querySelectorAll('#batch-table tbody tr').length === 2 && [...document.querySelectorAll('#batch-table tbody tr')].map(r => r.dataset.runId)",
    )
    .await;
    assert_eq!(listed, json!([second.id, first.id]));
    let cells = client
        .execute(
            "return [...document.querySelectorAll('#batch-table tbody tr:first-child td')].map(td => td.textContent);",
            vec![],
        )
        .await
        .unwrap();
    let cells: Vec<String> = serde_json::from_value(cells).unwrap();
    assert_eq!(cells[1], "succeeded");
    assert_eq!(cells[2], "in.csv");
    assert_eq!(cells[3], "scores/out/second.csv");
    assert_eq!(cells[4], "1");
    assert_eq!((cells[5].as_str(), cells[6].as_str()), ("10", "0"));
    assert!(cells[8].ends_with(" s"), "cold start shown: {cells:?}");
    assert!(!cells[9].is_empty(), "started shown: {cells:?}");

    // Select both and compare: the figures side by side, and 2 of 10 predictions differ.
    let compare = client.find(Locator::Id("batch-compare")).await.unwrap();
    assert!(
        !compare.is_enabled().await.unwrap(),
        "compare disabled with none selected"
    );
    for check in client
        .find_all(Locator::Css("#batch-table tbody input[type=checkbox]"))
        .await
        .unwrap()
    {
        check.click().await.unwrap();
    }
    assert!(
        compare.is_enabled().await.unwrap(),
        "compare enabled with two selected"
    );
    compare.click().await.unwrap();
    let differing = until(
        &client,
        "the comparison's differing predictions",
        "document.querySelector('#batch-diff-table td.batch-differing')?.textContent",
    )
    .await;
    assert_eq!(differing, json!("2"));
    let compared = client
        .execute(
            "return [...document.querySelectorAll('#batch-compare-table thead th[data-run-id]')].map(th => th.dataset.runId);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(compared, json!([second.id, first.id]));
    let predictions = client
        .execute(
            r#"return [...document.querySelectorAll('#batch-compare-table tr[data-figure="Predictions"] td')].map(td => [td.textContent, td.className]);"#,
            vec![],
        )
        .await
        .unwrap();
    let predictions: Vec<(String, String)> = serde_json::from_value(predictions).unwrap();
    assert_eq!(predictions.len(), 2);
    assert!(predictions[0].0.starts_with("mean 5.7"), "{predictions:?}");
    assert!(predictions[1].0.starts_with("mean 5.5"), "{predictions:?}");
    assert!(
        predictions.iter().all(|(_, class)| class == "differs"),
        "{predictions:?}"
    );
    let rows_compared = client
        .execute(
            "return document.querySelector('#batch-diff-table tbody td:nth-child(3)').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows_compared, json!(ROWS.to_string()));

    // A running run: listed with its progress bar, then shown succeeded once it ends, by the
    // tab's polling of GET …/batches/{id} alone.
    *gate.0.lock().unwrap() = false;
    let third = runs
        .submit(
            "scores",
            BatchRequest::new("in.csv", "out/third.csv", "scores"),
        )
        .await
        .unwrap();
    client
        .find(Locator::Id("batch-refresh"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let running_row = until(
        &client,
        "the third run listed as running with its progress",
        r#"document.querySelector('#batch-table tbody tr:first-child[data-status="running"] progress') !== null && document.querySelector('#batch-table tbody tr:first-child').dataset.runId"#,
    )
    .await;
    assert_eq!(running_row, json!(third));
    std::fs::write(
        screenshot_path("dashboard-batch-running.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    {
        let (open, opened) = &*gate;
        *open.lock().unwrap() = true;
        opened.notify_all();
    }
    let ended = until(
        &client,
        "the third run shown succeeded without a refresh",
        r#"document.querySelector('#batch-table tbody tr:first-child')?.dataset.status === 'succeeded' && document.querySelector('#batch-table tbody tr:first-child .batch-rows').textContent"#,
    )
    .await;
    assert_eq!(ended, json!(ROWS.to_string()));
    assert_eq!(
        client
            .execute(
                "return document.querySelectorAll('#batch-table tbody tr').length;",
                vec![]
            )
            .await
            .unwrap(),
        json!(3)
    );
    std::fs::write(
        screenshot_path("dashboard-batch.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.close().await.unwrap();
    running.stop().await;
}
