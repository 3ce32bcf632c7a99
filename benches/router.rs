//! The request path without sockets: each router (bare axum, ours with and without the
//! prediction log) answers the same request through `tower::ServiceExt::oneshot` in a loop on
//! one thread. It isolates what our handler costs per request from the kernel's TCP work,
//! which dominates the `http` bench. Run with `cargo bench --bench router`.

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn main() {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The prediction log's writer runs on this runtime, as in a server.
    let _runtime = runtime.enter();
    let ours = |kind| {
        let (path, service, dir) = support::servers::our_service(kind);
        (path, service.router(), dir)
    };
    let (path, on, _on_dir) = ours("serving");
    let (_, off, _) = ours("serving-unlogged");
    let (_, pool, _pool_dir) = ours("serving-pool");
    let routers = [
        ("bare axum", "/predict", support::servers::bare_router()),
        ("serving, inline sum, observability on", path, on),
        ("serving, inline sum, observability off", path, off),
        ("serving, sum on the pool, observability on", path, pool),
    ];
    println!("request path without sockets: {rounds} requests each, one thread, best of 3");
    let mut bare = None;
    // BENCH_ONLY=<text> runs only the routers whose name contains it (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (name, path, router) in routers {
        if !name.contains(&only) {
            continue;
        }
        let best = (0..3)
            .map(|_| runtime.block_on(time(&router, path, rounds)))
            .min()
            .expect("three runs");
        let per_request = best.as_secs_f64() * 1e9 / f64::from(rounds);
        let ratio = bare.map_or(String::new(), |b: f64| {
            format!(" ({:.2}× bare)", per_request / b)
        });
        bare.get_or_insert(per_request);
        println!("  {name:<36} {per_request:>8.0} ns/request{ratio}");
    }
}

async fn time(router: &axum::Router, path: &str, rounds: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..rounds {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .header("cnvrg-api-key", support::TOKEN)
            .body(Body::from(support::BODY))
            .expect("valid request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        assert!(response.status().is_success());
        let body = response.into_body().collect().await.expect("body");
        std::hint::black_box(body);
    }
    started.elapsed()
}
