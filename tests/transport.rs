//! The transport suite (`serving_core::conformance::transport`) against the web service, driven
//! over a socket: every request is a submission, every answer a delivery.

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serving::conformance::transport::{
    self, Delivered, Payload, Submission, TransportHarness, TransportKit,
};
use serving::http::{REQUEST_ID_HEADER, ROUTING_KEY_HEADER, TOKEN_HEADER, Token, WebService};
use serving::runner::OutputOrder;
use serving::{Value, json};

use crate::support::{TestServer, client};

const TOKEN: &str = "transport-token";

/// The web service serving the suite's endpoint on a loopback port.
struct Http {
    server: Option<TestServer>,
    url: String,
    client: reqwest::Client,
}

impl Http {
    async fn start(kit: &TransportKit) -> Http {
        let service = WebService::builder()
            .endpoint_with_token(kit.endpoint(), Token::new(TOKEN))
            .build()
            .expect("the service builds");
        let server = TestServer::start(service).await;
        Http {
            url: server.endpoint_url(TransportKit::ENDPOINT),
            server: Some(server),
            client: client(),
        }
    }

    /// One request per submission; `None` when the connection failed (the server had
    /// stopped taking requests).
    fn send(&self, submission: Submission) -> BoxFuture<'static, Option<Delivered>> {
        let body = match submission.payload {
            Payload::Json(value) => serde_json::to_vec(&json!({ "input_params": value })).unwrap(),
            Payload::Undecodable => b"{\"input_params\": [1,".to_vec(),
            other => panic!("a payload the suite does not send: {other:?}"),
        };
        let mut request = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header(TOKEN_HEADER, TOKEN)
            .body(body);
        if let Some(id) = &submission.request_id {
            request = request.header(REQUEST_ID_HEADER, id);
        }
        if let Some(key) = &submission.routing_key {
            request = request.header(ROUTING_KEY_HEADER, key);
        }
        Box::pin(async move {
            let response = request.send().await.ok()?;
            let request_id = response
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let ok = response.status().is_success();
            let body: Value = response.json().await.ok()?;
            Some(Delivered::new(
                request_id,
                ok.then(|| body["prediction"].clone()),
            ))
        })
    }
}

#[async_trait::async_trait]
impl TransportHarness for Http {
    fn order(&self) -> OutputOrder {
        // Each request is answered on its own, as it finishes.
        OutputOrder::Completion
    }

    async fn submit(&mut self, items: Vec<Submission>) -> Vec<Delivered> {
        let requests: FuturesUnordered<_> = items.into_iter().map(|s| self.send(s)).collect();
        requests
            .map(|delivered| delivered.expect("the server answers"))
            .collect()
            .await
    }

    async fn submit_then_shut_down(
        &mut self,
        items: Vec<Submission>,
        busy: BoxFuture<'static, ()>,
    ) -> Vec<Delivered> {
        let requests: Vec<_> = items
            .into_iter()
            .map(|s| tokio::spawn(self.send(s)))
            .collect();
        busy.await;
        self.server.take().expect("not yet stopped").stop().await;
        let mut delivered = Vec::new();
        for request in requests {
            delivered.extend(request.await.expect("the request task does not panic"));
        }
        delivered
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_service_conforms() {
    let kit = TransportKit::new();
    let mut http = Http::start(&kit).await;
    transport::transport(&mut http, &kit).await;
}
