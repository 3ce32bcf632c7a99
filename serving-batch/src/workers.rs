//! [`Workers`]: the threads a vectorised run's chunks are predicted on, started with the run
//! and ended with it.
//!
//! A blocking-pool task per chunk had the runtime start threads now and then over a long run
//! (a chunk handed over while the thread that would take it was still finishing its last),
//! and each new thread brought its own allocator arena: memory that grew with the file's
//! length. A fixed set of threads keeps it where the first chunks put it.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use serving_core::{Error, Result};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A few threads taking jobs in the order they are given; they end when it is dropped.
#[derive(Debug)]
pub(crate) struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `threads` threads (at least one) named `name`.
    ///
    /// # Errors
    /// [`Error::Action`] when no thread can be started.
    pub(crate) fn new(threads: usize, name: &str) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting: one thread waits, the others
                        // work.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|error| Error::Action {
                    action: "start a batch worker thread".to_owned(),
                    source: Box::new(error),
                })?;
        }
        Ok(Workers { jobs })
    }

    /// Runs `job` on the next free thread; its answer arrives when it is done. A panic in it
    /// is [`Error::Panicked`].
    pub(crate) fn run<T, J>(&self, job: J) -> impl Future<Output = Result<T>> + use<T, J>
    where
        T: Send + 'static,
        J: FnOnce() -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let sent = self.jobs.send(Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
            let _ = answer.send(result);
        }));
        async move {
            if sent.is_err() {
                return Err(Error::Panicked {
                    message: "the batch worker threads have ended".to_owned(),
                });
            }
            answered.await.unwrap_or_else(|_| {
                Err(Error::Panicked {
                    message: "a batch worker thread ended before answering".to_owned(),
                })
            })
        }
    }
}

/// A predictor's panic as the row's (or chunk's) error.
pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> Error {
    Error::Panicked {
        message: panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_answer_in_any_order_and_a_panic_is_an_error() {
        let workers = Workers::new(2, "test-workers").unwrap();
        let answers: Vec<_> = (0..8_u64).map(|i| workers.run(move || Ok(i * i))).collect();
        let panics = workers.run(|| -> Result<u64> { panic!("boom") });
        let mut squares = Vec::new();
        for answer in answers {
            squares.push(answer.await.unwrap());
        }
        assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49]);
        let error = panics.await.unwrap_err();
        assert_eq!(
            error.to_string(),
            Error::Panicked {
                message: "boom".into()
            }
            .to_string()
        );
        // The threads outlive a panic.
        assert_eq!(workers.run(|| Ok(7)).await.unwrap(), 7);
    }
}
