//! Preprocess: a predictor whose output feeds another.

use async_trait::async_trait;
use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::input::Input;
use crate::predictor::{Capabilities, Predictor};

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
impl<Pre: Predictor, P: Predictor> Predictor for Preprocessed<Pre, P> {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        let prepared = self.preprocess.predict(input, ctx).await?;
        self.predictor.predict(Input::Json(prepared), ctx).await
    }

    fn capabilities(&self) -> Capabilities {
        self.predictor.capabilities()
    }
}
