//! Plain functions and closures as predictors.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::Context;
use crate::error::{BoxError, Error, Result};
use crate::input::Input;
use crate::predictor::Predictor;

/// Turns a function with typed arguments into a [`Predictor`].
///
/// Each argument deserializes from one positional argument of the input (the items of a JSON
/// array); a function of one argument receives the whole input, or the single item of a
/// one-item array. The function returns `Result<T, E>` with `T: Serialize`. It runs on the
/// endpoint's bounded blocking pool, so CPU-bound models never stall the async runtime.
///
/// ```
/// use serving_core::{predictor_fn, Result};
///
/// let iris = predictor_fn(|sepal_len: f64, sepal_w: f64, petal_len: f64, petal_w: f64| -> Result<String> {
///     let _ = (sepal_len, sepal_w, petal_w);
///     Ok(if petal_len < 2.5 { "setosa" } else { "versicolor" }.to_owned())
/// });
/// # let _ = iris;
/// ```
pub fn predictor_fn<F, Args>(function: F) -> FnPredictor<F, Args>
where
    F: PredictFn<Args>,
{
    FnPredictor {
        function: Arc::new(function),
        inline: false,
        _args: PhantomData,
    }
}

/// A function or closure that can be a predictor; see [`predictor_fn`].
///
/// Implemented for `Fn(A1, …, An) -> Result<T, E>` with up to eight arguments, each
/// `A: DeserializeOwned`.
pub trait PredictFn<Args>: Send + Sync + 'static {
    /// Calls the function with the input's arguments.
    fn call(&self, input: &Input) -> Result<Value>;
}

/// The predictor made by [`predictor_fn`].
pub struct FnPredictor<F, Args> {
    function: Arc<F>,
    inline: bool,
    _args: PhantomData<fn(Args)>,
}

impl<F, Args> FnPredictor<F, Args> {
    /// Runs the function on the async runtime's thread instead of the blocking pool.
    ///
    /// For functions that answer in microseconds (a small tree, a linear model), the hop to a
    /// pool thread and back costs more than the function itself. A function that can take
    /// longer (more than about 100 µs) must stay on the pool: run inline, it stalls every other
    /// request on its thread, and the endpoint's timeout cannot interrupt it.
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }
}

impl<F, Args> Clone for FnPredictor<F, Args> {
    fn clone(&self) -> Self {
        FnPredictor {
            function: Arc::clone(&self.function),
            inline: self.inline,
            _args: PhantomData,
        }
    }
}

impl<F, Args> fmt::Debug for FnPredictor<F, Args> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnPredictor")
            .field(&std::any::type_name::<F>())
            .field(&if self.inline { "inline" } else { "pool" })
            .finish()
    }
}

#[async_trait]
impl<F, Args> Predictor for FnPredictor<F, Args>
where
    F: PredictFn<Args>,
    Args: 'static,
{
    async fn predict(&self, input: Input, ctx: &Context) -> Result<Value> {
        if self.inline {
            // The endpoint scopes the context to this task, so `log_metric` still finds it.
            return self.function.call(&input);
        }
        let function = Arc::clone(&self.function);
        ctx.run_blocking(move || function.call(&input)).await
    }
}

/// The return value of a predict function: `Result<T, E>` with a serializable `T`.
pub trait IntoOutput {
    /// The JSON answer, or the function's error.
    fn into_output(self) -> Result<Value>;
}

impl<T, E> IntoOutput for std::result::Result<T, E>
where
    T: Serialize,
    E: Into<BoxError>,
{
    fn into_output(self) -> Result<Value> {
        let value = self.map_err(Error::from_predictor)?;
        serde_json::to_value(value).map_err(Error::from_predictor)
    }
}

impl<F, R> PredictFn<()> for F
where
    F: Fn() -> R + Send + Sync + 'static,
    R: IntoOutput,
{
    fn call(&self, _input: &Input) -> Result<Value> {
        self().into_output()
    }
}

