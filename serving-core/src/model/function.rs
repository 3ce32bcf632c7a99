//! Plain functions and closures as predictors.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{BoxError, Error, Result};
use crate::model::context::Context;
use crate::model::input::Input;
use crate::model::predictor::Predictor;

/// Turns a function with typed arguments into a [`Predictor`].
///
/// Each argument deserializes from one positional argument of the input (the items of a JSON
/// array); a function of one argument receives the whole input, or the single item of a
/// one-item array. The function returns `Result<T, E>` with `T: Serialize`.
///
/// Where it runs adapts to how long it takes: it starts on the endpoint's bounded blocking
/// pool, so CPU-bound models never stall the async runtime, and moves onto the async thread
/// once it has answered [`ADAPTIVE_PROBE_CALLS`] calls in a row within [`ADAPTIVE_FAST`] (there
/// the hop to a pool thread and back costs more than the function). A call that then takes
/// longer than [`ADAPTIVE_SLOW`] sends it back to the pool, and it must prove itself over twice
/// as many calls before moving again. [`FnPredictor::inline`] and [`FnPredictor::on_pool`] fix
/// the place instead.
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
        placement: Placement::Adaptive(Arc::new(Adaptive::default())),
        _args: PhantomData,
    }
}

/// Consecutive calls within [`ADAPTIVE_FAST`] on the pool before a [`predictor_fn`] runs on the
/// async thread (doubled after each move back, up to a million).
pub const ADAPTIVE_PROBE_CALLS: u32 = 100;
/// The longest call that counts toward moving a [`predictor_fn`] onto the async thread.
pub const ADAPTIVE_FAST: Duration = Duration::from_micros(50);
/// A call on the async thread longer than this moves a [`predictor_fn`] back to the pool.
pub const ADAPTIVE_SLOW: Duration = Duration::from_micros(250);

/// Where a [`FnPredictor`] runs its function.
#[derive(Clone)]
enum Placement {
    Pool,
    Inline,
    Adaptive(Arc<Adaptive>),
}

/// What an adaptive predictor has learned of its function's speed; shared by its clones.
#[derive(Debug)]
struct Adaptive {
    inline: AtomicBool,
    /// Consecutive fast calls on the pool.
    fast_streak: AtomicU32,
    /// Fast calls needed before moving inline.
    needed: AtomicU32,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            inline: AtomicBool::new(false),
            fast_streak: AtomicU32::new(0),
            needed: AtomicU32::new(ADAPTIVE_PROBE_CALLS),
        }
    }
}

impl Adaptive {
    fn inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// A call on the pool took `took`.
    fn ran_on_pool(&self, took: Duration) {
        if took > ADAPTIVE_FAST {
            self.fast_streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.fast_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= self.needed.load(Ordering::Relaxed) {
            self.inline.store(true, Ordering::Relaxed);
        }
    }

    /// A call on the async thread took `took`.
    fn ran_inline(&self, took: Duration) {
        if took > ADAPTIVE_SLOW && self.inline.swap(false, Ordering::Relaxed) {
            self.fast_streak.store(0, Ordering::Relaxed);
            let needed = self.needed.load(Ordering::Relaxed);
            self.needed
                .store(needed.saturating_mul(2).min(1_000_000), Ordering::Relaxed);
        }
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
    placement: Placement,
    _args: PhantomData<fn(Args)>,
}

impl<F, Args> FnPredictor<F, Args> {
    /// Always runs the function on the async runtime's thread, from the first call.
    ///
    /// For functions that answer in microseconds (a small tree, a linear model), the hop to a
    /// pool thread and back costs more than the function itself. A function that can take
    /// longer (more than about 100 µs) must stay on the pool: run inline, it stalls every other
    /// request on its thread, and the endpoint's timeout cannot interrupt it.
    pub fn inline(mut self) -> Self {
        self.placement = Placement::Inline;
        self
    }

    /// Always runs the function on the blocking pool, however fast it is: for a function that
    /// is usually fast but can block (it waits on a lock, a file or the network).
    pub fn on_pool(mut self) -> Self {
        self.placement = Placement::Pool;
        self
    }

    /// Whether its calls run on the async thread now (for an adaptive one, what it has
    /// learned so far).
    pub fn runs_inline(&self) -> bool {
        match &self.placement {
            Placement::Pool => false,
            Placement::Inline => true,
            Placement::Adaptive(adaptive) => adaptive.inline(),
        }
    }
}

impl<F, Args> Clone for FnPredictor<F, Args> {
    fn clone(&self) -> Self {
        FnPredictor {
            function: Arc::clone(&self.function),
            placement: self.placement.clone(),
            _args: PhantomData,
        }
    }
}

impl<F, Args> fmt::Debug for FnPredictor<F, Args> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let placement = match &self.placement {
            Placement::Pool => "pool",
            Placement::Inline => "inline",
            Placement::Adaptive(adaptive) if adaptive.inline() => "adaptive, inline now",
            Placement::Adaptive(_) => "adaptive, on the pool now",
        };
        f.debug_tuple("FnPredictor")
            .field(&std::any::type_name::<F>())
            .field(&placement)
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
        // Inline, the endpoint has scoped the context to this task, so `log_metric` finds it.
        let input = match self.predict_now(input, ctx) {
            Ok(output) => return output,
            Err(input) => input,
        };
        let adaptive = match &self.placement {
            Placement::Adaptive(adaptive) => Some(adaptive),
            Placement::Pool | Placement::Inline => None,
        };
        let function = Arc::clone(&self.function);
        let (output, took) = ctx
            .run_blocking(move || {
                let started = Instant::now();
                let output = function.call(&input);
                Ok((output, started.elapsed()))
            })
            .await?;
        if let Some(adaptive) = adaptive {
            adaptive.ran_on_pool(took);
        }
        output
    }

