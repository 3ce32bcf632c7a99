//! What a model is: the [`Predictor`](crate::Predictor) trait and its wrappers, functions as
//! predictors, inputs, the request context, batching and the blocking pool.

pub(crate) mod batching;
pub(crate) mod context;
pub(crate) mod function;
pub(crate) mod input;
pub(crate) mod pool;
pub(crate) mod predictor;
pub(crate) mod preprocess;
pub(crate) mod signature;
