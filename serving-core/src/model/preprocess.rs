//! Preprocess: a predictor whose output feeds another.

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::context::Context;
use crate::model::input::Input;
use crate::model::predictor::{Capabilities, Predictor};

/// `predict(preprocess(input))`: the preprocess output becomes the predictor's input, with the
/// same positional-argument rule (a JSON array is spread over the arguments).
///
/// Built with [`PredictorExt::with_preprocess`](crate::PredictorExt::with_preprocess).
#[derive(Debug, Clone)]
pub struct Preprocessed<Pre, P> {
    preprocess: Pre,
    predictor: P,
}

impl<Pre, P> Preprocessed<Pre, P> {
    /// Chains `preprocess` before `predictor`.
    pub fn new(preprocess: Pre, predictor: P) -> Self {
        Preprocessed {
            preprocess,
            predictor,
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<Pre: Predictor, P: Predictor> Predictor for Preprocessed<Pre, P> {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        let prepared = self.preprocess.predict(input, ctx).await?;
        self.predictor.predict(Input::Json(prepared), ctx).await
    }

    /// Always awaited: once the preprocess step has taken the input, a predictor that cannot
    /// answer at once would have nothing to hand back.
    fn predict_now(
        &self,
        input: Input,
        _ctx: &Context,
    ) -> std::result::Result<Result<Value>, Input> {
        Err(input)
    }

    fn capabilities(&self) -> Capabilities {
        self.predictor.capabilities()
    }

    /// Preprocesses the batch (through the preprocess step's own `predict_batch`), then sends
    /// the inputs that preprocessed in one `predict_batch` to the predictor; an input whose
    /// preprocess failed keeps its error at its position.
    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        let size = inputs.len();
        let prepared = self.preprocess.predict_batch(inputs, ctx).await;
        if prepared.len() != size {
            return broken_batch("the preprocess step", prepared.len(), size);
        }
        let mut results: Vec<Option<Result<Value>>> = Vec::with_capacity(size);
        let mut ready = Vec::with_capacity(size);
        for item in prepared {
            match item {
                Ok(value) => {
                    ready.push(Input::Json(value));
                    results.push(None);
                }
                Err(error) => results.push(Some(Err(error))),
            }
        }
        let sent = ready.len();
        if sent == 0 {
            return results.into_iter().flatten().collect();
        }
        let mut predicted = self.predictor.predict_batch(ready, ctx).await;
        if predicted.len() != sent {
            predicted = broken_batch("the predictor", predicted.len(), sent);
        }
        let mut predicted = predicted.into_iter();
        results
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| predicted.next().expect("one result per sent input"))
            })
            .collect()
    }
}

/// One error per input, for a `predict_batch` that broke the contract (one result per input).
fn broken_batch(who: &str, got: usize, size: usize) -> Vec<Result<Value>> {
    (0..size)
        .map(|_| {
            Err(Error::from_predictor(format!(
                "{who}'s predict_batch returned {got} results for {size} inputs; \
                 every input of the batch failed"
            )))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::conformance::test_context;
    use crate::{Endpoint, ModelEndpoint, PredictRequest, PredictorExt, predictor_fn};

    /// Doubles numbers in one call per batch; remembers each batch's size and counts `predict`.
    #[derive(Debug, Default)]
    struct BatchDoubler {
        batches: Mutex<Vec<usize>>,
        singles: Mutex<usize>,
    }

    #[async_trait]
    impl Predictor for BatchDoubler {
        async fn predict(&self, input: Input, _: &Context) -> Result<Value> {
            *self.singles.lock().unwrap() += 1;
            double(&input)
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::default().with_batch()
        }

        async fn predict_batch(&self, inputs: Vec<Input>, _: &Context) -> Vec<Result<Value>> {
            self.batches.lock().unwrap().push(inputs.len());
            inputs.iter().map(double).collect()
        }
    }

    fn double(input: &Input) -> Result<Value> {
        match input {
            Input::Json(Value::Number(n)) => Ok(json!(n.as_f64().unwrap() * 2.0)),
            other => Err(Error::rejected(format!("not a number: {other:?}"))),
        }
    }

    /// Adds one; refuses negative numbers.
    fn plus_one() -> impl Predictor {
        predictor_fn(|x: f64| -> Result<f64> {
            if x < 0.0 {
                return Err(Error::rejected("negative"));
            }
            Ok(x + 1.0)
        })
    }

    #[tokio::test]
    async fn a_batch_reaches_the_model_as_one_batch() {
        let model = std::sync::Arc::new(BatchDoubler::default());
        let chained = std::sync::Arc::clone(&model).with_preprocess(plus_one());
        assert!(chained.capabilities().batch);
        let inputs = [json!(1), json!(-1), json!(2)].map(Input::Json).to_vec();
        let results = chained.predict_batch(inputs, &test_context()).await;
        assert_eq!(results.len(), 3, "one result per input");
        assert_eq!(results[0].as_ref().unwrap(), &json!(4.0));
        assert!(
            matches!(results[1], Err(Error::Rejected { .. })),
            "a failed preprocess fails its own item only: {:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().unwrap(), &json!(6.0));
        assert_eq!(
            *model.singles.lock().unwrap(),
            0,
            "never one input at a time"
        );
        assert_eq!(
            *model.batches.lock().unwrap(),
            [2],
            "the inputs that preprocessed went in one predict_batch"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batching_endpoint_with_a_preprocess_step_batches() {
        let model = std::sync::Arc::new(BatchDoubler::default());
        let endpoint = ModelEndpoint::builder("doubler", std::sync::Arc::clone(&model))
            .preprocess("plus_one", plus_one())
            .batching(crate::BatchConfig::new(8, Duration::from_millis(50)))
            .build()
            .unwrap();
        let answers = futures::future::join_all(
            (0..8).map(|i| endpoint.predict(PredictRequest::new(json!(i)))),
        )
        .await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap().output, json!((i as f64 + 1.0) * 2.0));
        }
        assert_eq!(
            *model.singles.lock().unwrap(),
            0,
            "never one input at a time"
        );
        assert_eq!(model.batches.lock().unwrap().iter().sum::<usize>(), 8);
    }
}
