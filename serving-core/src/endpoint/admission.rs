//! Load shedding: at most `concurrency` predictions run at once, at most `queue_depth` more
//! wait their turn, and the rest are refused at once with [`Error::Overloaded`] (HTTP 503 with
//! `Retry-After`) instead of waiting without bound.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Admits requests to an endpoint, from the `concurrency` and `queue_depth` worker settings.
#[derive(Debug)]
pub(crate) struct Admission {
    running: Semaphore,
    waiting: AtomicUsize,
    queue_depth: usize,
}

impl Admission {
    /// Lets `concurrency` requests run and `queue_depth` more wait.
    pub(crate) fn new(concurrency: usize, queue_depth: usize) -> Self {
        Admission {
            running: Semaphore::new(concurrency),
            waiting: AtomicUsize::new(0),
            queue_depth,
        }
    }

    /// A running slot for one request of `endpoint`, held until the permit drops. A request that
    /// finds every slot taken waits in the queue (first come, first served) until `deadline`;
    /// when the queue is full too, it is refused at once.
    pub(crate) async fn admit(
        &self,
        endpoint: &str,
        deadline: Instant,
    ) -> Result<SemaphorePermit<'_>> {
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(permit);
        }
        let overloaded = || Error::Overloaded {
            endpoint: endpoint.to_owned(),
        };
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.queue_depth).then_some(waiting + 1)
            });
        if queued.is_err() {
            return Err(overloaded());
        }
        // Leaves the queue however the wait ends, the caller giving up included.
        let _in_queue = LeaveQueue(&self.waiting);
        match tokio::time::timeout_at(deadline, self.running.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(overloaded()),
            Err(_elapsed) => Err(overloaded()),
        }
    }

    /// A running slot now, if one is free.
    pub(crate) fn try_admit(&self) -> Option<SemaphorePermit<'_>> {
        self.running.try_acquire().ok()
    }

    /// Requests waiting now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn runs_then_queues_then_sheds() {
        let admission = Arc::new(Admission::new(2, 1));
        let first = admission.admit("e", later()).await.unwrap();
        let second = admission.admit("e", later()).await.unwrap();
        let waiter = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.admit("e", later()).await.map(drop) }
        });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let shed = admission.admit("e", later()).await.unwrap_err();
        assert!(matches!(shed, Error::Overloaded { .. }), "{shed}");
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(admission.waiting(), 0);
        drop(second);
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_at_its_deadline() {
        let admission = Admission::new(1, 4);
        let _running = admission.admit("e", later()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        let error = admission.admit("e", soon).await.unwrap_err();
        assert!(matches!(error, Error::Overloaded { .. }));
        assert_eq!(
            admission.waiting(),
            0,
            "a request that gave up left the queue"
        );
    }

    #[tokio::test]
    async fn no_queue_sheds_at_the_limit() {
        let admission = Admission::new(1, 0);
        let _running = admission.admit("e", later()).await.unwrap();
        assert!(admission.admit("e", later()).await.is_err());
    }
}
