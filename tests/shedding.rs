//! Load shedding: `concurrency` requests run, `queue_depth` more wait, the rest get 503 with
//! `Retry-After` at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serving::http::{Token, WebService};
use serving::{Context, Input, ModelEndpoint, Predictor, Result, Value, json};
use tokio::sync::Semaphore;

/// Holds every prediction until the test lets it go.
#[derive(Debug)]
struct Gate {
    started: AtomicUsize,
    open: Semaphore,
}

#[async_trait::async_trait]
impl Predictor for Gate {
    async fn predict(&self, input: Input, _ctx: &Context) -> Result<Value> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.open.acquire().await.expect("never closed").forget();
        Ok(input.to_json())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_concurrency_and_queue_requests_get_503_with_retry_after() {
    let gate = Arc::new(Gate {
        started: AtomicUsize::new(0),
        open: Semaphore::new(0),
    });
    let endpoint = ModelEndpoint::builder("gated", Arc::clone(&gate))
        .worker_setting("concurrency", "2")
        .unwrap()
        .worker_setting("queue_depth", "2")
        .unwrap()
        .build()
        .unwrap();
    let service = WebService::builder()
        .endpoint_with_token(endpoint, Token::new("t"))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/v1/endpoints/gated",
        listener.local_addr().unwrap()
    );
    tokio::spawn(service.serve_on(listener, std::future::pending()));
    let client = reqwest::Client::new();
    let call = |n: usize| {
        let request = client
            .post(&url)
            .header("Cnvrg-Api-Key", "t")
            .json(&json!({ "input_params": n }));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status().as_u16();
            (
                n,
                status,
                retry_after,
                response.json::<Value>().await.unwrap(),
            )
        })
    };

    let running: Vec<_> = (0..2).map(call).collect();
    while gate.started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Four more: two fit in the queue, two are shed, whatever order they arrive in.
    let mut more: Vec<_> = (2..6).map(call).collect();
    let mut shed = Vec::new();
    while shed.len() < 2 {
        let (finished, pending): (Vec<_>, Vec<_>) = more.into_iter().partition(|h| h.is_finished());
        more = pending;
        for handle in finished {
            shed.push(handle.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, status, retry_after, body) in &shed {
        assert_eq!(*status, 503, "{body}");
        assert!(retry_after.is_some(), "503 carries Retry-After");
        assert!(
            body["error"].as_str().unwrap().contains("overloaded"),
            "{body}"
        );
    }
    assert_eq!(
        gate.started.load(Ordering::SeqCst),
        2,
        "queued requests wait"
    );
    assert_eq!(more.len(), 2, "two requests wait in the queue");

    gate.open.add_permits(4);
    for handle in running.into_iter().chain(more) {
        let (n, status, _, body) = handle.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["prediction"],
            json!(n),
            "each caller gets its own answer"
        );
    }
    assert_eq!(gate.started.load(Ordering::SeqCst), 4);
}
