//! What one client can hold of the server, each against a real server on a loopback socket: the
//! header-read and idle timeouts, the connection cap, the head size cap, the drain deadline and
//! the admin routes' body limits.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serving::http::{Token, WebService, WebServiceConfig, shutdown_signal};
use serving::{Error, ModelEndpoint, Result, predictor_fn};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::PATIENCE;

const TOKEN: &str = "connections-test-token";
const ADMIN_TOKEN: &str = "connections-admin-token";
const SUM: &str = "/api/v1/endpoints/sum";

/// A web service with these server settings, serving until stopped.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(settings: &[(&str, &str)], endpoints: Vec<ModelEndpoint>) -> Running {
        let mut config = WebServiceConfig::default();
        for (key, value) in settings {
            config.set(key, value).unwrap();
        }
        let mut builder = WebService::builder()
            .config(config)
            .admin_token(Token::new(ADMIN_TOKEN));
        for endpoint in endpoints {
            builder = builder.endpoint_with_token(endpoint, Token::new(TOKEN));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(builder.build().unwrap().serve_on(listener, async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Starts the graceful shutdown and times it until `serve_on` returns.
    async fn shut_down(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("serve_on returns")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

fn sum() -> ModelEndpoint {
    let sum = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
    ModelEndpoint::builder("sum", sum).build().unwrap()
}

/// A prediction request for `sum`; `close` asks for the connection to close after it.
fn sum_request(close: bool) -> Vec<u8> {
    let body = r#"{"input_params": [1, 2]}"#;
    let connection = if close { "close" } else { "keep-alive" };
    format!(
        "POST {SUM} HTTP/1.1\r\nHost: test\r\nCnvrg-Api-Key: {TOKEN}\r\nConnection: {connection}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response (its head and `Content-Length` body) off a connection that stays open.
async fn read_one(stream: &mut TcpStream) -> (u16, Value) {
    let mut buffer = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            if buffer.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = serde_json::from_slice(&buffer[end + 4..end + 4 + length])
                    .unwrap_or(Value::Null);
                return (status, body);
            }
        }
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("the connection stays readable");
        assert!(read > 0, "closed before a whole answer: {buffer:?}");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Waits until the server closes `stream` (end of file or reset), skipping what it sends first;
/// how long that took.
async fn until_closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut chunk = [0; 4096];
    tokio::time::timeout(PATIENCE, async {
        while let Ok(read) = stream.read(&mut chunk).await {
            if read == 0 {
                break;
            }
        }
    })
    .await
    .expect("the server closes the connection");
    started.elapsed()
}

/// A good request on a new connection is answered.
async fn still_serves(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&sum_request(true)).await.unwrap();
    assert_eq!(
        read_one(&mut stream).await,
        (200, json!({"prediction": 3.0}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_closed_after_the_header_read_timeout() {
    let server = Running::start(&[("header_read_timeout", "1")], vec![sum()]).await;
    // Slowloris: half a head, then silence; and a client that connects and sends nothing.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(format!("POST {SUM} HTTP/1.1\r\nHost: test\r\nX-Slow: ").as_bytes())
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (stalled_for, silent_for) =
        tokio::join!(until_closed(&mut stalled), until_closed(&mut silent));
    for (case, held) in [("stalled head", stalled_for), ("silent", silent_for)] {
        assert!(
            held >= Duration::from_millis(900),
            "{case}: closed early, {held:?}"
        );
        assert!(held < Duration::from_secs(10), "{case}: held {held:?}");
    }
    still_serves(server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let settings = [("header_read_timeout", "1"), ("idle_timeout", "3")];
    let server = Running::start(&settings, vec![sum()]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&sum_request(false)).await.unwrap();
    assert_eq!(read_one(&mut stream).await.0, 200);
    // Idle for longer than the header-read timeout: the idle timeout applies, not that one.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stream.write_all(&sum_request(false)).await.unwrap();
    assert_eq!(read_one(&mut stream).await.0, 200);
    let idle = until_closed(&mut stream).await;
    assert!(
        idle >= Duration::from_millis(2_500),
        "closed early, {idle:?}"
    );
    assert!(idle < Duration::from_secs(15), "idle for {idle:?}");
    still_serves(server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_new_client_waits_for_a_free_slot() {
    let settings = [("max_connections", "2"), ("header_read_timeout", "60")];
    let server = Running::start(&settings, vec![sum()]).await;
    let held_first = TcpStream::connect(server.addr).await.unwrap();
    let _held_second = TcpStream::connect(server.addr).await.unwrap();
    // The listen queue is first in, first out: the two held connections have the two slots.
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&sum_request(true)).await.unwrap();
    let mut byte = [0; 1];
    let waited = tokio::time::timeout(Duration::from_secs(1), client.read(&mut byte)).await;
    assert!(waited.is_err(), "answered beyond the cap: {waited:?}");
    drop(held_first);
    assert_eq!(
        read_one(&mut client).await,
        (200, json!({"prediction": 3.0}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_client_is_served_while_more_connections_than_the_cap_are_held() {
    let settings = [("max_connections", "50"), ("header_read_timeout", "1")];
    let server = Running::start(&settings, vec![sum()]).await;
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    let client = crate::support::client();
    let answer = client
        .post(format!("http://{}{SUM}", server.addr))
        .header("Cnvrg-Api-Key", TOKEN)
        .json(&json!({"input_params": [1, 2]}))
        .send()
        .await
        .expect("the normal client gets an answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"prediction": 3.0})
    );
    assert!(started.elapsed() < PATIENCE);
    // The held connections, all of them in turn, were closed by the header-read timeout.
    for stream in &mut held {
        until_closed(stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_size_cap_are_refused_with_431() {
    let settings = [("max_header_bytes", "8192")];
    let server = Running::start(&settings, vec![sum()]).await;
    // A whole head just over the cap.
    let mut big = TcpStream::connect(server.addr).await.unwrap();
    let padding = "a".repeat(9_000);
    big.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: {padding}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_one(&mut big).await.0, 431);
    // Many unfinished 400 KB heads at once: each is refused once it passes the cap, long before
    // its 400 KB are read (the attack that took the server to 2 GB of memory).
    let heads = (0..200).map(|_| async move {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut head = format!("POST {SUM} HTTP/1.1\r\nHost: test\r\nX-Pad: ").into_bytes();
        head.resize(400 * 1024, b'a');
        // The server stops reading at the cap, so the write may fail or never finish.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&head)).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    for answer in futures::future::join_all(heads).await {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer:?}"
        );
    }
    still_serves(server.addr).await;
}

/// A predictor that holds its call until released (or the test's patience runs out).
fn held() -> (ModelEndpoint, std::sync::mpsc::Sender<()>) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let hold = predictor_fn(move |x: f64| -> Result<f64> {
        released
            .lock()
            .unwrap()
            .recv_timeout(PATIENCE)
            .map_err(Error::from_predictor)?;
        Ok(x)
    });
    (
        ModelEndpoint::builder("hold", hold).build().unwrap(),
        release,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_what_is_left_at_the_drain_deadline() {
    let (hold, release) = held();
    let settings = [
        ("drain_timeout", "2"),
        ("header_read_timeout", "60"),
        ("body_timeout", "60"),
    ];
    let server = Running::start(&settings, vec![sum(), hold]).await;
    // A stalled head, a stalled body, an idle kept-alive connection and a prediction that
    // does not finish: none of them may keep the server from exiting.
    let mut stalled_head = TcpStream::connect(server.addr).await.unwrap();
    stalled_head
        .write_all(format!("POST {SUM} HTTP/1.1\r\nHost: test\r\n").as_bytes())
        .await
        .unwrap();
    let mut stalled_body = TcpStream::connect(server.addr).await.unwrap();
    stalled_body
        .write_all(
            format!(
                "POST {SUM} HTTP/1.1\r\nHost: test\r\nCnvrg-Api-Key: {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(&sum_request(false)).await.unwrap();
    assert_eq!(read_one(&mut idle).await.0, 200);
    let mut in_flight = TcpStream::connect(server.addr).await.unwrap();
    let body = "[1]";
    in_flight
        .write_all(
            format!(
                "POST /api/v1/endpoints/hold HTTP/1.1\r\nHost: test\r\nCnvrg-Api-Key: {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let took = server.shut_down().await;
    assert!(
        took >= Duration::from_millis(1_800),
        "returned at {took:?}, before the deadline"
    );
    assert!(took < Duration::from_secs(10), "returned at {took:?}");
    for stream in [
        &mut stalled_head,
        &mut stalled_body,
        &mut idle,
        &mut in_flight,
    ] {
        until_closed(stream).await;
    }
    let _ = release.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_stalled_head() {
    let settings = [("drain_timeout", "30"), ("header_read_timeout", "60")];
    let server = Running::start(&settings, vec![sum()]).await;
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(format!("POST {SUM} HTTP/1.1\r\nHost: test\r\n").as_bytes())
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut second_head = TcpStream::connect(server.addr).await.unwrap();
    second_head.write_all(&sum_request(false)).await.unwrap();
    assert_eq!(read_one(&mut second_head).await.0, 200);
    second_head
        .write_all(format!("POST {SUM} HTTP/1.1\r\nHost: test\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = server.shut_down().await;
    // No request is in flight, so there is nothing to wait for.
    assert!(took < Duration::from_secs(5), "returned at {took:?}");
    for stream in [&mut stalled, &mut silent, &mut second_head] {
        until_closed(stream).await;
    }
}

/// Runs in a child process (see `sigterm_with_a_stalled_connection_*` below): serves until
/// SIGTERM, through `shutdown_signal`, as the examples do.
#[tokio::test]
#[ignore = "run in a child process by sigterm_with_a_stalled_connection_exits_within_the_drain_deadline"]
async fn serve_until_sigterm_child() {
    let mut config = WebServiceConfig::default();
    for (key, value) in [
        ("drain_timeout", "2"),
        ("header_read_timeout", "60"),
        ("body_timeout", "60"),
    ] {
        config.set(key, value).unwrap();
    }
    let service = WebService::builder()
        .config(config)
        .endpoint_with_token(sum(), Token::new(TOKEN))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    // The fallback only ends a child whose parent failed before sending SIGTERM.
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = tokio::time::sleep(Duration::from_secs(120)) => {}
        }
    };
    service.serve_on(listener, stop).await.unwrap();
    println!("stopped");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_connection_exits_within_the_drain_deadline() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "connections::serve_until_sigterm_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
        .expect("the child prints its address")
        .parse()
        .unwrap();
    still_serves(addr).await;
    // A stalled head and a request stalled in its body, in flight.
    let mut stalled_head = TcpStream::connect(addr).await.unwrap();
    stalled_head
        .write_all(format!("POST {SUM} HTTP/1.1\r\nHost: test\r\n").as_bytes())
        .await
        .unwrap();
    let mut stalled_body = TcpStream::connect(addr).await.unwrap();
    stalled_body
        .write_all(
            format!(
                "POST {SUM} HTTP/1.1\r\nHost: test\r\nCnvrg-Api-Key: {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        lines
            .map_while(std::result::Result::ok)
            .any(|line| line == "stopped"),
        "the child returned from serve_on"
    );
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    until_closed(&mut stalled_head).await;
    until_closed(&mut stalled_body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_get_the_prediction_routes_timeout_and_size_limit() {
    let small = predictor_fn(|a: f64, b: f64| -> Result<f64> { Ok(a + b) });
    let small = ModelEndpoint::builder("sum", small)
        .worker_setting("max_body_bytes", "64")
        .unwrap()
        .build()
        .unwrap();
    let server = Running::start(&[("body_timeout", "1")], vec![small]).await;
    let canary = "/api/v1/admin/endpoints/sum/canary";
    let admin_head = |length: usize, token: &str| {
        format!(
            "POST {canary} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };

    // A slow body: a few bytes, then silence past the 1 s body timeout.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(admin_head(20, ADMIN_TOKEN).as_bytes())
        .await
        .unwrap();
    slow.write_all(b"{\"per").await.unwrap();
    let started = Instant::now();
    let (status, body) = read_one(&mut slow).await;
    assert_eq!(status, 408, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A body over the endpoint's `max_body_bytes`, announced and sent.
    let mut large = TcpStream::connect(server.addr).await.unwrap();
    let padding = format!("{{\"percent\": 5{}}}", " ".repeat(100));
    large
        .write_all(format!("{}{padding}", admin_head(padding.len(), ADMIN_TOKEN)).as_bytes())
        .await
        .unwrap();
    let (status, body) = read_one(&mut large).await;
    assert_eq!(status, 413, "{body}");

    // The token is still checked before anything of the body is read.
    let mut unauthorized = TcpStream::connect(server.addr).await.unwrap();
    unauthorized
        .write_all(admin_head(20, "wrong").as_bytes())
        .await
        .unwrap();
    let (status, _) = tokio::time::timeout(Duration::from_millis(900), read_one(&mut unauthorized))
        .await
        .expect("401 before the body timeout");
    assert_eq!(status, 401);
    still_serves(server.addr).await;
}

/// Runs in a child process (see `out_of_file_descriptors_*` below): with a low open-file limit,
/// takes every descriptor left until told on stdin to give them back.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by out_of_file_descriptors_the_server_waits_without_spinning"]
async fn out_of_file_descriptors_child() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: hard,
        },
    )
    .unwrap();
    let service = WebService::builder()
        .endpoint_with_token(sum(), Token::new(TOKEN))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service.serve_on(listener, std::future::pending()));
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    println!("listening on {addr}");
    let read_line =
        || tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()));
    read_line().await.unwrap().unwrap();
    drop(hoard);
    // Serves until stdin closes (also when the parent fails).
    read_line().await.unwrap().unwrap();
}

/// CPU time (user and system) the process `pid` has used so far.
#[cfg(target_os = "linux")]
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux the tests run on.
    Duration::from_millis(ticks * 10)
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_waits_without_spinning() {
    use std::io::{BufRead as _, Write as _};
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "connections::out_of_file_descriptors_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
        .expect("the child prints its address")
        .parse()
        .unwrap();
    // The kernel completes the connection; the server's accept fails with EMFILE.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&sum_request(true)).await.unwrap();
    let before = cpu_time(pid);
    let mut byte = [0; 1];
    let waited = tokio::time::timeout(Duration::from_secs(2), client.read(&mut byte)).await;
    let used = cpu_time(pid) - before;
    assert!(waited.is_err(), "answered without a descriptor: {waited:?}");
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in 2 s: the accept loop spins"
    );

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "release").unwrap();
    assert_eq!(
        read_one(&mut client).await,
        (200, json!({"prediction": 3.0})),
        "served once descriptors are free"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
