//! Adaptive micro-batching: [`Batched`] groups concurrent predictions into calls of
//! [`Predictor::predict_batch`], for models whose batch call costs much less than one call per
//! input.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt as _;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::spec::EndpointSpec;
use crate::error::{Error, Result};
use crate::model::context::{Context, panic_message};
use crate::model::input::Input;
use crate::model::predictor::{Capabilities, DynPredictor, Predictor};
use crate::observe::metrics::{DynMetricSink, MetricSample};
use crate::sync::Locked;

/// The metric key under which each batch's size is recorded.
pub const BATCH_SIZE_METRIC: &str = "batch_size";

/// How [`Batched`] groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Most inputs in one batch.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, counted from its batch's first
    /// request.
    pub max_wait: Duration,
    /// Batches running at once; while all run, new requests queue and the next batches are
    /// fuller: batches grow with load.
    pub concurrent_batches: usize,
}

impl BatchConfig {
    /// Batches of at most `max_batch_size` inputs, waiting at most `max_wait`, one batch per
    /// core at once.
    pub fn new(max_batch_size: usize, max_wait: Duration) -> Self {
        BatchConfig {
            max_batch_size: max_batch_size.max(1),
            max_wait,
            concurrent_batches: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Sets how many batches may run at once (at least one).
    pub fn concurrent_batches(mut self, batches: usize) -> Self {
        self.concurrent_batches = batches.max(1);
        self
    }
}

/// A predictor whose concurrent `predict` calls are grouped into `predict_batch` calls of up
/// to `max_batch_size` inputs, or fewer when `max_wait` passes first.
///
/// Each caller gets exactly the result at its own input's position. A batch that panics, or
/// that returns a different number of results than it was given inputs, fails every caller in
/// it with a clear error. `predict_batch` runs with the [`Context`] of the batch's first
/// request. Each batch's size is recorded as the custom metric [`BATCH_SIZE_METRIC`] when a
/// metric sink is set ([`ModelEndpoint`](crate::ModelEndpoint) sets its own).
///
/// Endpoints enable it with the worker setting `max_batch_size` (or
/// [`ModelEndpointBuilder::batching`](crate::ModelEndpointBuilder::batching)), only for
/// predictors that declare [`Capabilities::batch`].
pub struct Batched<P> {
    inner: Arc<P>,
    config: BatchConfig,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    metrics: Option<BatchMetrics>,
}

#[derive(Clone)]
struct BatchMetrics {
    sink: Arc<DynMetricSink>,
    endpoint: String,
    model_version: String,
}

struct Job {
    input: Input,
    context: Context,
    reply: oneshot::Sender<Result<Value>>,
}

impl<P: Predictor> Batched<P> {
    /// Batches `inner` as `config` says.
    pub fn new(inner: P, config: BatchConfig) -> Self {
        Batched {
            inner: Arc::new(inner),
            config,
            queue: Mutex::new(None),
            metrics: None,
        }
    }

    /// Records each batch's size in `sink` as endpoint `endpoint`, model version
    /// `model_version`.
    pub fn metric_sink(
        mut self,
        sink: Arc<DynMetricSink>,
        endpoint: impl Into<String>,
        model_version: impl Into<String>,
    ) -> Self {
        self.metrics = Some(BatchMetrics {
            sink,
            endpoint: endpoint.into(),
            model_version: model_version.into(),
        });
        self
    }

    /// The queue to the batching task, started on first use (and again if the runtime it ran
    /// on has gone).
    fn queue(&self) -> mpsc::Sender<Job> {
        let mut queue = self.queue.locked();
        match &*queue {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let capacity = self.config.max_batch_size * self.config.concurrent_batches * 2;
                let (sender, jobs) = mpsc::channel(capacity.max(1));
                tokio::spawn(collect(
                    Arc::clone(&self.inner),
                    self.config,
                    jobs,
                    self.metrics.clone(),
                ));
                *queue = Some(sender.clone());
                sender
            }
        }
    }
}

impl<P> fmt::Debug for Batched<P>
where
    P: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<P: Predictor> Predictor for Batched<P> {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            context: ctx.clone(),
            reply,
        };
        let stopped = || Error::Panicked {
            message: "the batching task stopped".to_owned(),
        };
        self.queue().send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Always awaited: every input waits in the queue for its batch.
    fn predict_now(
        &self,
        input: Input,
        _ctx: &Context,
    ) -> std::result::Result<Result<Value>, Input> {
        Err(input)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        self.inner.predict_batch(inputs, ctx).await
    }
}

