//! The [`Predictor`] trait: the user's predict function.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::input::Input;
use crate::preprocess::Preprocessed;

/// A model's predict function.
///
/// Most users never implement this trait: [`predictor_fn`](crate::predictor_fn) turns a plain
/// function or closure with typed arguments into one. Implement it for a model that wants the
/// raw [`Input`], async work, or to declare [`Capabilities`].
///
/// # Contract
/// - `predict` answers one input with one JSON value, or an error. Errors say whose fault they
///   are: [`Error::Rejected`](crate::Error::Rejected) or
///   [`Error::InvalidArgument`](crate::Error::InvalidArgument) for input the model refuses,
///   anything else for a model failure.
/// - It may be called concurrently from many tasks; it must not block the async runtime
///   (CPU-bound work goes through [`Context::run_blocking`]).
/// - A panic is caught by the endpoint and served as a failure of that request only.
/// - `predict_batch`, when [`Capabilities::batch`] is declared, returns exactly one result per
///   input, in input order.
#[async_trait]
pub trait Predictor: Debug + Send + Sync + 'static {
    /// Predicts one input.
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value>;

    /// What this predictor can do beyond `predict`.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Predicts several inputs at once. The default predicts them one by one.
    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        let mut outputs = Vec::with_capacity(inputs.len());
        for input in inputs {
            outputs.push(self.predict(input, ctx).await);
        }
        outputs
    }
}

/// A type-erased predictor.
pub type DynPredictor = dyn Predictor;

/// Optional abilities of a [`Predictor`], declared rather than discovered by failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `predict_batch` is faster than one `predict` per input.
    pub batch: bool,
}

impl Capabilities {
    /// Declares that `predict_batch` is faster than one `predict` per input.
    pub fn with_batch(mut self) -> Self {
        self.batch = true;
        self
    }
}

#[async_trait]
impl<P: Predictor + ?Sized> Predictor for Arc<P> {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        (**self).predict(input, ctx).await
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        (**self).predict_batch(inputs, ctx).await
    }
}

#[async_trait]
impl<P: Predictor + ?Sized> Predictor for Box<P> {
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        (**self).predict(input, ctx).await
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    async fn predict_batch(&self, inputs: Vec<Input>, ctx: &Context) -> Vec<Result<Value>> {
        (**self).predict_batch(inputs, ctx).await
    }
}

/// Conveniences for every [`Predictor`].
///
/// Blanket-implemented; you MUST NOT implement this trait yourself.
pub trait PredictorExt: Predictor + Sized {
    /// Runs `preprocess` first and feeds its output to this predictor as its input.
    fn with_preprocess<Pre: Predictor>(self, preprocess: Pre) -> Preprocessed<Pre, Self> {
        Preprocessed::new(preprocess, self)
    }

    /// Erases the type, for storing in an endpoint.
    fn into_dyn(self) -> Arc<DynPredictor> {
        Arc::new(self)
    }
}

impl<P: Predictor> PredictorExt for P {}
