//! Hostile requests: each gets a clear 4xx in our error shape, and the server answers a good
//! request right after.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use serving::http::{Token, WebService, WebServiceConfig};
use serving::{ModelEndpoint, Result, predictor_fn};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TOKEN: &str = "hostile-test-token";
const PATH: &str = "/api/v1/endpoints/sum";

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let sum = predictor_fn(|a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) });
    let endpoint = ModelEndpoint::builder("sum", sum).build().unwrap();
    let mut config = WebServiceConfig::default();
    config.set("body_timeout", "1").unwrap();
    let service = WebService::builder()
        .config(config)
        .endpoint_with_token(endpoint, Token::new(TOKEN))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(service.serve_on(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// A request head for `body_len` bytes (or chunked when `None`) with these extra headers.
fn head(body_len: Option<usize>, extra: &str) -> String {
    let length = body_len.map_or_else(
        || "Transfer-Encoding: chunked\r\n".to_owned(),
        |n| format!("Content-Length: {n}\r\n"),
    );
    format!(
        "POST {PATH} HTTP/1.1\r\nHost: test\r\nCnvrg-Api-Key: {TOKEN}\r\nConnection: close\r\n{length}{extra}\r\n"
    )
}

/// Sends `request` as raw bytes and reads the answer's status and JSON body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything; that is fine.
    let _ = stream.write_all(request).await;
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn json_request(body: &[u8], content_type: &str) -> Vec<u8> {
    let mut request = head(
        Some(body.len()),
        &format!("Content-Type: {content_type}\r\n"),
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A good request succeeds: the server is still responsive.
async fn still_serves(addr: SocketAddr, after: &str) {
    let request = json_request(br#"{"input_params": [1, 2, 3, 4.5]}"#, "application/json");
    let (status, body) = raw(addr, &request).await;
    assert_eq!(
        (status, &body["prediction"]),
        (200, &serde_json::json!(10.5)),
        "after {after}"
    );
}

fn assert_error(case: &str, (status, body): (u16, Value), expected: u16, mentions: &str) {
    assert_eq!(status, expected, "{case}: {body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: {body}"));
    assert!(
        message.to_lowercase().contains(mentions),
        "{case}: `{message}` should mention `{mentions}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let (addr, _stop) = start().await;
    let nested = "[".repeat(100_000);
    let long_number = format!(
        r#"{{"input_params": [{}, 1, 1, 1]}}"#,
        "9".repeat(1_000_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            json_request(br#"{"input_params": [1, 2"#, "application/json"),
            400,
            "not valid json",
        ),
        (
            "100k nested arrays",
            json_request(nested.as_bytes(), "application/json"),
            400,
            "recursion limit",
        ),
        (
            "number beyond f64",
            json_request(
                br#"{"input_params": [1e999999, 2, 3, 4]}"#,
                "application/json",
            ),
            400,
            "number out of range",
        ),
        (
            "a million-digit number",
            json_request(long_number.as_bytes(), "application/json"),
            400,
            "number out of range",
        ),
        (
            "wrong content type",
            json_request(br#"{"input_params": [1, 2, 3, 4]}"#, "text/plain"),
            415,
            "content type",
        ),
        (
            "invalid UTF-8",
            json_request(b"{\"input_params\": [\"\xff\xfe\"]}", "application/json"),
            400,
            "not valid json",
        ),
        (
            "empty body",
            json_request(b"", "application/json"),
            400,
            "empty",
        ),
        (
            "wrong shape",
            json_request(br#"{"input_params": {"a": 1}}"#, "application/json"),
            422,
            "argument",
        ),
    ];
    for (case, request, status, mentions) in cases {
        assert_error(case, raw(addr, &request).await, status, mentions);
        still_serves(addr, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_is_refused_without_being_read_whole() {
    let (addr, _stop) = start().await;
    let hundred_mb = 100 * 1024 * 1024;
    for (case, announced) in [("100 MB, announced", true), ("100 MB, chunked", false)] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = head(
            announced.then_some(hundred_mb),
            "Content-Type: application/json\r\n",
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let sender = tokio::spawn(async move {
            let chunk = vec![b' '; 1024 * 1024];
            for _ in 0..100 {
                let written = if announced {
                    writer.write_all(&chunk).await
                } else {
                    let size = format!("{:x}\r\n", chunk.len());
                    let framed = [size.as_bytes(), &chunk, b"\r\n"];
                    let mut result = Ok(());
                    for part in framed {
                        result = result.and(writer.write_all(part).await);
                    }
                    result
                };
                if written.is_err() {
                    return; // the server stopped reading, as it should
                }
            }
        });
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut response)).await;
        sender.abort();
        assert_error(case, parse_response(&response), 413, "exceeds the limit");
        still_serves(addr, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out_with_408() {
    let (addr, _stop) = start().await;
    let body = br#"{"input_params": [1, 2, 3, 4]}"#;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = head(Some(body.len()), "Content-Type: application/json\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // Slowloris: a few bytes, then silence past the 1 s body timeout.
    stream.write_all(&body[..5]).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_response(&mut stream).await;
    assert_error("slow body", answer, 408, "not received within 1s");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered at the timeout, not later"
    );
    still_serves(addr, "slow body").await;
}