/// Forms batches from `jobs` and runs up to `concurrent_batches` of them at once.
async fn collect<P: Predictor>(
    inner: Arc<P>,
    config: BatchConfig,
    mut jobs: mpsc::Receiver<Job>,
    metrics: Option<BatchMetrics>,
) {
    let running = Arc::new(Semaphore::new(config.concurrent_batches));
    loop {
        // Wait for a free slot first: while every slot is busy, requests pile up in the queue
        // and the next batch takes them all at once.
        let Ok(slot) = Arc::clone(&running).acquire_owned().await else {
            return;
        };
        let Some(first) = jobs.recv().await else {
            return;
        };
        let deadline = Instant::now() + config.max_wait;
        let mut batch = Vec::with_capacity(config.max_batch_size);
        batch.push(first);
        while batch.len() < config.max_batch_size {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, jobs.recv()).await {
                        Ok(Some(job)) => batch.push(job),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let inner = Arc::clone(&inner);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            run_batch(&*inner, batch, metrics.as_ref()).await;
            drop(slot);
        });
    }
}

/// Runs one batch and answers each of its callers with the result at its position.
async fn run_batch<P: Predictor>(inner: &P, batch: Vec<Job>, metrics: Option<&BatchMetrics>) {
    let size = batch.len();
    if let Some(metrics) = metrics {
        metrics.sink.record_metric(&MetricSample {
            endpoint: metrics.endpoint.clone(),
            model_version: metrics.model_version.clone(),
            key: BATCH_SIZE_METRIC.to_owned(),
            value: size as f64,
            at: SystemTime::now(),
        });
    }
    let context = batch[0].context.clone();
    let (inputs, replies): (Vec<Input>, Vec<_>) =
        batch.into_iter().map(|job| (job.input, job.reply)).unzip();
    let outcome = AssertUnwindSafe(inner.predict_batch(inputs, &context))
        .catch_unwind()
        .await;
    match outcome {
        Ok(results) if results.len() == size => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up (timed out) no longer listens.
                let _ = reply.send(result);
            }
        }
        Ok(results) => {
            let got = results.len();
            for reply in replies {
                let _ = reply.send(Err(Error::from_predictor(format!(
                    "predict_batch returned {got} results for {size} inputs; \
                     every input of the batch failed"
                ))));
            }
        }
        Err(panic) => {
            let message = panic_message(&*panic);
            for reply in replies {
                let _ = reply.send(Err(Error::Panicked {
                    message: message.clone(),
                }));
            }
        }
    }
}

