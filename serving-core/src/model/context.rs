//! The per-request context through which user code logs metrics, parameters and messages.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::pool::BlockingPool;
use crate::observe::metrics::{DynMetricSink, MetricSample};
use crate::sync::Locked;

tokio::task_local! {
    static TASK_CONTEXT: Context;
}

thread_local! {
    static THREAD_CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// The context of one prediction: which endpoint and model version serve it, the endpoint's
/// settings, and where custom metrics go.
///
/// It is the counterpart of the original product's `Endpoint().log_metric(key, value)`: a
/// predictor receives it as an argument, and a plain function reaches it through
/// [`Context::current`] or the free function [`log_metric`](crate::log_metric).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    request_id: String,
    resources: Resources,
    model_version: Arc<str>,
    shared: Arc<EndpointContext>,
    logged: Mutex<Logged>,
}

/// What every request's context of one endpoint shares, behind one `Arc`: a request clones
/// one reference count rather than four (cores serving at once take turns at each count
/// they share).
#[derive(Debug)]
pub(crate) struct EndpointContext {
    pub(crate) endpoint: Arc<str>,
    pub(crate) settings: Arc<BTreeMap<String, String>>,
    pub(crate) pool: BlockingPool,
    pub(crate) sink: Arc<DynMetricSink>,
}

/// Values a request keeps alive until its predictor has finished, such as temporary files.
#[derive(Clone, Default)]
pub struct Resources(Vec<Arc<dyn std::any::Any + Send + Sync>>);

impl Resources {
    /// Adds one.
    pub fn push(&mut self, resource: impl std::any::Any + Send + Sync) {
        self.0.push(Arc::new(resource));
    }

    /// The first one of type `T`.
    pub fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.0.iter().find_map(|r| r.downcast_ref::<T>())
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resources({})", self.0.len())
    }
}

/// What user code attached to one prediction, kept for its prediction record.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Logged {
    /// Metrics in the order they were logged.
    pub metrics: Vec<(String, f64)>,
    /// Parameters (tags) in the order they were logged.
    pub params: Vec<(String, Value)>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("request_id", &self.inner.request_id)
            .field("endpoint", &self.inner.shared.endpoint)
            .field("model_version", &self.inner.model_version)
            .finish_non_exhaustive()
    }
}

/// Everything needed to make a [`Context`]; endpoints build one per request.
#[derive(Debug, Clone)]
pub struct ContextParts {
    /// The request's id.
    pub request_id: String,
    /// Dropped with the last clone of the context, once the predictor has finished.
    pub resources: Resources,
    /// The endpoint's name.
    pub endpoint: Arc<str>,
    /// The model version that serves this request.
    pub model_version: Arc<str>,
    /// The endpoint's KEY-VALUE settings.
    pub settings: Arc<BTreeMap<String, String>>,
    /// The pool that runs blocking predictors.
    pub pool: BlockingPool,
    /// Where custom metrics go.
    pub sink: Arc<DynMetricSink>,
}

impl Context {
    /// A context for one request.
    pub fn new(parts: ContextParts) -> Self {
        let ContextParts {
            request_id,
            resources,
            endpoint,
            model_version,
            settings,
            pool,
            sink,
        } = parts;
        let endpoint = Arc::new(EndpointContext {
            endpoint,
            settings,
            pool,
            sink,
        });
        Context::for_request(&endpoint, model_version, request_id, resources)
    }

    /// A context for one request of the endpoint whose shared parts are `endpoint`.
    pub(crate) fn for_request(
        endpoint: &Arc<EndpointContext>,
        model_version: Arc<str>,
        request_id: String,
        resources: Resources,
    ) -> Self {
        Context {
            inner: Arc::new(Inner {
                request_id,
                resources,
                model_version,
                shared: Arc::clone(endpoint),
                logged: Mutex::new(Logged::default()),
            }),
        }
    }

    /// The context of the prediction running on this task or thread, if any.
    pub fn current() -> Option<Context> {
        THREAD_CONTEXT
            .with(|slot| slot.borrow().clone())
            .or_else(|| TASK_CONTEXT.try_with(Context::clone).ok())
    }

