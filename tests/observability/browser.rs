//! The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/test-setup`), driven through chromedriver with fantoccini.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use serving::http::Observability;
use serving::prediction_log::{PredictionQuery, read_csv};

use super::{Running, TOKEN, doubler_endpoint, log_in, service};

#[cfg(feature = "batch")]
mod batch;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, killed on drop.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "Chromium and chromedriver are missing: run scripts/test-setup"
        );
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn browser(driver: &Driver, profile: &Path, downloads: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Polls `script` (a JavaScript expression) until it is truthy; returns its value.
pub(crate) async fn until(client: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = client
            .execute(&format!("return {script};"), vec![])
            .await
            .unwrap();
        if value.as_bool() != Some(false) && !value.is_null() && value != json!(0) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {value} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_charts_and_exports_csv() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(dir.path(), &[("flush_interval_ms", "50")]);
    let observability = Observability::new().with_prediction_log(log.clone());
    let running = Running::start(service(
        &observability,
        vec![doubler_endpoint(&observability)],
    ))
    .await;
    for i in 0..12 {
        running.predict("doubler", json!([i])).await;
    }
    for i in 1..=2 {
        running.predict("doubler", json!([-i])).await;
    }
    log.flush().await.unwrap();

    let driver = Driver::start().await;
    let (profile, downloads) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client = browser(&driver, profile.path(), downloads.path()).await;
    client
        .goto(&format!(
            "{}/dashboard#endpoint=doubler&token={TOKEN}",
            running.base
        ))
        .await
        .unwrap();

    // Charts: the requests chart and the custom metric's chart have drawn points.
    let requests = until(
        &client,
        "requests per minute drawn",
        r#"[...document.querySelectorAll('svg[data-chart="requests"] circle')].map(c => Number(c.dataset.value)).reduce((a, b) => a + b, 0)"#,
    )
    .await;
    assert_eq!(
        requests,
        json!(14),
        "every request is on the requests chart"
    );
    let latency_paths = until(
        &client,
        "latency lines",
        r#"document.querySelectorAll('svg[data-chart="latency"] path.series').length"#,
    )
    .await;
    assert_eq!(latency_paths, json!(3), "p50, p95 and p99");
    let metric_points = until(
        &client,
        "custom metric drawn",
        r#"Number(document.querySelector('svg[data-chart="metric:confidence"]')?.dataset.points || 0)"#,
    )
    .await;
    assert!(metric_points.as_u64().unwrap() >= 1);
    let token_in_url = client.current_url().await.unwrap().as_str().contains(TOKEN);
    assert!(!token_in_url, "the token leaves the address bar");
    std::fs::write(
        screenshot_path("dashboard-charts.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client
        .execute(
            r#"document.getElementById('metric-charts').scrollIntoView(); return null;"#,
            vec![],
        )
        .await
        .unwrap();
    std::fs::write(
        screenshot_path("dashboard-metrics.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // Logs: the table lists every prediction, and Export CSV downloads them.
    client
        .find(Locator::Css(r#"#tabs button[data-view="logs"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rows = until(
        &client,
        "log rows",
        "document.querySelectorAll('#log-table tbody tr').length",
    )
    .await;
    assert_eq!(rows, json!(14));
    let failures = until(
        &client,
        "failed rows marked",
        "document.querySelectorAll('#log-table td.bad').length",
    )
    .await;
    assert!(failures.as_u64().unwrap() >= 2);
    std::fs::write(
        screenshot_path("dashboard-logs.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client
        .find(Locator::Id("export"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let file = downloads.path().join("doubler-predictions.csv");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no download in {}",
            downloads.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Chromium renames the file into place once complete; give it a moment to settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = read_csv(std::fs::File::open(&file).unwrap()).unwrap();
    let logged = log
        .query(&PredictionQuery::new("doubler").page(0, 100))
        .await
        .unwrap();
    let csv_ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let log_ids: Vec<&str> = logged
        .records
        .iter()
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(
        csv_ids, log_ids,
        "the download holds every logged prediction, oldest first"
    );
    assert_eq!(rows.iter().filter(|r| r.status == 422).count(), 2);

    client.close().await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_triggers_with_their_state_and_alerts() {
    use serving::{CallbackTrigger, Comparison, Error, Severity, TriggerRule};
    use std::sync::Arc;

    let observability = Observability::new();
    let endpoint = doubler_endpoint(&observability);
    let low = TriggerRule::new("low confidence", "confidence", Comparison::LessThan, 0.5, 1)
        .with_severity(Severity::Warning)
        .with_cooldown_secs(3600);
    let lifecycle = endpoint.lifecycle().clone();
    lifecycle
        .add_trigger(Arc::new(CallbackTrigger::new(low, |_| Ok(()))))
        .unwrap();
    let broken = TriggerRule::new("broken pager", "confidence", Comparison::LessThan, 0.5, 1)
        .with_severity(Severity::Critical);
    lifecycle
        .add_trigger(Arc::new(CallbackTrigger::new(broken, |_| {
            Err(Error::Action {
                action: "pager".into(),
                source: "the pager is offline".into(),
            })
        })))
        .unwrap();
    let running = Running::start(service(&observability, vec![endpoint])).await;
    // Confidence 1/(1+x) is below 0.5 for x above 1.
    running.predict("doubler", json!([5])).await;

    let driver = Driver::start().await;
    let (profile, downloads) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client = browser(&driver, profile.path(), downloads.path()).await;
    client
        .goto(&format!(
            "{}/dashboard?view=triggers#endpoint=doubler&token={TOKEN}",
            running.base
        ))
        .await
        .unwrap();
    let rows = until(
        &client,
        "trigger rows",
        "document.querySelectorAll('#trigger-table tbody tr').length",
    )
    .await;
    assert_eq!(rows, json!(2));
    let fired = until(
        &client,
        "the working trigger shown fired",
        r#"document.querySelector('#trigger-table tr[data-state="fired"] td')?.textContent"#,
    )
    .await;
    assert_eq!(fired, json!("low confidence"));
    let sent = until(
        &client,
        "a sent alert",
        r#"document.querySelector('#alert-table tr[data-ok="true"]')?.textContent"#,
    )
    .await;
    assert!(sent.as_str().unwrap().contains("low confidence"), "{sent}");
    let failed = until(
        &client,
        "a failed alert with its error",
        r#"document.querySelector('#alert-table tr[data-ok="false"] td.bad')?.textContent"#,
    )
    .await;
    assert!(
        failed.as_str().unwrap().contains("the pager is offline"),
        "{failed}"
    );
    let condition = client
        .execute(
            "return document.querySelector('#trigger-table tbody td.json').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        condition,
        json!("confidence < 0.5 · 1 event per 1 s · cooldown 3600 s")
    );
    std::fs::write(
        screenshot_path("dashboard-triggers.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.close().await.unwrap();
    running.stop().await;
}
