//! Shared helpers for the integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use serving::http::{TOKEN_HEADER, WebService};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The quickstart's iris model, built by the same code the example runs.
#[path = "../examples/models/iris.rs"]
pub mod iris;

/// The `digits` example's file-input model.
#[path = "../examples/models/digits.rs"]
pub mod digits;

/// A generous bound for anything a test waits on; the machine may be loaded.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A [`WebService`] serving on an ephemeral loopback port until stopped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Serves `service` on `127.0.0.1:0`.
    pub async fn start(service: WebService) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(service.serve_on(listener, async move {
            let _ = signal.await;
        }));
        TestServer {
            addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The prediction URL of `endpoint`.
    pub fn endpoint_url(&self, endpoint: &str) -> String {
        self.url(&format!("/api/v1/endpoints/{endpoint}"))
    }

    /// Signals shutdown without waiting for it.
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Signals shutdown and waits until the server has finished its requests and returned.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the server stops in time")
            .expect("the server task does not panic")
            .expect("the server returns without error");
    }
}

/// An HTTP client with a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

/// A prediction call as the original product's SDKs make it: JSON body, token header.
pub async fn post_json(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    post_raw(url, token, serde_json::to_vec(body).expect("JSON")).await
}

/// A POST of raw bytes labelled as JSON; the answer's status and JSON body.
pub async fn post_raw(url: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = client()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// The `error` message of an error body.
pub fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// The Python interpreter of the test tools that `scripts/test-setup` installs
/// (`scripts/requirements-test.txt`): `$SERVING_TEST_PYTHON`, else the set-up's default venv.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("SERVING_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            std::path::Path::new(&home).join(".cache/serving-components/python/current/bin/python")
        });
    assert!(
        python.exists(),
        "no Python test tools at {}: run scripts/test-setup first",
        python.display()
    );
    python
}
