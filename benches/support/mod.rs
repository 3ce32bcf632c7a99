//! What the HTTP benchmarks share: the servers under test (run in child processes pinned to one
//! core), the load generator, and the table they print.
//!
//! Load generator: Debian's `wrk` (`apt-get install wrk`; `scripts/bench-setup` does it). It
//! is written in C on epoll and spends the least CPU per request of the maintained options
//! (oha, goose, a hyper loop), which matters here: on this 2-core machine it gets one core and
//! the server the other, so a heavier client would cap both servers at its own rate and hide
//! the difference we measure. Its Lua script only sets the request once and prints the summary
//! at the end (`done`), so no Lua runs per request.

#![allow(dead_code)] // each bench binary uses a different part

pub mod servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The environment variable that makes a bench binary serve instead of measure.
pub const SERVE_ENV: &str = "SERVING_BENCH_SERVE";
/// The token every server under test requires.
pub const TOKEN: &str = "bench-token-0123456789abcdef";
/// The body every request carries: the iris wire format.
pub const BODY: &str = r#"{"input_params": [5.1, 3.5, 1.4, 0.2]}"#;
/// Keep-alive connections the load generator holds.
pub const CONNECTIONS: u32 = 64;

/// A server under test, running in a child process of this bench binary.
pub struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its loopback port.
    pub port: u16,
    /// The path its predictions are served at.
    pub path: String,
}

/// Whether server and load generator can be pinned to different cores.
pub fn can_pin() -> bool {
    cores() >= 2 && which("taskset")
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command for `program`, pinned to `core` when pinning is possible.
fn pinned(program: &Path, core: usize) -> Command {
    if can_pin() {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Server {
    /// Starts this binary again as server `kind` (see [`servers::serve_from_env`]), pinned to
    /// core 0, and waits until it listens.
    pub fn start(kind: &str) -> Server {
        let exe = std::env::current_exe().expect("the bench binary knows its path");
        let mut child = pinned(&exe, 0)
            .env(SERVE_ENV, kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the bench binary starts again as a server");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut port = None;
        let mut path = None;
        for line in lines.by_ref() {
            let line = line.expect("the server prints where it listens");
            if let Some(p) = line.strip_prefix("PORT ") {
                port = p.trim().parse().ok();
            } else if let Some(p) = line.strip_prefix("PATH ") {
                path = Some(p.trim().to_owned());
            } else if line == "READY" {
                break;
            }
        }
        // Keep draining the child's stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let stdin = child.stdin.take();
        Server {
            child,
            stdin,
            port: port.unwrap_or_else(|| panic!("server `{kind}` did not print its port")),
            path: path.unwrap_or_else(|| panic!("server `{kind}` did not print its path")),
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// `GET path` on the server; the body, or an empty string when it does not answer 200.
    pub fn get(&self, path: &str) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_owned(),
            _ => String::new(),
        }
    }

    /// The value of the Prometheus sample `name` (summed over its label sets) at `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics");
        let values: Vec<f64> = text
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Sends one request and returns the status line and body, to check the answer.
    pub fn request(&self, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("server listens");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout set");
        write!(
            stream,
            "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nCnvrg-Api-Key: {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            body.len()
        )
        .expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin asks the server to shut down gracefully; kill if it lingers.
        drop(self.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid` in KiB, 0 when unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time process `pid` has used so far (user + system, all threads), in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // Linux reports in USER_HZ, 100 per second on every mainstream architecture.
    ticks as f64 / 100.0
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Requests answered per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency, microseconds.
    pub p99_us: f64,
    /// Requests answered.
    pub requests: u64,
    /// Socket errors, timeouts and non-2xx answers.
    pub errors: u64,
    /// Server CPU time per answered request, microseconds: unlike req/s, it barely moves when
    /// other work shares the machine.
    pub cpu_us: f64,
}

/// Drives `server` with [`CONNECTIONS`] keep-alive connections for `duration` using `wrk`
/// pinned to core 1.
pub fn drive(server: &Server, duration: Duration) -> Load {
    drive_with(server, duration, CONNECTIONS, BODY)
}

/// [`drive`] with a chosen connection count and body.
pub fn drive_with(server: &Server, duration: Duration, connections: u32, body: &str) -> Load {
    let script = wrk_script(body);
    let url = format!("http://127.0.0.1:{}{}", server.port, server.path);
    let cpu_before = cpu_secs(server.pid());
    let output = pinned(Path::new("wrk"), 1)
        .args(["-t1", &format!("-c{connections}"), "--latency"])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script)
        .arg(&url)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("wrk did not run ({e}); run scripts/bench-setup"));
    let cpu = cpu_secs(server.pid()) - cpu_before;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("wrk printed no result:\n{text}"))
        .split_whitespace()
        .map(|f| f.parse().expect("wrk prints numbers"))
        .collect();
    let [requests, duration_us, p50_us, p99_us, errors] = fields[..] else {
        panic!("unexpected wrk result: {text}")
    };
    Load {
        rps: requests / (duration_us / 1e6),
        p50_us,
        p99_us,
        requests: requests as u64,
        errors: errors as u64,
        cpu_us: cpu * 1e6 / requests.max(1.0),
    }
}

fn wrk_script(body: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("serving-bench-{}-{n}.lua", std::process::id()));
    let script = format!(
        r#"wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Cnvrg-Api-Key"] = "{TOKEN}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %f %f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"#
    );
    std::fs::write(&path, script).expect("temp dir writable");
    path
}

/// The median of `values` (the middle one, or the mean of the two middle ones).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A duration from the environment variable `name` in seconds, or `default`.
pub fn secs_from_env(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

/// Says how the machine is shared between server and load generator.
pub fn describe_machine() -> String {
    let cores = cores();
    if can_pin() {
        format!(
            "{cores} cores: server pinned to core 0, load generator (wrk, 1 thread, {CONNECTIONS} keep-alive connections) to core 1. \
             The load generator shares the machine with the server{}.",
            if cores == 2 {
                " (2-core machine: nothing else is left for either)"
            } else {
                ""
            }
        )
    } else {
        format!(
            "{cores} core(s), no pinning (taskset missing or 1 core): the load generator shares the cores with the server."
        )
    }
}
