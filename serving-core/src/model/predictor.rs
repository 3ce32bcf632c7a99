//! The [`Predictor`] trait: the user's predict function.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::Result;
use crate::model::context::Context;
use crate::model::input::Input;
use crate::model::preprocess::Preprocessed;

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

    /// Answers `input` at once, on the calling thread, when this predictor can without
    /// awaiting anything (a [`predictor_fn`](crate::predictor_fn) that runs inline): the
    /// endpoint then makes no future for the request, which for a model that answers in a
    /// microsecond cost more than the model. `Err(input)` hands the input back, to be
    /// predicted with [`predict`](Predictor::predict); the default always does.
    ///
    /// It answers as `predict` would, with `ctx` as [`Context::current`] while it runs.
    fn predict_now(
        &self,
        input: Input,
        ctx: &Context,
    ) -> std::result::Result<Result<Value>, Input> {
        let _ = ctx;
        Err(input)
    }

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

/// The future every `Predictor` method returns once `async_trait` has boxed it.
type PredictorFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Forwards to the pointee, handing back its boxed future as it is: an `#[async_trait]`
/// forwarding impl would box a second future around it on every request.
macro_rules! forward_predictor {
    ($pointer:ident) => {
        #[deny(clippy::missing_trait_methods)]
        impl<P: Predictor + ?Sized> Predictor for $pointer<P> {
            fn predict<'a, 'b, 'f>(
                &'a self,
                input: Input,
                ctx: &'b Context,
            ) -> PredictorFuture<'f, Result<Value>>
            where
                'a: 'f,
                'b: 'f,
                Self: 'f,
            {
                (**self).predict(input, ctx)
            }

            fn predict_now(
                &self,
                input: Input,
                ctx: &Context,
            ) -> std::result::Result<Result<Value>, Input> {
                (**self).predict_now(input, ctx)
            }

            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            fn predict_batch<'a, 'b, 'f>(
                &'a self,
                inputs: Vec<Input>,
                ctx: &'b Context,
            ) -> PredictorFuture<'f, Vec<Result<Value>>>
            where
                'a: 'f,
                'b: 'f,
                Self: 'f,
            {
                (**self).predict_batch(inputs, ctx)
            }
        }
    };
}

forward_predictor!(Arc);
forward_predictor!(Box);

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
