//! The web service end to end: a real server on an ephemeral loopback port, real HTTP calls.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use serving::http::{MODEL_VERSION_HEADER, REQUEST_ID_HEADER, TOKEN_HEADER, Token, WebService};
use serving::prelude::*;
use serving::{Bytes, InMemoryMetrics, MetricHistory as _};

use crate::support::{PATIENCE, TestServer, client, digits, error_of, iris, post_json, post_raw};

const TOKEN: &str = "test-token-5b0d3c1e9a7f4e21";

/// Serves `endpoints` behind [`TOKEN`].
async fn serve(endpoints: Vec<ModelEndpoint>) -> TestServer {
    let mut builder = WebService::builder();
    for endpoint in endpoints {
        builder = builder.endpoint_with_token(endpoint, Token::new(TOKEN));
    }
    TestServer::start(builder.build().expect("a valid service")).await
}

fn endpoint(name: &str, predictor: impl Predictor) -> ModelEndpoint {
    ModelEndpoint::builder(name, predictor)
        .build()
        .expect("a valid endpoint")
}

#[tokio::test]
async fn wrapped_and_bare_bodies_are_the_same_input() {
    let adder = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
    let echo = predictor_fn(|input: Value| -> Result<Value> { Ok(input) });
    let server = serve(vec![endpoint("adder", adder), endpoint("echo", echo)]).await;
    let adder = server.endpoint_url("adder");
    let echo = server.endpoint_url("echo");

    let wrapped = post_json(&adder, Some(TOKEN), &json!({"input_params": [1.5, 2]})).await;
    assert_eq!(wrapped, (200, json!({"prediction": 3.5})));
    assert_eq!(
        post_json(&adder, Some(TOKEN), &json!([1.5, 2])).await,
        wrapped
    );

    // An object without `input_params` is itself the input, as the original clients expect.
    let document = json!({"text": "hello", "lang": "en"});
    assert_eq!(
        post_json(&echo, Some(TOKEN), &json!({ "input_params": document })).await,
        (200, json!({ "prediction": document }))
    );
    assert_eq!(
        post_json(&echo, Some(TOKEN), &document).await,
        (200, json!({ "prediction": document }))
    );
    // A one-parameter function gets the whole array.
    assert_eq!(
        post_json(&echo, Some(TOKEN), &json!({"input_params": [1, 2]})).await,
        (200, json!({"prediction": [1, 2]}))
    );
    server.stop().await;
}

#[tokio::test]
async fn array_items_are_positional_arguments_in_order() {
    let repeat = predictor_fn(
        |word: String, times: usize, shout: bool| -> Result<String> {
            let word = if shout { word.to_uppercase() } else { word };
            Ok(vec![word; times].join(" "))
        },
    );
    let server = serve(vec![endpoint("repeat", repeat)]).await;
    let url = server.endpoint_url("repeat");

    assert_eq!(
        post_json(&url, Some(TOKEN), &json!({"input_params": ["hi", 3, true]})).await,
        (200, json!({"prediction": "HI HI HI"}))
    );
    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(["ok", 2, false])).await,
        (200, json!({"prediction": "ok ok"}))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_typed_argument_mismatch_is_422_naming_position_and_type() {
    let repeat =
        predictor_fn(|word: String, times: usize| -> Result<String> { Ok(word.repeat(times)) });
    let server = serve(vec![endpoint("repeat", repeat)]).await;
    let url = server.endpoint_url("repeat");

    let (status, body) = post_json(&url, Some(TOKEN), &json!(["hi", "three"])).await;
    assert_eq!(status, 422);
    assert!(
        error_of(&body).starts_with("argument 1 must be usize"),
        "{body}"
    );
    let (status, body) = post_json(&url, Some(TOKEN), &json!([7, 2])).await;
    assert_eq!(status, 422);
    assert!(
        error_of(&body).starts_with("argument 0 must be String"),
        "{body}"
    );
    let (status, body) = post_json(&url, Some(TOKEN), &json!(["hi"])).await;
    assert_eq!(
        (status, error_of(&body)),
        (422, "expected 2 argument(s), got 1")
    );
    server.stop().await;
}

