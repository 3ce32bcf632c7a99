//! Soak: our web service (the `http` bench's configuration: auth, metrics and prediction log
//! on) under saturation load for `SOAK_SECS` seconds (default 600), reported minute by minute
//! (`SOAK_REPORT_SECS`):
//! throughput, p99, errors and the server's resident memory. Run with `make soak` or
//! `cargo bench --bench soak`; exits non-zero when any request failed.

mod support;

use std::time::{Duration, Instant};

use support::{Server, describe_machine, drive, secs_from_env};

fn main() {
    if support::servers::serve_from_env() {
        return;
    }
    let total = secs_from_env("SOAK_SECS", 600);
    // One row per minute by default; SOAK_REPORT_SECS makes short verification runs readable.
    let minute = secs_from_env("SOAK_REPORT_SECS", 60).max(Duration::from_secs(1));
    println!(
        "soak: {}s of saturation load, a row every {}s",
        total.as_secs(),
        minute.as_secs()
    );
    println!("{}", describe_machine());
    println!(
        "our web service: auth on; {}",
        support::servers::OBSERVABILITY
    );
    let server = Server::start("serving");
    let (status, body) = server.request(support::BODY);
    assert_eq!(status, 200, "{body}");
    let idle_rss = server.rss_kib();
    println!(
        "server pid {}, idle RSS {:.1} MiB",
        server.pid(),
        idle_rss as f64 / 1024.0
    );
    println!();
    println!(
        "| {:>6} | {:>9} | {:>8} | {:>8} | {:>10} | {:>6} | {:>7} |",
        "slice", "requests", "req/s", "p99 µs", "CPU µs/req", "errors", "RSS MiB"
    );
    println!(
        "|{:->8}|{:->11}|{:->10}|{:->10}|{:->12}|{:->8}|{:->9}|",
        "", "", "", "", "", "", ""
    );
    let started = Instant::now();
    let (mut requests, mut errors) = (0, 0);
    let mut rss = Vec::new();
    let mut slice = 0;
    while started.elapsed() + Duration::from_secs(1) < total {
        slice += 1;
        let left = total.saturating_sub(started.elapsed());
        let load = drive(&server, left.min(minute));
        let now_rss = server.rss_kib();
        rss.push(now_rss);
        requests += load.requests;
        errors += load.errors;
        println!(
            "| {:>6} | {:>9} | {:>8.0} | {:>8.0} | {:>10.1} | {:>6} | {:>7.1} |",
            slice,
            load.requests,
            load.rps,
            load.p99_us,
            load.cpu_us,
            load.errors,
            now_rss as f64 / 1024.0
        );
    }
    let first = rss.first().copied().unwrap_or(idle_rss);
    let last = rss.last().copied().unwrap_or(idle_rss);
    println!();
    println!(
        "total: {requests} requests in {:.0}s, {errors} errors; RSS idle {:.1} MiB, after the first slice {:.1} MiB, at the end {:.1} MiB ({:+.1} MiB since the first slice)",
        started.elapsed().as_secs_f64(),
        idle_rss as f64 / 1024.0,
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        (last as f64 - first as f64) / 1024.0
    );
    // The prediction log is bounded: what it could not keep up with is dropped and counted.
    let written = server.metric("serving_prediction_log_written_total");
    let dropped = server.metric("serving_prediction_log_dropped_total");
    let queued = server.metric("serving_prediction_log_queue_length");
    println!(
        "prediction log: {} written, {} dropped, {} queued (from /metrics; written lags by up to one flush interval)",
        written.map_or("?".to_owned(), |n| format!("{n:.0}")),
        dropped.map_or("?".to_owned(), |n| format!("{n:.0}")),
        queued.map_or("?".to_owned(), |n| format!("{n:.0}")),
    );
    if errors > 0 {
        println!("FAILED: {errors} requests failed");
        std::process::exit(1);
    }
}