    /// Calls the function at once when it runs inline (always, or adaptively once it has
    /// proved fast); hands the input back when it runs on the pool.
    fn predict_now(
        &self,
        input: Input,
        _ctx: &Context,
    ) -> std::result::Result<Result<Value>, Input> {
        match &self.placement {
            Placement::Inline => Ok(self.function.call(&input)),
            Placement::Adaptive(adaptive) if adaptive.inline() => {
                let started = Instant::now();
                let output = self.function.call(&input);
                adaptive.ran_inline(started.elapsed());
                Ok(output)
            }
            Placement::Adaptive(_) | Placement::Pool => Err(input),
        }
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
                let got = input.arg_count();
                let count = || Error::ArgumentCount { expected: $count, got };
                if got != $count {
                    return Err(count());
                }
                self($(input.arg($position).ok_or_else(count)?.parse::<$arg>($position)?),+)
                    .into_output()
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

    #[tokio::test]
    async fn adaptive_functions_move_inline_when_fast_and_back_when_slow() {
        use crate::{Endpoint, ModelEndpoint, PredictRequest};
        let sleep = predictor_fn(|micros: u64| -> Result<u64> {
            std::thread::sleep(Duration::from_micros(micros));
            Ok(micros)
        });
        let endpoint = ModelEndpoint::builder("sleeper", sleep.clone())
            .build()
            .unwrap();
        let call = |micros: u64| endpoint.predict(PredictRequest::new(json!(micros)));
        // Fast calls until it moves inline (a preempted call can break a streak): how many.
        let until_inline = || async {
            let mut calls = 0;
            while !sleep.runs_inline() && calls < 100 * ADAPTIVE_PROBE_CALLS {
                call(0).await.unwrap();
                calls += 1;
            }
            assert!(sleep.runs_inline(), "{sleep:?}");
            calls
        };
        // A slow call breaks the streak of fast ones.
        for _ in 0..ADAPTIVE_PROBE_CALLS - 1 {
            call(0).await.unwrap();
        }
        call(1_000).await.unwrap();
        assert!(!sleep.runs_inline());
        assert!(until_inline().await >= ADAPTIVE_PROBE_CALLS);
        // Inline, one slow call sends it back, and twice as many fast calls are needed.
        assert_eq!(call(1_000).await.unwrap().output, json!(1000));
        assert!(!sleep.runs_inline());
        for _ in 0..2 * ADAPTIVE_PROBE_CALLS - 1 {
            call(0).await.unwrap();
        }
        assert!(!sleep.runs_inline());
        until_inline().await;
        assert!(!sleep.clone().on_pool().runs_inline());
    }

    #[tokio::test]
    async fn metrics_logged_from_user_code_arrive_wherever_the_function_runs() {
        use crate::{
            Endpoint, InMemoryMetrics, MetricHistory as _, MetricSink, ModelEndpoint,
            PredictRequest,
        };
        let half = predictor_fn(|x: f64| -> Result<f64> {
            crate::log_metric("half", x / 2.0);
            Ok(x)
        });
        let metrics = Arc::new(InMemoryMetrics::new());
        let endpoint = ModelEndpoint::builder("halver", half.clone())
            .metric_sink(Arc::clone(&metrics) as Arc<dyn MetricSink>)
            .build()
            .unwrap();
        // Calls on the pool until it moves inline (a preempted call can delay that), then ten
        // inline.
        let mut calls = 0;
        let mut inline_calls = 0;
        while inline_calls < 10 && calls < 100 * ADAPTIVE_PROBE_CALLS {
            inline_calls += u32::from(half.runs_inline());
            endpoint
                .predict(PredictRequest::new(json!(calls)))
                .await
                .unwrap();
            calls += 1;
        }
        assert_eq!(inline_calls, 10, "{half:?}");
        let since = std::time::SystemTime::UNIX_EPOCH;
        let logged = metrics.samples("halver", "half", since);
        let values: Vec<f64> = logged.iter().map(|sample| sample.value).collect();
        let expected: Vec<f64> = (0..calls).map(|i| f64::from(i) / 2.0).collect();
        assert_eq!(values, expected);
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