impl<F, R, A> PredictFn<(A,)> for F
where
    F: Fn(A) -> R + Send + Sync + 'static,
    R: IntoOutput,
    A: DeserializeOwned,
{
    fn call(&self, input: &Input) -> Result<Value> {
        let whole = input.whole().map(|arg| arg.parse::<A>(0));
        let argument = match whole {
            Some(Ok(argument)) => argument,
            Some(Err(whole_error)) => match input.args().as_slice() {
                [only] if matches!(input, Input::Json(Value::Array(_))) => {
                    only.parse::<A>(0).map_err(|_| whole_error)?
                }
                _ => return Err(whole_error),
            },
            None => match input.args().as_slice() {
                [only] => only.parse::<A>(0)?,
                args => {
                    return Err(Error::ArgumentCount {
                        expected: 1,
                        got: args.len(),
                    });
                }
            },
        };
        self(argument).into_output()
    }
}

macro_rules! impl_predict_fn {
    ($count:literal; $($arg:ident $position:tt),+) => {
        impl<F, R, $($arg),+> PredictFn<($($arg,)+)> for F
        where
            F: Fn($($arg),+) -> R + Send + Sync + 'static,
            R: IntoOutput,
            $($arg: DeserializeOwned,)+
        {
            fn call(&self, input: &Input) -> Result<Value> {
                let args = input.args();
                if args.len() != $count {
                    return Err(Error::ArgumentCount { expected: $count, got: args.len() });
                }
                self($(args[$position].parse::<$arg>($position)?),+).into_output()
            }
        }
    };
}

impl_predict_fn!(2; A0 0, A1 1);
impl_predict_fn!(3; A0 0, A1 1, A2 2);
impl_predict_fn!(4; A0 0, A1 1, A2 2, A3 3);
impl_predict_fn!(5; A0 0, A1 1, A2 2, A3 3, A4 4);
impl_predict_fn!(6; A0 0, A1 1, A2 2, A3 3, A4 4, A5 5);
impl_predict_fn!(7; A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6);
impl_predict_fn!(8; A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call<Args>(f: impl PredictFn<Args>, input: Value) -> Result<Value> {
        f.call(&Input::Json(input))
    }

    #[test]
    fn typed_positional_arguments() {
        let sum = |a: f64, b: f64, c: f64, d: f64| -> Result<f64> { Ok(a + b + c + d) };
        assert_eq!(call(sum, json!([1, 2, 3, 4])).unwrap(), json!(10.0));
    }

    #[test]
    fn one_argument_takes_the_whole_input_or_the_single_item() {
        let len = |xs: Vec<f64>| -> Result<usize> { Ok(xs.len()) };
        assert_eq!(call(len, json!([1, 2, 3])).unwrap(), json!(3));
        let echo = |s: String| -> Result<String> { Ok(s) };
        assert_eq!(call(echo, json!("hi")).unwrap(), json!("hi"));
        assert_eq!(call(echo, json!(["hi"])).unwrap(), json!("hi"));
    }

    #[test]
    fn wrong_count_and_wrong_type_are_input_errors() {
        let two = |a: f64, b: f64| -> Result<f64> { Ok(a * b) };
        assert!(matches!(
            call(two, json!([1])),
            Err(Error::ArgumentCount {
                expected: 2,
                got: 1
            })
        ));
        let err = call(two, json!([1, "x"])).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    position: 1,
                    expected: "f64",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn user_errors_keep_their_kind() {
        let refuse = |_: Value| -> Result<()> { Err(Error::rejected("no")) };
        assert!(matches!(
            call(refuse, json!(1)),
            Err(Error::Rejected { .. })
        ));
        let fail = |_: Value| -> std::result::Result<(), String> { Err("boom".into()) };
        assert!(matches!(call(fail, json!(1)), Err(Error::Predictor { .. })));
    }
}