#[tokio::test]
async fn the_preprocess_output_is_the_predictors_input() {
    let parse = predictor_fn(|csv: String| -> Result<Vec<f64>> {
        csv.split(',')
            .map(|item| {
                item.trim()
                    .parse::<f64>()
                    .map_err(|e| Error::rejected(format!("`{}` is not a number: {e}", item.trim())))
            })
            .collect()
    });
    let mean = predictor_fn(|a: f64, b: f64, c: f64| -> Result<f64> { Ok((a + b + c) / 3.0) });
    let endpoint = ModelEndpoint::builder("mean", mean)
        .preprocess("parse-csv", parse)
        .build()
        .unwrap();
    assert_eq!(endpoint.spec().preprocess.as_deref(), Some("parse-csv"));
    let server = serve(vec![endpoint]).await;
    let url = server.endpoint_url("mean");

    assert_eq!(
        post_json(&url, Some(TOKEN), &json!({"input_params": "1, 2, 6"})).await,
        (200, json!({"prediction": 3.0}))
    );
    // The preprocess refuses: the predictor never runs.
    let (status, body) = post_json(&url, Some(TOKEN), &json!("1, x, 6")).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            422,
            "input rejected: `x` is not a number: invalid float literal"
        )
    );
    // The preprocess output is spread over the predictor's arguments like any input.
    let (status, body) = post_json(&url, Some(TOKEN), &json!("1, 2")).await;
    assert_eq!(
        (status, error_of(&body)),
        (422, "expected 3 argument(s), got 2")
    );
    server.stop().await;
}

