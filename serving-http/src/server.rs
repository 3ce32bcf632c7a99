//! The connection loop behind [`WebService::serve_on`](crate::WebService::serve_on): hyper's
//! HTTP/1 server with bounds on what a client can hold: the time to send a request head, the
//! time a kept-alive connection may sit idle, the connections open at once, the size of a head,
//! and how long a graceful shutdown waits for the requests in flight.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::config::WebServiceConfig;

/// The bounds every connection, and the server as a whole, keep to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
    drain_timeout: Duration,
}

impl Limits {
    /// The limits `config` sets.
    pub(crate) fn of(config: &WebServiceConfig) -> Self {
        Limits {
            header_read_timeout: config.header_read_timeout(),
            idle_timeout: config.idle_timeout(),
            max_connections: config.max_connections.max(1),
            max_header_bytes: config.max_header_bytes.max(1),
            drain_timeout: config.drain_timeout(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets each
/// connection finish the request it is serving (idle ones close at once) for at most the drain
/// timeout, and closes the connections left.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let cap = connection_cap(limits.max_connections);
    // At the cap the loop stops accepting: a new client waits in the listen queue and is
    // served as soon as a connection closes (the timeouts close idle and stalled ones), where
    // accepting and dropping it would fail it at once, and accepting without a cap would take
    // the file descriptors everything else needs.
    let slots = Arc::new(Semaphore::new(cap));
    let (stopping, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    let mut pause = Pause::default();
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                pause.reset();
                stream
            }
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors (EMFILE, ENFILE) or memory: the connection stays in
                // the listen queue and accept would fail again at once, so wait rather than spin.
                let wait = pause.next();
                tracing::warn!(%error, pause_ms = wait.as_millis() as u64, "accept failed");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        while connections.try_join_next().is_some() {}
        let connection = serve_connection(stream, router.clone(), limits, stop.clone());
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            open,
            left = connections.len(),
            drain_timeout_secs = limits.drain_timeout.as_secs(),
            "drain deadline passed: closing the connections left"
        );
    }
    connections.shutdown().await;
}

/// One connection, served with the head, idle and size limits until it closes; once `stop`
/// turns true, it finishes the exchange in progress and closes.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> hyper::Result<()> {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let mut http = http1::Builder::new();
    http.timer(HeadTimer {
        activity: Arc::clone(&activity),
        idle_timeout: limits.idle_timeout,
        header_read_timeout: limits.header_read_timeout,
    })
    .header_read_timeout(limits.header_read_timeout)
    .max_header_size(limits.max_header_bytes);
    let counted = Arc::clone(&activity);
    let service = router.map_request(move |request: Request<Incoming>| {
        counted.requests.fetch_add(1, Ordering::Relaxed);
        request
    });
    let mut connection = pin!(http.serve_connection(io, TowerToHyperService::new(service)));
    tokio::select! {
        served = connection.as_mut() => return served,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    if activity.requests.load(Ordering::Relaxed) == 0 {
        // No whole request head yet, so nothing to finish. hyper would wait for the first head
        // (it only closes connections idle between requests), up to the header-read timeout.
        return Ok(());
    }
    // Closes at once between requests (a head begun then is dropped), else after the answer
    // in progress.
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// `max_connections`, or three quarters of the open-file limit when that is lower: the rest is
/// left for the listener, the prediction log, temporary input files and outgoing connections.
fn connection_cap(max_connections: usize) -> usize {
    let Some(files) = open_file_limit() else {
        return max_connections;
    };
    let room = usize::try_from(files / 4 * 3).unwrap_or(usize::MAX).max(1);
    if room < max_connections {
        tracing::info!(
            max_connections,
            open_file_limit = files,
            cap = room,
            "connection cap lowered below the open-file limit (raise `ulimit -n` for more)"
        );
        room
    } else {
        max_connections
    }
}

/// The soft limit on open files, `None` when unlimited or unknown.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Errors that concern only the connection being accepted (the next accept may well succeed).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// How long to wait after a failed accept: doubling from 10 ms to 1 s, back to the start once
/// an accept succeeds.
#[derive(Debug, Default)]
struct Pause {
    failures: u32,
}

impl Pause {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(10 << self.failures.min(7)).min(Duration::from_secs(1));
        self.failures = self.failures.saturating_add(1);
        wait
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What one connection has done so far, for its head timer and its shutdown.
#[derive(Debug, Default)]
struct Activity {
    /// Reads that brought bytes.
    reads: AtomicU64,
    /// Requests whose head was read whole (and handed to the router).
    requests: AtomicU64,
    /// Whether the first head's timer was armed already.
    armed: AtomicBool,
}

/// The connection's socket, counting the reads that bring bytes.
#[derive(Debug)]
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The timer of hyper's header-read timeout, which hyper arms whenever the connection waits for
/// a request head: on a new connection, and on a kept-alive one as soon as an answer is sent.
/// Armed again after an answer, it first waits `idle_timeout` for the next request's first byte
/// and only then gives the head `header_read_timeout`, so that an idle kept-alive connection is
/// not closed as early as a stalled head.
#[derive(Debug)]
struct HeadTimer {
    activity: Arc<Activity>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        if !self.activity.armed.swap(true, Ordering::Relaxed) {
            // The first head: timed from the connection's start, so a client that connects and
            // sends nothing is closed after the header-read timeout.
            return TokioTimer::new().sleep_until(deadline);
        }
        let idle = tokio::time::sleep(self.idle_timeout);
        Box::pin(HeadSleep {
            sleep: Box::pin(idle),
            activity: Arc::clone(&self.activity),
            reads_when_armed: self.activity.reads.load(Ordering::Relaxed),
            header_read_timeout: self.header_read_timeout,
            head_started: false,
        })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into()
    }
}

/// The idle wait, then the head's: hyper polls it right after each read that leaves the head
/// incomplete, so it sees the first byte when it comes.
struct HeadSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    activity: Arc<Activity>,
    reads_when_armed: u64,
    header_read_timeout: Duration,
    head_started: bool,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.head_started
            && this.activity.reads.load(Ordering::Relaxed) != this.reads_when_armed
        {
            this.head_started = true;
            let deadline = tokio::time::Instant::now() + this.header_read_timeout;
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_pauses_double_up_to_a_second_and_restart() {
        let mut pause = Pause::default();
        let waits: Vec<u128> = (0..10).map(|_| pause.next().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        pause.reset();
        assert_eq!(pause.next(), Duration::from_millis(10));
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        let cap = connection_cap(usize::MAX);
        match open_file_limit() {
            Some(files) => assert!((cap as u64) < files, "{cap} of {files}"),
            None => assert_eq!(cap, usize::MAX),
        }
        assert_eq!(connection_cap(1), 1);
    }

    #[test]
    fn only_per_connection_errors_are_skipped_without_a_pause() {
        assert!(is_connection_error(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        // EMFILE: the process is out of file descriptors.
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }
}