    /// Runs `future` with this context as [`Context::current`].
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        TASK_CONTEXT.scope(self, future).await
    }

    /// Runs `work` on this thread with this context as [`Context::current`] (a predictor's
    /// [`predict_now`](crate::Predictor::predict_now)).
    pub(crate) fn enter<T>(&self, work: impl FnOnce() -> T) -> T {
        /// Puts back, even through a panic, the context the thread had before.
        struct Restore(Option<Context>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                THREAD_CONTEXT.with(|slot| *slot.borrow_mut() = previous);
            }
        }
        let previous = THREAD_CONTEXT.with(|slot| slot.replace(Some(self.clone())));
        let _restore = Restore(previous);
        work()
    }

    /// The request's id.
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// The request's resource of type `T`, if its transport gave one (a Kafka stream gives
    /// each message's key, headers and position this way).
    pub fn resource<T: std::any::Any>(&self) -> Option<&T> {
        self.inner.resources.get::<T>()
    }

    /// The endpoint's name.
    pub fn endpoint(&self) -> &str {
        &self.inner.shared.endpoint
    }

    /// The model version serving this request.
    pub fn model_version(&self) -> &str {
        &self.inner.model_version
    }

    /// A KEY-VALUE setting of the endpoint (the original product's "Flask config").
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.inner.shared.settings.get(key).map(String::as_str)
    }

    /// Logs a custom metric: it reaches the endpoint's [`MetricSink`](crate::MetricSink),
    /// the prediction record and the JSON logs. A value that is not finite is reported and
    /// dropped, never raised, as in the original product.
    pub fn log_metric(&self, key: &str, value: f64) {
        if !value.is_finite() {
            tracing::warn!(
                cnvrg_metric_name = key,
                "metric value {value} is not finite; dropped"
            );
            return;
        }
        tracing::info!(
            endpoint = %self.inner.shared.endpoint,
            model_version = %self.inner.model_version,
            request_id = %self.inner.request_id,
            cnvrg_metric_name = key,
            y = value,
            "metric"
        );
        self.inner.shared.sink.record_metric(&MetricSample {
            endpoint: self.inner.shared.endpoint.to_string(),
            model_version: self.inner.model_version.to_string(),
            key: key.to_owned(),
            value,
            at: SystemTime::now(),
        });
        self.logged().metrics.push((key.to_owned(), value));
    }

    /// Attaches a parameter (tag) to this prediction's record, like the original `log_param`.
    pub fn log_param(&self, tag: &str, value: impl Into<Value>) {
        let value = value.into();
        tracing::info!(
            endpoint = %self.inner.shared.endpoint,
            model_version = %self.inner.model_version,
            request_id = %self.inner.request_id,
            cnvrg_tag_name = tag,
            value = %value,
            "param"
        );
        self.logged().params.push((tag.to_owned(), value));
    }

    /// Writes a line to the endpoint's structured log, tagged with this request.
    pub fn log(&self, message: impl fmt::Display) {
        tracing::info!(
            endpoint = %self.inner.shared.endpoint,
            model_version = %self.inner.model_version,
            request_id = %self.inner.request_id,
            "{message}"
        );
    }

    /// What user code logged, and the request id back, once the prediction is over: the id
    /// moves out when no clone of the context outlived the prediction (the usual case), and
    /// is copied otherwise.
    pub(crate) fn into_logged_and_id(self) -> (Logged, String) {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => (
                inner
                    .logged
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                inner.request_id,
            ),
            Err(shared) => (
                std::mem::take(&mut *shared.logged.locked()),
                shared.request_id.clone(),
            ),
        }
    }

    /// What user code attached so far.
    pub fn take_logged(&self) -> Logged {
        std::mem::take(&mut *self.logged())
    }

    /// Runs a CPU-bound closure on the endpoint's bounded blocking pool, with this context as
    /// [`Context::current`] inside it. A panic becomes [`Error::Panicked`].
    pub async fn run_blocking<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let context = self.clone();
        self.inner
            .shared
            .pool
            .run(move || {
                THREAD_CONTEXT.with(|slot| *slot.borrow_mut() = Some(context));
                let _reset = ResetThreadContext;
                work()
            })
            .await
    }

    fn logged(&self) -> std::sync::MutexGuard<'_, Logged> {
        self.inner.logged.locked()
    }
}

struct ResetThreadContext;

impl Drop for ResetThreadContext {
    fn drop(&mut self) {
        THREAD_CONTEXT.with(|slot| slot.borrow_mut().take());
    }
}

/// Logs a custom metric on the prediction that is running, like the original product's
/// `Endpoint().log_metric(key, value)`. Outside a prediction it is reported and dropped.
pub fn log_metric(key: &str, value: f64) {
    match Context::current() {
        Some(context) => context.log_metric(key, value),
        None => tracing::warn!(
            cnvrg_metric_name = key,
            "log_metric called outside a prediction; dropped"
        ),
    }
}

/// Attaches a parameter to the prediction that is running; see [`Context::log_param`].
pub fn log_param(tag: &str, value: impl Into<Value>) {
    match Context::current() {
        Some(context) => context.log_param(tag, value),
        None => tracing::warn!(
            cnvrg_tag_name = tag,
            "log_param called outside a prediction; dropped"
        ),
    }
}

/// A panic payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

impl From<tokio::task::JoinError> for Error {
    fn from(error: tokio::task::JoinError) -> Self {
        if error.is_panic() {
            Error::Panicked {
                message: panic_message(&*error.into_panic()),
            }
        } else {
            Error::Panicked {
                message: "prediction task was cancelled".to_owned(),
            }
        }
    }
}