/// `predictor`, batched when the spec's worker settings ask for it (`max_batch_size` above 1),
/// recording batch sizes in `metrics`. Batching a predictor that declares no batch method is
/// an error, not a silent slowdown.
pub(crate) fn from_spec(
    predictor: Arc<DynPredictor>,
    spec: &EndpointSpec,
    metrics: &Arc<DynMetricSink>,
) -> Result<Arc<DynPredictor>> {
    let workers = &spec.server.workers;
    if workers.max_batch_size <= 1 {
        return Ok(predictor);
    }
    if !predictor.capabilities().batch {
        return Err(Error::InvalidSpec {
            reason: format!(
                "endpoint `{}` sets max_batch_size {} but its predictor declares no batch method \
                 (Capabilities::batch)",
                spec.name, workers.max_batch_size
            ),
        });
    }
    let config = BatchConfig::new(
        workers.max_batch_size,
        Duration::from_millis(workers.max_batch_wait_ms),
    )
    .concurrent_batches(workers.threads);
    let batched = Batched::new(predictor, config).metric_sink(
        Arc::clone(metrics),
        spec.name.clone(),
        spec.model.version.clone(),
    );
    Ok(Arc::new(batched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::{InMemoryMetrics, MetricHistory as _};
    use crate::{BlockingPool, ContextParts};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers `3x + 1` per input, in one call per batch, and remembers each batch's size.
    #[derive(Debug, Default)]
    struct Affine {
        sizes: Mutex<Vec<usize>>,
        drop_last: bool,
        panic: bool,
    }

    #[async_trait]
    impl Predictor for Affine {
        async fn predict(&self, _: Input, _: &Context) -> Result<Value> {
            panic!("a batched predictor is only called with batches")
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities { batch: true }
        }

        async fn predict_batch(&self, inputs: Vec<Input>, _: &Context) -> Vec<Result<Value>> {
            self.sizes.lock().unwrap().push(inputs.len());
            assert!(!self.panic, "model exploded");
            // Yield so that other requests arrive while this batch runs.
            tokio::task::yield_now().await;
            let mut out: Vec<_> = inputs
                .iter()
                .map(|input| match input {
                    Input::Json(Value::Number(n)) => Ok(Value::from(3 * n.as_i64().unwrap() + 1)),
                    other => Err(Error::rejected(format!("not a number: {other:?}"))),
                })
                .collect();
            if self.drop_last {
                out.pop();
            }
            out
        }
    }

    fn context(id: usize) -> Context {
        Context::new(ContextParts {
            request_id: id.to_string(),
            resources: crate::Resources::default(),
            endpoint: Arc::from("e"),
            model_version: Arc::from("1"),
            settings: Arc::new(BTreeMap::new()),
            pool: BlockingPool::new(1),
            sink: Arc::new(InMemoryMetrics::new()),
        })
    }

    async fn call_many(batched: &Arc<Batched<Arc<Affine>>>, n: usize) -> Vec<Result<Value>> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let batched = Arc::clone(batched);
                tokio::spawn(async move {
                    batched
                        .predict(Input::Json(Value::from(i as i64)), &context(i))
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer() {
        let model = Arc::new(Affine::default());
        let metrics = Arc::new(InMemoryMetrics::new());
        let config = BatchConfig::new(16, Duration::from_millis(20)).concurrent_batches(2);
        let batched = Arc::new(Batched::new(Arc::clone(&model), config).metric_sink(
            metrics.clone(),
            "e",
            "1",
        ));
        let results = call_many(&batched, 2000).await;
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(result.unwrap(), Value::from(3 * i as i64 + 1), "caller {i}");
        }
        let sizes = model.sizes.lock().unwrap().clone();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            2000,
            "every input predicted once"
        );
        assert!(sizes.iter().all(|&s| (1..=16).contains(&s)), "{sizes:?}");
        assert!(
            sizes.iter().any(|&s| s > 1),
            "concurrent requests were batched: {sizes:?}"
        );
        let recorded = metrics.samples("e", BATCH_SIZE_METRIC, SystemTime::UNIX_EPOCH);
        assert_eq!(
            recorded.len(),
            sizes.len(),
            "one batch_size sample per batch"
        );
    }

    #[tokio::test]
    async fn a_lone_request_waits_at_most_max_wait() {
        let model = Arc::new(Affine::default());
        let config = BatchConfig::new(64, Duration::from_millis(50));
        let batched = Batched::new(Arc::clone(&model), config);
        let started = std::time::Instant::now();
        let answer = batched
            .predict(Input::Json(Value::from(2)), &context(0))
            .await;
        assert_eq!(answer.unwrap(), Value::from(7));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(*model.sizes.lock().unwrap(), [1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_with_the_wrong_number_of_results_fails_all_its_callers() {
        let model = Arc::new(Affine {
            drop_last: true,
            ..Affine::default()
        });
        let batched = Arc::new(Batched::new(
            model,
            BatchConfig::new(8, Duration::from_millis(10)),
        ));
        for result in call_many(&batched, 40).await {
            let error = result.unwrap_err().to_string();
            assert!(error.contains("predict_batch returned"), "{error}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_fails_its_callers_and_batching_goes_on() {
        let calls = AtomicUsize::new(0);
        let model = Arc::new(Affine {
            panic: true,
            ..Affine::default()
        });
        let batched = Arc::new(Batched::new(model, BatchConfig::new(4, Duration::ZERO)));
        for result in call_many(&batched, 10).await {
            calls.fetch_add(1, Ordering::Relaxed);
            assert!(matches!(result, Err(Error::Panicked { .. })), "{result:?}");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_batch_from_their_settings_and_record_batch_sizes() {
        use crate::{Endpoint as _, ModelEndpoint, PredictRequest};
        let plain = crate::predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
        let refused = ModelEndpoint::builder("plain", plain)
            .worker_setting("max_batch_size", "8")
            .unwrap()
            .build()
            .unwrap_err();
        assert!(
            refused.to_string().contains("declares no batch method"),
            "{refused}"
        );

        let metrics = Arc::new(InMemoryMetrics::new());
        let endpoint = Arc::new(
            ModelEndpoint::builder("affine", Affine::default())
                .batching(BatchConfig::new(8, Duration::from_millis(20)))
                .metric_sink(metrics.clone())
                .build()
                .unwrap(),
        );
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let endpoint = Arc::clone(&endpoint);
                tokio::spawn(async move {
                    let answer = endpoint.predict(PredictRequest::new(Value::from(i))).await;
                    (i, answer.unwrap().output)
                })
            })
            .collect();
        for task in tasks {
            let (i, output) = task.await.unwrap();
            assert_eq!(output, Value::from(3 * i + 1));
        }
        let sizes = metrics.samples("affine", BATCH_SIZE_METRIC, SystemTime::UNIX_EPOCH);
        assert_eq!(sizes.iter().map(|s| s.value).sum::<f64>(), 64.0);
    }
}
