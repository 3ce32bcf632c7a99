//! The web-service benchmark: our `WebService` against a bare axum server doing the same work,
//! under the same load. Run with `cargo bench --bench http` (or `make bench`).
//!
//! `BENCH_SECS` (default 10) sets each run's length and `BENCH_RUNS` (default 3) how many
//! rounds run; a round runs every row once. The table shows medians, and each ratio is the
//! median over rounds of a run against the same round's bare run. `BENCH_ONLY=<text>` runs
//! only the rows whose name contains the text (and the bare row).

mod support;

use std::time::Duration;

use support::{Load, Server, describe_machine, drive, median, secs_from_env};

struct Row {
    name: &'static str,
    kind: &'static str,
    /// What a correct answer contains.
    expect: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        name: "bare axum (physical limit)",
        kind: "bare",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "bare axum + 2 µs of busy work per request",
        kind: "bare-2us",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "serving, sum: predictor_fn(..).inline()",
        kind: "serving",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "serving, sum: inline, observability off",
        kind: "serving-unlogged",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "serving, sum: predictor_fn (adaptive)",
        kind: "serving-adaptive",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "serving, sum: predictor_fn(..).on_pool()",
        kind: "serving-pool",
        expect: r#""prediction":10.2"#,
    },
    Row {
        name: "serving, quickstart iris (KNN + preprocess)",
        kind: "iris",
        expect: r#""prediction":"setosa""#,
    },
];

/// One row's runs, a run per round.
#[derive(Default)]
struct Measured {
    loads: Vec<Load>,
    idle_rss: u64,
    rss: u64,
    dropped: Vec<f64>,
}

fn main() {
    if support::servers::serve_from_env() {
        return;
    }
    let secs = secs_from_env("BENCH_SECS", 10);
    let rounds: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "serving web-service benchmark: {rounds} round(s) of every row, {}s per run, medians shown",
        secs.as_secs()
    );
    println!("{}", describe_machine());
    println!(
        "our web service: auth on; {}",
        support::servers::OBSERVABILITY
    );
    println!();

    // BENCH_ONLY=<text>: only the rows whose name contains it (the bare row always runs).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|row| row.kind == "bare" || row.name.contains(&only))
        .collect();
    // Rounds of every row, rather than all runs of one row and then the next: the machine's
    // slow and fast spells then fall on every row alike.
    let mut measured: Vec<Measured> = rows.iter().map(|_| Measured::default()).collect();
    for round in 1..=rounds {
        for (row, measured) in rows.iter().zip(&mut measured) {
            let server = Server::start(row.kind);
            measured.idle_rss = server.rss_kib();
            let (status, body) = server.request(support::BODY);
            assert!(
                status == 200 && body.contains(row.expect),
                "{}: wrong answer {status} {body}",
                row.name
            );
            // Warm up connections, allocator and caches before measuring.
            drive(&server, Duration::from_secs(1));
            let load = drive(&server, secs);
            measured.rss = server.rss_kib();
            // Share of this server's predictions its prediction log dropped (warm-up included).
            if let Some(n) = server.metric("serving_prediction_log_dropped_total") {
                let answered = server.metric("serving_requests_total").unwrap_or(f64::NAN);
                measured.dropped.push(100.0 * n / answered);
            }
            eprintln!(
                "  round {round}, {}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {:.1} CPU µs/req, {} errors",
                row.name, load.rps, load.p50_us, load.p99_us, load.cpu_us, load.errors
            );
            measured.loads.push(load);
        }
    }

    let header = [
        "req/s",
        "p50 µs",
        "p99 µs",
        "× req/s",
        "× p99",
        "CPU µs/req",
        "errors",
        "idle MiB",
        "RSS MiB",
        "log drop %",
    ];
    print!("| {:<44} |", "server");
    header.iter().for_each(|h| print!(" {h:>10} |"));
    println!();
    print!("|{:-<46}|", "");
    header.iter().for_each(|_| print!("{:-<12}|", ""));
    println!();
    let bare = measured[0].loads.clone();
    for (row, measured) in rows.iter().zip(&mut measured) {
        let loads = &measured.loads;
        let pick = |f: fn(&Load) -> f64| median(&mut loads.iter().map(f).collect::<Vec<_>>());
        // Each round's run against the same round's bare run.
        let ratio = |f: fn(&Load) -> f64| {
            let mut ratios: Vec<f64> = loads.iter().zip(&bare).map(|(l, b)| f(l) / f(b)).collect();
            median(&mut ratios)
        };
        let dropped = (!measured.dropped.is_empty()).then(|| median(&mut measured.dropped));
        let cells = [
            format!("{:.0}", pick(|l| l.rps)),
            format!("{:.0}", pick(|l| l.p50_us)),
            format!("{:.0}", pick(|l| l.p99_us)),
            format!("{:.2}", ratio(|l| l.rps)),
            format!("{:.2}", ratio(|l| l.p99_us)),
            format!("{:.1}", pick(|l| l.cpu_us)),
            loads.iter().map(|l| l.errors).sum::<u64>().to_string(),
            format!("{:.1}", measured.idle_rss as f64 / 1024.0),
            format!("{:.1}", measured.rss as f64 / 1024.0),
            dropped.map_or("-".to_owned(), |d| format!("{d:.1}")),
        ];
        print!("| {:<44} |", row.name);
        cells.iter().for_each(|c| print!(" {c:>10} |"));
        println!();
    }
    println!();
    println!(
        "goal: serving ≥ 0.85× bare req/s and ≤ 2× bare p99 (× columns: median over rounds of \
         each run against the same round's bare run)"
    );
    println!(
        "bare axum + 2 µs: what 2 µs more server work per request costs on this machine, to \
         read the other rows' distance from bare by"
    );
    println!("idle MiB: server RSS before any load; RSS MiB: after the last run's load");
    println!(
        "log drop %: predictions the prediction log dropped because its bounded queue was full \
         (counted at /metrics), by design rather than slowing requests"
    );
}