#[tokio::test]
async fn file_input_as_bytes_decodes_base64() {
    let describe = predictor_fn(|file: Bytes| -> Result<String> {
        Ok(format!(
            "{} bytes: {}",
            file.len(),
            String::from_utf8_lossy(&file)
        ))
    });
    let join = predictor_fn(|a: String, b: String| -> Result<String> { Ok(format!("{a}+{b}")) });
    let server = serve(vec![
        ModelEndpoint::builder("describe", describe)
            .files(FileInput::Bytes)
            .build()
            .unwrap(),
        ModelEndpoint::builder("join", join)
            .files(FileInput::Bytes)
            .build()
            .unwrap(),
    ])
    .await;
    let describe = server.endpoint_url("describe");
    let join = server.endpoint_url("join");

    let hello = STANDARD.encode("hello, file");
    assert_eq!(
        post_json(&describe, Some(TOKEN), &json!({ "input_params": hello })).await,
        (200, json!({"prediction": "11 bytes: hello, file"}))
    );
    // Data URLs and unpadded Base64 are accepted too.
    assert_eq!(
        post_json(&describe, Some(TOKEN), &json!("data:text/plain;base64,aGk")).await,
        (200, json!({"prediction": "2 bytes: hi"}))
    );
    // A list of files is one positional argument per file.
    assert_eq!(
        post_json(
            &join,
            Some(TOKEN),
            &json!({"input_params": ["aGk=", "eW8="]})
        )
        .await,
        (200, json!({"prediction": "hi+yo"}))
    );

    let (status, body) = post_json(&describe, Some(TOKEN), &json!("not base64!")).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).starts_with("invalid request: the file is not valid Base64"),
        "{body}"
    );
    let (status, body) = post_json(&join, Some(TOKEN), &json!(["aGk=", 42])).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            400,
            "invalid request: file 1 must be a Base64 string, got a number"
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn file_input_as_temp_files_removes_them_afterwards() {
    let read = predictor_fn(|path: String| -> Result<(String, String)> {
        let text = std::fs::read_to_string(&path).map_err(Error::from_predictor)?;
        Ok((path, text))
    });
    let read_two = predictor_fn(|a: String, b: String| -> Result<Vec<String>> {
        let text = |p: &str| std::fs::read_to_string(p).map_err(Error::from_predictor);
        Ok(vec![text(&a)?, text(&b)?, a, b])
    });
    let server = serve(vec![
        ModelEndpoint::builder("read", read)
            .files(FileInput::TempFile)
            .build()
            .unwrap(),
        ModelEndpoint::builder("read-two", read_two)
            .files(FileInput::TempFile)
            .build()
            .unwrap(),
    ])
    .await;

    let url = server.endpoint_url("read");
    let (status, body) = post_json(&url, Some(TOKEN), &json!(STANDARD.encode("on disk"))).await;
    assert_eq!(status, 200, "{body}");
    let path = body["prediction"][0].as_str().expect("the path").to_owned();
    assert_eq!(body["prediction"][1], "on disk");
    assert!(Path::new(&path).starts_with(std::env::temp_dir()), "{path}");
    assert!(!Path::new(&path).exists(), "{path} was not removed");

    let url = server.endpoint_url("read-two");
    let files = json!([STANDARD.encode("first"), STANDARD.encode("second")]);
    let (status, body) = post_json(&url, Some(TOKEN), &json!({ "input_params": files })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prediction"][0], "first");
    assert_eq!(body["prediction"][1], "second");
    for path in [&body["prediction"][2], &body["prediction"][3]] {
        let path = path.as_str().expect("a path");
        assert!(!Path::new(path).exists(), "{path} was not removed");
    }

    let (status, body) = post_json(&url, Some(TOKEN), &json!(["Zmlyc3Q=", "%%%"])).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).starts_with("invalid request: file 1 is not valid Base64"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn temp_files_outlive_a_timed_out_prediction() {
    let (read_tx, read_rx) = std::sync::mpsc::channel::<(String, std::io::Result<String>)>();
    let read_tx = Mutex::new(read_tx);
    let slow_reader = predictor_fn(move |path: String| -> Result<()> {
        std::thread::sleep(Duration::from_millis(1500));
        let text = std::fs::read_to_string(&path);
        let _ = read_tx.lock().unwrap().send((path, text));
        Ok(())
    });
    let server = serve(vec![
        ModelEndpoint::builder("slow-reader", slow_reader)
            .files(FileInput::TempFile)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    ])
    .await;
    let url = server.endpoint_url("slow-reader");
    let (status, body) = post_json(&url, Some(TOKEN), &json!(STANDARD.encode("still here"))).await;
    assert_eq!(status, 504, "{body}");
    let (path, text) = tokio::task::spawn_blocking(move || read_rx.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("the predictor finished reading");
    assert_eq!(
        text.expect("the file was still there after the timeout"),
        "still here"
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    while Path::new(&path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_400_and_other_media_types_415() {
    let echo = predictor_fn(|input: Value| -> Result<Value> { Ok(input) });
    let server = serve(vec![endpoint("echo", echo)]).await;
    let url = server.endpoint_url("echo");

    let (status, body) = post_raw(&url, Some(TOKEN), b"{\"input_params\": [1,".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).starts_with("invalid request: the request body is not valid JSON"),
        "{body}"
    );
    let (status, body) = post_raw(&url, Some(TOKEN), Vec::new()).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body).contains("the request body is empty"),
        "{body}"
    );

    let response = client()
        .post(&url)
        .header(TOKEN_HEADER, TOKEN)
        .header("Content-Type", "text/csv")
        .body("1,2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        "content type must be application/json, got `text/csv`"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let server = serve(vec![endpoint("double", double)]).await;
    let url = server.endpoint_url("double");
    let unauthorized = (401, json!({"error": "missing or invalid credentials"}));

    assert_eq!(post_json(&url, None, &json!(2)).await, unauthorized);
    assert_eq!(
        post_json(&url, Some("not-the-token"), &json!(2)).await,
        unauthorized
    );
    assert_eq!(
        post_json(&url, Some(&TOKEN[..TOKEN.len() - 1]), &json!(2)).await,
        unauthorized
    );
    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(2)).await,
        (200, json!({"prediction": 4.0}))
    );
    server.stop().await;
}

#[tokio::test]
async fn generated_tokens_are_per_endpoint() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let service = WebService::builder()
        .endpoint(endpoint("a", double.clone()))
        .endpoint(endpoint("b", double))
        .build()
        .unwrap();
    let token_a = service.token("a").unwrap().expose().to_owned();
    let token_b = service.token("b").unwrap().expose().to_owned();
    assert_ne!(token_a, token_b);
    assert_eq!(token_a.len(), 64);
    let server = TestServer::start(service).await;

    assert_eq!(
        post_json(&server.endpoint_url("a"), Some(&token_a), &json!(1)).await,
        (200, json!({"prediction": 2.0}))
    );
    assert_eq!(
        post_json(&server.endpoint_url("b"), Some(&token_a), &json!(1))
            .await
            .0,
        401
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_endpoints_and_routes_are_404() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let server = serve(vec![endpoint("double", double)]).await;

    assert_eq!(
        post_json(&server.endpoint_url("triple"), Some(TOKEN), &json!(1)).await,
        (404, json!({"error": "no endpoint named `triple`"}))
    );
    let response = client()
        .get(server.url("/api/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "no such route"})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let count = predictor_fn(|items: Vec<f64>| -> Result<usize> { Ok(items.len()) });
    let endpoint = ModelEndpoint::builder("count", count)
        .worker_setting("max_body_bytes", "64")
        .unwrap()
        .build()
        .unwrap();
    let server = serve(vec![endpoint]).await;
    let url = server.endpoint_url("count");

    assert_eq!(
        post_json(&url, Some(TOKEN), &json!([1, 2, 3])).await,
        (200, json!({"prediction": 3}))
    );
    let big = json!({ "input_params": vec![1; 100] });
    assert_eq!(
        post_json(&url, Some(TOKEN), &big).await,
        (
            413,
            json!({"error": "request body exceeds the limit of 64 bytes"})
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn input_the_predictor_rejects_is_422() {
    let sqrt = predictor_fn(|x: f64| -> Result<f64> {
        if x < 0.0 {
            return Err(Error::rejected(format!("{x} has no real square root")));
        }
        Ok(x.sqrt())
    });
    let server = serve(vec![endpoint("sqrt", sqrt)]).await;
    let url = server.endpoint_url("sqrt");

    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(-4)).await,
        (
            422,
            json!({"error": "input rejected: -4 has no real square root"})
        )
    );
    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(16)).await,
        (200, json!({"prediction": 4.0}))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_predictor_failure_is_an_opaque_500_naming_the_request() {
    let fail = predictor_fn(|_: Value| -> std::result::Result<f64, String> {
        Err("disk on fire at /secret/path".to_owned())
    });
    let server = serve(vec![endpoint("fail", fail)]).await;

    let response = client()
        .post(server.endpoint_url("fail"))
        .header(TOKEN_HEADER, TOKEN)
        .header(REQUEST_ID_HEADER, "req-42")
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        error_of(&body),
        "prediction failed; see the server log for request req-42"
    );
    server.stop().await;
}

/// A predictor written against the trait, to panic inside async code rather than on the
/// blocking pool.
#[derive(Debug)]
struct PanicsOnZero;

#[async_trait]
impl Predictor for PanicsOnZero {
    async fn predict(&self, input: Input, _ctx: &Context) -> Result<Value> {
        let Input::Json(value) = input else {
            return Err(Error::rejected("JSON only"));
        };
        if value == json!(0) {
            panic!("async predictor hit zero");
        }
        Ok(value)
    }
}

#[tokio::test]
async fn a_panicking_predictor_is_500_and_the_server_keeps_serving() {
    let divide = predictor_fn(|a: i64, b: i64| -> Result<i64> { Ok(a / b) });
    let server = serve(vec![
        endpoint("divide", divide),
        endpoint("async", PanicsOnZero),
    ])
    .await;
    let divide = server.endpoint_url("divide");
    let asynchronous = server.endpoint_url("async");

    for (url, poison, good, answer) in [
        (&divide, json!([1, 0]), json!([9, 3]), json!(3)),
        (&asynchronous, json!(0), json!(5), json!(5)),
    ] {
        let (status, body) = post_json(url, Some(TOKEN), &poison).await;
        assert_eq!(status, 500, "{body}");
        assert!(
            error_of(&body).starts_with("prediction failed; see the server log for request "),
            "{body}"
        );
        assert_eq!(
            post_json(url, Some(TOKEN), &good).await,
            (200, json!({ "prediction": answer }))
        );
    }
    let health = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_is_not_ready_is_503() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let double = Arc::new(endpoint("double", double));
    let service = WebService::builder()
        .endpoint_with_token(Arc::clone(&double), Token::new(TOKEN))
        .build()
        .unwrap();
    let server = TestServer::start(service).await;
    let url = server.endpoint_url("double");

    double.set_ready(false);
    let response = client()
        .post(&url)
        .header(TOKEN_HEADER, TOKEN)
        .json(&json!(2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "endpoint `double` is not ready"})
    );
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"error": "not ready: double"})
    );

    double.set_ready(true);
    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(2)).await,
        (200, json!({"prediction": 4.0}))
    );
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_predictor_hits_the_timeout_with_504() {
    let slow = predictor_fn(|seconds: f64| -> Result<f64> {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        Ok(seconds)
    });
    // Two threads: the timed-out call keeps its thread until it returns (see `BlockingPool`).
    let endpoint = ModelEndpoint::builder("slow", slow)
        .timeout(Duration::from_secs(1))
        .worker_setting("threads", "2")
        .unwrap()
        .build()
        .unwrap();
    let server = serve(vec![endpoint]).await;
    let url = server.endpoint_url("slow");

    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(2.5)).await,
        (504, json!({"error": "prediction timed out after 1s"}))
    );
    assert_eq!(
        post_json(&url, Some(TOKEN), &json!(0.0)).await,
        (200, json!({"prediction": 0.0}))
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let server = serve(vec![endpoint("double", double)]).await;

    let health = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_refuses_new_connections() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let hold = predictor_fn(move |x: f64| -> Result<f64> {
        let _ = started_tx.send(());
        release_rx
            .lock()
            .unwrap()
            .recv_timeout(PATIENCE)
            .map_err(Error::from_predictor)?;
        Ok(x + 1.0)
    });
    let mut server = serve(vec![endpoint("hold", hold)]).await;
    let url = server.endpoint_url("hold");
    let in_flight = tokio::spawn(async move { post_json(&url, Some(TOKEN), &json!(41)).await });
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the prediction starts")
        .expect("the predictor signals");

    server.signal_shutdown();
    // New connections are refused once the listener is closed, while the request still runs.
    let addr = server.addr;
    tokio::time::timeout(PATIENCE, async move {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listener closes after the shutdown signal");
    assert!(!in_flight.is_finished());

    release.send(()).unwrap();
    let answer = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the request in flight completes")
        .unwrap();
    assert_eq!(answer, (200, json!({"prediction": 42.0})));
    server.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_service_mounts_inside_a_users_axum_app() {
    let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
    let service = WebService::builder()
        .endpoint_with_token(endpoint("double", double), Token::new(TOKEN))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|| async { "hello from the app" }),
        )
        .nest("/ml", service.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(
        post_json(
            &format!("http://{addr}/ml/api/v1/endpoints/double"),
            Some(TOKEN),
            &json!({"input_params": 21})
        )
        .await,
        (200, json!({"prediction": 42.0}))
    );
    let hello = client()
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from the app");
    app.abort();
}

#[tokio::test]
async fn the_quickstart_iris_model_answers_with_the_species() {
    let model = iris::Iris::train().expect("the iris model trains");
    assert!(
        model.training_accuracy > 0.9,
        "training accuracy {}",
        model.training_accuracy
    );
    let server = serve(vec![model.endpoint("iris").build().unwrap()]).await;
    let url = server.endpoint_url("iris");

    // The first sample of each species in the dataset.
    for (measurements, species) in [
        (json!([5.1, 3.5, 1.4, 0.2]), "setosa"),
        (json!([7.0, 3.2, 4.7, 1.4]), "versicolor"),
        (json!([6.3, 3.3, 6.0, 2.5]), "virginica"),
    ] {
        let response = client()
            .post(&url)
            .header(TOKEN_HEADER, TOKEN)
            .json(&json!({ "input_params": measurements }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[MODEL_VERSION_HEADER], "1");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({ "prediction": species })
        );
    }
    // The preprocess refuses impossible measurements.
    let (status, body) = post_json(&url, Some(TOKEN), &json!([5.1, -3.5, 1.4, 0.2])).await;
    assert_eq!(status, 422);
    assert!(error_of(&body).contains("must be positive"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn the_digits_model_reads_base64_png_and_rejects_bad_images() {
    let model = digits::Digits::train().expect("the digits model trains");
    assert!(
        model.holdout_accuracy > 0.9,
        "held-out accuracy {}",
        model.holdout_accuracy
    );
    let digits = Arc::new(model.endpoint("digits").build().unwrap());
    let service = WebService::builder()
        .endpoint_with_token(Arc::clone(&digits), Token::new(TOKEN))
        .build()
        .unwrap();
    let server = TestServer::start(service).await;
    let url = server.endpoint_url("digits");

    // Held-out images (every fifth) the model never saw: nearly all must come back right.
    let since = SystemTime::now();
    let mut correct = 0;
    let held_out: Vec<usize> = (0..20).map(|i| i * 5 + 4).collect();
    for &index in &held_out {
        let (png, label) = model.sample_png(index);
        let (status, body) = post_json(
            &url,
            Some(TOKEN),
            &json!({ "input_params": STANDARD.encode(png) }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        correct += usize::from(body["prediction"] == json!(label));
    }
    assert!(correct >= 18, "{correct} of {} right", held_out.len());
    let confidences = digits
        .metric_history()
        .samples("digits", "confidence", since);
    assert_eq!(confidences.len(), held_out.len());
    assert!(confidences.iter().all(|s| s.value > 0.0 && s.value <= 1.0));

    let (status, body) = post_json(&url, Some(TOKEN), &json!(STANDARD.encode("plain text"))).await;
    assert_eq!(status, 422);
    assert!(
        error_of(&body).starts_with("input rejected: not a PNG image"),
        "{body}"
    );
    let small = digits::encode_png(&[255; 16], 4, 4);
    let (status, body) = post_json(&url, Some(TOKEN), &json!(STANDARD.encode(small))).await;
    assert_eq!(
        (status, error_of(&body)),
        (422, "input rejected: the image must be 8x8 pixels, got 4x4")
    );
    let (status, _) = post_json(&url, Some(TOKEN), &json!("iVBORw0KGgo=!")).await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn log_metric_inside_a_predictor_reaches_the_endpoints_metrics() {
    let double = predictor_fn(|x: f64| -> Result<f64> {
        log_metric("half", x / 2.0);
        log_metric("not-finite", f64::NAN);
        Ok(x * 2.0)
    });
    let metrics = Arc::new(InMemoryMetrics::new());
    let double = ModelEndpoint::builder("double", double)
        .model("doubler", "7")
        .metric_sink(metrics.clone())
        .build()
        .unwrap();
    let server = serve(vec![double]).await;
    let url = server.endpoint_url("double");
    let since = SystemTime::now();

    for x in [1.5, 4.0] {
        assert_eq!(
            post_json(&url, Some(TOKEN), &json!(x)).await,
            (200, json!({ "prediction": x * 2.0 }))
        );
    }
    let samples = metrics.samples("double", "half", since);
    let values: Vec<(f64, &str)> = samples
        .iter()
        .map(|s| (s.value, s.model_version.as_str()))
        .collect();
    assert_eq!(values, [(0.75, "7"), (2.0, "7")]);
    assert_eq!(metrics.samples("double", "not-finite", since), Vec::new());
    let statuses: Vec<u16> = metrics.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200]);
    server.stop().await;
}

/// Runs in a child process (see `tokens_never_appear_in_the_logs`), so that it owns the
/// global subscriber: a thread-local one misses events whose callsite interest another test
/// thread cached first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by tokens_never_appear_in_the_logs"]
async fn tokens_in_logs_child() {
    let Some(token_file) = std::env::var_os("SERVING_TOKENS_CHILD") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .init();
    let fail = predictor_fn(|x: f64| -> std::result::Result<f64, String> {
        if x < 0.0 {
            Err("negative".to_owned())
        } else {
            Ok(x)
        }
    });
    let generated = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
    let service = WebService::builder()
        .endpoint_with_token(endpoint("fail", fail), Token::new(TOKEN))
        .endpoint(endpoint("generated", generated))
        .build()
        .unwrap();
    let token = service.token("generated").unwrap().expose().to_owned();
    // Handed to the parent through a file: printing it would put it in the logs under test.
    std::fs::write(token_file, &token).unwrap();
    let server = TestServer::start(service).await;
    let fail = server.endpoint_url("fail");
    let generated = server.endpoint_url("generated");

    assert_eq!(post_json(&fail, Some(TOKEN), &json!(1)).await.0, 200);
    assert_eq!(post_json(&fail, Some(TOKEN), &json!(-1)).await.0, 500);
    assert_eq!(post_json(&fail, Some(TOKEN), &json!("x")).await.0, 422);
    assert_eq!(post_json(&fail, Some(WRONG_TOKEN), &json!(1)).await.0, 401);
    assert_eq!(post_json(&generated, Some(&token), &json!(1)).await.0, 200);
    assert_eq!(
        post_json(&generated, Some(WRONG_TOKEN), &json!(1)).await.0,
        401
    );
    server.stop().await;
}

const WRONG_TOKEN: &str = "wrong-token-9f8e7d6c5b4a";

#[test]
fn tokens_never_appear_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("generated-token");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "web_service::tokens_in_logs_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env("SERVING_TOKENS_CHILD", &token_file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "child failed:\n{text}");
    let generated = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(generated.len(), 64, "a generated token");
    assert!(text.contains("web service listening"), "{text}");
    assert!(text.contains("prediction failed"), "{text}");
    assert!(text.contains("prediction refused"), "{text}");
    for secret in [TOKEN, generated.as_str(), WRONG_TOKEN] {
        assert!(!text.contains(secret), "a token was logged:\n{text}");
    }
}
