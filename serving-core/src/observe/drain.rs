//! [`Drain`]: the shutdown sequence every transport runs, so that stopping loses nothing.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::Observability;

/// The drain sequence of a transport: stop admitting work, finish the work in flight, then
/// close the sinks (the prediction log writes what it holds), so that no accepted request is
/// lost or left unrecorded on shutdown.
///
/// A transport runs its serving future under [`Drain::run`] and stops admitting once
/// [`Drain::stopping`] completes: the web service hands it to axum's graceful shutdown, a
/// stream stops polling its consumer, a batch stops reading rows. Work the transport does not
/// wait for itself is counted with [`Drain::track`], and waited for before the sinks close.
/// Clones share one sequence.
///
/// ```
/// use serving_core::observe::{Drain, Observability};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let drain = Drain::new();
/// let worker = {
///     let drain = drain.clone();
///     async move {
///         // A consumer loop: admit while not draining.
///         while let Some(_work) = drain.track() {
///             tokio::task::yield_now().await;
///         }
///         "stopped"
///     }
/// };
/// let observability = Observability::new();
/// let stopped = drain.run(async {}, worker, Some(&observability)).await;
/// assert_eq!(stopped, "stopped");
/// assert!(drain.is_draining());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
}

/// One unit of tracked work; the drain waits until every one is dropped.
#[derive(Debug)]
#[must_use = "the work counts as in flight only while this is held"]
pub struct Tracked {
    drain: Drain,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drain.inner.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Drain {
    /// A sequence not yet started.
    pub fn new() -> Self {
        Drain {
            inner: Arc::new(Inner {
                draining: watch::Sender::new(false),
                in_flight: watch::Sender::new(0),
            }),
        }
    }

    /// Stops admitting: [`Drain::stopping`] completes and [`Drain::track`] admits nothing
    /// more. Idempotent.
    pub fn begin(&self) {
        self.inner.draining.send_if_modified(|draining| {
            let started = !*draining;
            *draining = true;
            started
        });
    }

    /// Whether the drain has begun (readiness reports not ready from then on).
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Completes once the drain has begun: the transport's cue to stop admitting.
    pub async fn stopping(&self) {
        let mut draining = self.inner.draining.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Counts one unit of work as in flight until the guard drops; `None` once draining (the
    /// work must not start).
    pub fn track(&self) -> Option<Tracked> {
        // Counted before the check, so that `idle` cannot miss work admitted just before the
        // drain began.
        self.inner.in_flight.send_modify(|n| *n += 1);
        let tracked = Tracked {
            drain: self.clone(),
        };
        (!self.is_draining()).then_some(tracked)
    }

    /// How many tracked units of work are in flight.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Completes once no tracked work is in flight.
    pub async fn idle(&self) {
        let mut in_flight = self.inner.in_flight.subscribe();
        let _ = in_flight.wait_for(|n| *n == 0).await;
    }

    /// The whole sequence: runs `serving` until `shutdown` completes (or `serving` ends on its
    /// own), then begins the drain, lets `serving` finish what it admitted, waits for tracked
    /// work, and closes `observability`'s sinks ([`Observability::close`]). Returns what
    /// `serving` returned.
    pub async fn run<T>(
        &self,
        shutdown: impl Future<Output = ()>,
        serving: impl Future<Output = T>,
        observability: Option<&Observability>,
    ) -> T {
        let mut serving = std::pin::pin!(serving);
        let output = tokio::select! {
            output = &mut serving => output,
            () = shutdown => {
                self.begin();
                tracing::info!("shutting down: finishing work in flight");
                serving.await
            }
        };
        self.begin();
        self.idle().await;
        if let Some(observability) = observability {
            observability.close().await;
        }
        output
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stops_admitting_then_waits_for_work_in_flight() {
        let drain = Drain::new();
        let busy = drain.track().expect("admitted before the drain");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = {
            let drain = drain.clone();
            async move {
                drain.stopping().await;
                assert!(
                    drain.track().is_none(),
                    "nothing is admitted while draining"
                );
                7
            }
        };
        let run = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .run(
                        async move {
                            let _ = stopped.await;
                        },
                        serving,
                        None,
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_draining());
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(drain.is_draining());
        assert!(!run.is_finished(), "tracked work is still in flight");
        assert_eq!(drain.in_flight(), 1);
        drop(busy);
        assert_eq!(run.await.unwrap(), 7);
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn closes_the_prediction_log_last() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let log = crate::observe::prediction_log::PredictionLog::builder()
            .with_store(store)
            .build()
            .unwrap();
        let observability = Observability::new().with_prediction_log(log.clone());
        let endpoint = observability
            .instrument(crate::ModelEndpoint::builder(
                "e",
                crate::predictor_fn(|x: f64| -> crate::Result<f64> { Ok(x) }),
            ))
            .build()
            .unwrap();
        let drain = Drain::new();
        let serving = async {
            use crate::Endpoint as _;
            endpoint
                .predict(crate::PredictRequest::new(serde_json::json!(1.0)))
                .await
                .unwrap();
        };
        drain.run(async {}, serving, Some(&observability)).await;
        assert_eq!(log.stats().written, 1, "{:?}", log.stats());
    }
}
