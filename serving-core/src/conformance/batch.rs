//! The batch-forwarding suite: a batch-declaring predictor behind any wrapper is called with
//! whole batches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::test_context;
use crate::sync::Locked;
use crate::{
    BATCH_SIZE_METRIC, BatchConfig, Capabilities, Context, DynMetricSink, DynPredictor, Endpoint,
    InMemoryMetrics, Input, MetricHistory, ModelEndpoint, PredictRequest, Predictor, Result,
};

/// A predictor that declares [`Capabilities::batch`], answers every input with itself, and
/// counts how it was called: what [`batch_predictor`] puts behind a wrapper.
#[derive(Debug, Default)]
pub struct BatchProbe {
    batches: Mutex<Vec<usize>>,
    singles: AtomicUsize,
}

impl BatchProbe {
    /// The size of each `predict_batch` call so far, in call order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches.locked().clone()
    }

    /// How many times `predict` was called.
    pub fn singles(&self) -> usize {
        self.singles.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Predictor for BatchProbe {
    async fn predict(&self, input: Input, _: &Context) -> Result<Value> {
        self.singles.fetch_add(1, Ordering::Relaxed);
        Ok(input.to_json())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default().with_batch()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, _: &Context) -> Vec<Result<Value>> {
        self.batches.locked().push(inputs.len());
        // Let other requests arrive while this batch runs.
        tokio::task::yield_now().await;
        inputs.iter().map(|input| Ok(input.to_json())).collect()
    }
}

/// `wrap` forwards batches: a [`BatchProbe`] behind it still declares batch capability, and
/// gets exactly one `predict_batch` per batch and never a `predict`, both when the wrapper's
/// own `predict_batch` is called and when an endpoint's batching groups concurrent requests
/// (one `predict_batch` per batch the endpoint formed).
///
/// `wrap` must pass inputs and outputs through unchanged (a pointer, an identity preprocess
/// step, a batching layer); every input is a JSON array of two items. Needs a multi-threaded Tokio runtime.
pub async fn batch_predictor<W>(wrap: W)
where
    W: Fn(Arc<BatchProbe>) -> Arc<DynPredictor>,
{
    let probe = Arc::new(BatchProbe::default());
    let wrapped = wrap(Arc::clone(&probe));
    assert!(
        wrapped.capabilities().batch,
        "the wrapper declares its predictor's batch capability"
    );
    let ctx = test_context();
    for (batch, size) in [(0, 5), (1, 3)] {
        let inputs: Vec<Input> = (0..size).map(|i| Input::Json(json!([batch, i]))).collect();
        let results = wrapped.predict_batch(inputs, &ctx).await;
        let outputs: Vec<Value> = results
            .into_iter()
            .map(|r| r.expect("batch item succeeds"))
            .collect();
        let expected: Vec<Value> = (0..size).map(|i| json!([batch, i])).collect();
        assert_eq!(outputs, expected, "one result per input, in input order");
    }
    assert_eq!(
        probe.batches(),
        [5, 3],
        "exactly one predict_batch per batch, whole"
    );
    assert_eq!(probe.singles(), 0, "never one input at a time");

    let probe = Arc::new(BatchProbe::default());
    let metrics = Arc::new(InMemoryMetrics::new());
    let endpoint = ModelEndpoint::builder("batch-conformance", wrap(Arc::clone(&probe)))
        .batching(BatchConfig::new(8, Duration::from_millis(100)))
        .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
        .build()
        .expect("a batch-declaring predictor can be batched");
    let answers = futures::future::join_all(
        (0..16).map(|i| endpoint.predict(PredictRequest::new(json!(["request", i])))),
    )
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(
            answer.expect("batched predict succeeds").output,
            json!(["request", i])
        );
    }
    assert_eq!(
        probe.singles(),
        0,
        "never one input at a time when batching"
    );
    let mut called = probe.batches();
    let mut formed: Vec<usize> = metrics
        .samples(
            "batch-conformance",
            BATCH_SIZE_METRIC,
            SystemTime::UNIX_EPOCH,
        )
        .iter()
        .map(|s| s.value as usize)
        .collect();
    called.sort_unstable();
    formed.sort_unstable();
    assert_eq!(
        called, formed,
        "exactly one predict_batch per batch the endpoint formed"
    );
    assert_eq!(
        called.iter().sum::<usize>(),
        16,
        "every input predicted once"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batched, PredictorExt, Preprocessed, predictor_fn};

    fn identity() -> impl Predictor {
        predictor_fn(|input: Value| -> Result<Value> { Ok(input) })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bare_probe_and_pointers_forward_batches() {
        batch_predictor(|probe| probe).await;
        batch_predictor(|probe| Arc::new(Box::new(probe) as Box<DynPredictor>)).await;
        batch_predictor(|probe| Arc::new(probe as Arc<DynPredictor>)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_preprocess_step_forwards_batches() {
        batch_predictor(|probe| Arc::new(probe.with_preprocess(identity()))).await;
        batch_predictor(|probe| {
            Arc::new(Preprocessed::new(
                identity(),
                Preprocessed::new(identity(), probe),
            ))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batching_layer_forwards_batches() {
        batch_predictor(|probe| {
            Arc::new(Batched::new(
                probe,
                BatchConfig::new(4, Duration::from_millis(1)),
            ))
        })
        .await;
        batch_predictor(|probe| {
            let batched = Batched::new(
                Box::new(probe) as Box<DynPredictor>,
                BatchConfig::new(4, Duration::from_millis(1)),
            );
            Arc::new(batched.with_preprocess(identity()))
        })
        .await;
    }
}
