//! The bounded pool that runs CPU-bound (synchronous) predictors off the async runtime.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::Result;

/// Runs blocking work on tokio's blocking threads, at most `threads` at a time, so a burst of
/// slow predictions queues instead of spawning unbounded threads.
#[derive(Debug, Clone)]
pub struct BlockingPool {
    permits: Arc<Semaphore>,
    threads: usize,
}

impl BlockingPool {
    /// A pool running at most `threads` closures at once (at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        BlockingPool {
            permits: Arc::new(Semaphore::new(threads)),
            threads,
        }
    }

    /// How many closures may run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on a blocking thread once a slot is free. A panic in it becomes
    /// [`Error::Panicked`](crate::Error::Panicked). The slot stays taken until `work`
    /// returns, even if the caller stops waiting (a timed-out prediction still occupies it).
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await?
    }
}

impl Default for BlockingPool {
    /// One thread per available core.
    fn default() -> Self {
        BlockingPool::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
