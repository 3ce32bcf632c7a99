//! The web router in parts: a stream or batch process serves operations and admin over HTTP
//! for its endpoint, without prediction routes.

use std::sync::Arc;

use serde_json::{Value, json};
use serving::http::{Observability, Token, WebService};
use serving::{Endpoint, ModelEndpoint, PredictRequest, Result, predictor_fn};
use tokio::net::TcpListener;

const ADMIN: &str = "routers-admin-token";

#[tokio::test]
async fn ops_and_admin_serve_without_prediction_routes() {
    let observability = Observability::new();
    let model = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
    let endpoint = Arc::new(
        observability
            .instrument(ModelEndpoint::builder("adder", model))
            .build()
            .unwrap(),
    );
    let service = WebService::builder()
        .endpoint(Arc::clone(&endpoint))
        .admin_token(Token::new(ADMIN))
        .observability(observability)
        .build()
        .unwrap();
    let router = WebService::with_fallbacks(service.ops_router().merge(service.admin_router()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let url = |path: &str| format!("http://{addr}{path}");

    // The process's own transport predicts through the endpoint; ops shows it.
    let prediction = endpoint
        .predict(PredictRequest::new(json!([1.0, 2.0])))
        .await
        .unwrap();
    assert_eq!(prediction.output, json!(3.0));

    let client = reqwest::Client::new();
    let health = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client.get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines().any(|line| line
            == r#"serving_requests_total{endpoint="adder",model_version="1",status="200"} 1"#),
        "{text}"
    );
    let status = client
        .get(url("/api/v1/admin/endpoints/adder/status"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    assert!(status.to_string().contains("\"1\""), "{status}");

    let token = service.token("adder").unwrap().expose().to_owned();
    for path in ["/api/v1/endpoints/adder", "/v2/models/adder/infer"] {
        let answer = client
            .post(url(path))
            .header("Cnvrg-Api-Key", &token)
            .json(&json!({"input_params": [1.0, 2.0]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body, json!({"error": "no such route"}), "{path}");
    }
    server.abort();
}

#[tokio::test]
async fn the_prediction_router_alone_predicts_and_has_no_ops_or_admin() {
    let model = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
    let endpoint = ModelEndpoint::builder("adder", model).build().unwrap();
    let service = WebService::builder()
        .endpoint(endpoint)
        .admin_token(Token::new(ADMIN))
        .build()
        .unwrap();
    let router = WebService::with_fallbacks(service.predict_router());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let url = |path: &str| format!("http://{addr}{path}");
    let client = reqwest::Client::new();
    let token = service.token("adder").unwrap().expose().to_owned();
    let answer = client
        .post(url("/api/v1/endpoints/adder"))
        .header("Cnvrg-Api-Key", &token)
        .json(&json!({"input_params": [1.0, 2.0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"prediction": 3.0})
    );
    for path in ["/healthz", "/metrics", "/api/v1/admin/endpoints"] {
        let answer = client
            .get(url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }
    server.abort();
}

#[test]
fn the_moved_items_keep_their_old_paths() {
    // Moved to the core; the web service's paths name the same items.
    let observability: serving::observe::Observability = serving::http::Observability::new();
    let _: &Arc<serving::observe::PrometheusMetrics> = observability.prometheus();
    let _: serving::http::PrometheusMetrics = serving::PrometheusMetrics::new();
    assert_eq!(
        serving::http::METRICS_CONTENT_TYPE,
        serving::observe::METRICS_CONTENT_TYPE
    );
    let _signal = serving::http::shutdown_signal();
    assert_eq!(
        serving::http::status_of(&serving::Error::Unauthorized),
        axum::http::StatusCode::UNAUTHORIZED
    );
}
