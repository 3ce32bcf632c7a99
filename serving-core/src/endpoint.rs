//! The [`Endpoint`] trait and [`ModelEndpoint`], the in-process endpoint every backend serves.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::FutureExt as _;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::context::{Context, ContextParts, Logged, Resources, panic_message};
use crate::error::{Error, Result};
use crate::input::Input;
use crate::metrics::{DynMetricSink, InMemoryMetrics, RequestEvent};
use crate::pool::BlockingPool;
use crate::predictor::{DynPredictor, Predictor, PredictorExt};
use crate::preprocess::Preprocessed;
use crate::record::{DynRecordSink, PredictionRecord, crop};
use crate::spec::{EndpointSpec, FileInput, ModelRef};

/// One prediction request, whatever transport it came from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PredictRequest {
    /// The input as sent.
    pub input: Input,
    /// An id chosen by the caller; one is generated when absent.
    pub request_id: Option<String>,
    /// Kept alive until the predictor has finished, even past a timeout.
    pub resources: Resources,
}

impl PredictRequest {
    /// A request for `input`.
    pub fn new(input: impl Into<Input>) -> Self {
        PredictRequest {
            input: input.into(),
            request_id: None,
            resources: Resources::default(),
        }
    }

    /// Keeps `resource` alive until the predictor has finished with this request, even when
    /// the caller has stopped waiting (a timeout): for example the temporary files that a
    /// file-input predictor reads.
    pub fn with_resource(mut self, resource: impl Any + Send + Sync) -> Self {
        self.resources.push(resource);
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// A prediction and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The predictor's answer.
    pub output: Value,
    /// The request's id.
    pub request_id: String,
    /// The model version that answered.
    pub model_version: String,
    /// Time from receipt to answer.
    pub elapsed: Duration,
}

/// A running endpoint: it holds the model, routes each request to it, and records and measures
/// every request.
///
/// # Contract
/// - `predict` records exactly one [`RequestEvent`] in the endpoint's metric sink per call,
///   failures included, with the status the error maps to.
/// - A panic in the predictor fails that request with [`Error::Panicked`]; the endpoint keeps
///   serving.
/// - A prediction that outlives the configured timeout fails with [`Error::Timeout`].
/// - While [`Endpoint::is_ready`] is false, `predict` fails with [`Error::NotReady`].
#[async_trait]
pub trait Endpoint: Debug + Send + Sync + 'static {
    /// The endpoint's name.
    fn name(&self) -> &str;

    /// The spec it runs.
    fn spec(&self) -> &EndpointSpec;

    /// Whether it answers predictions now.
    fn is_ready(&self) -> bool;

    /// Serves one prediction.
    async fn predict(&self, request: PredictRequest) -> Result<Prediction>;
}

/// A type-erased endpoint.
pub type DynEndpoint = dyn Endpoint;

#[async_trait]
impl<E: Endpoint + ?Sized> Endpoint for Arc<E> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn spec(&self) -> &EndpointSpec {
        (**self).spec()
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    async fn predict(&self, request: PredictRequest) -> Result<Prediction> {
        (**self).predict(request).await
    }
}

/// The endpoint that runs a predictor in this process: the embedded default, and what every
/// backend (HTTP, Kafka, batch) serves.
#[derive(Debug)]
pub struct ModelEndpoint {
    spec: EndpointSpec,
    name: Arc<str>,
    model_version: Arc<str>,
    predictor: Arc<DynPredictor>,
    metrics: Arc<DynMetricSink>,
    records: Option<Arc<DynRecordSink>>,
    settings: Arc<BTreeMap<String, String>>,
    pool: BlockingPool,
    in_flight: Arc<Semaphore>,
    ready: AtomicBool,
}

impl ModelEndpoint {
    /// Starts building an endpoint named `name` that serves `predictor`.
    pub fn builder(name: impl Into<String>, predictor: impl Predictor) -> ModelEndpointBuilder {
        let name = name.into();
        ModelEndpointBuilder {
            spec: EndpointSpec::new(name.clone(), ModelRef::new(name, "1")),
            predictor: predictor.into_dyn(),
            metrics: None,
            records: None,
        }
    }

    /// The sink that receives this endpoint's measurements.
    pub fn metrics(&self) -> &Arc<DynMetricSink> {
        &self.metrics
    }

    /// Marks the endpoint ready or not; a draining server marks it not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether inputs are Base64 files to decode before predict.
    pub fn file_input(&self) -> FileInput {
        self.spec.files
    }

    async fn run(
        &self,
        input: Input,
        resources: Resources,
        request_id: &str,
    ) -> (Result<Value>, Logged) {
        if !self.is_ready() {
            let error = Error::NotReady {
                endpoint: self.name.to_string(),
            };
            return (Err(error), Logged::default());
        }
        let Ok(_slot) = self.in_flight.try_acquire() else {
            let error = Error::Overloaded {
                endpoint: self.name.to_string(),
            };
            return (Err(error), Logged::default());
        };
        let context = Context::new(ContextParts {
            request_id: request_id.to_owned(),
            resources,
            endpoint: Arc::clone(&self.name),
            model_version: Arc::clone(&self.model_version),
            settings: Arc::clone(&self.settings),
            pool: self.pool.clone(),
            sink: Arc::clone(&self.metrics),
        });
        let prediction = AssertUnwindSafe(self.predictor.predict(input, &context)).catch_unwind();
        let timeout = self.spec.server.workers.timeout();
        let outcome = match tokio::time::timeout(timeout, context.clone().scope(prediction)).await {
            Err(_) => Err(Error::Timeout { after: timeout }),
            Ok(Err(panic)) => Err(Error::Panicked {
                message: panic_message(&*panic),
            }),
            Ok(Ok(outcome)) => outcome,
        };
        (outcome, context.take_logged())
    }

    fn record(&self, request: &Completed<'_>) {
        let Some(records) = &self.records else {
            return;
        };
        let logging = &self.spec.logging;
        let (output, error) = match request.outcome {
            Ok(output) => (
                logging
                    .log_output
                    .then(|| crop(output, logging.max_value_chars)),
                None,
            ),
            Err(error) => (None, Some(error.to_string())),
        };
        records.record(PredictionRecord {
            request_id: request.request_id.to_owned(),
            endpoint: self.name.to_string(),
            model: self.spec.model.name.clone(),
            model_version: self.model_version.to_string(),
            input: request
                .input
                .filter(|_| logging.log_input)
                .map(|input| crop(&input.to_json(), logging.max_value_chars)),
            output,
            error,
            status: request.status,
            start_time: request.at,
            elapsed_ms: request.elapsed.as_secs_f64() * 1000.0,
            metrics: request.logged.metrics.iter().cloned().collect(),
            params: request.logged.params.iter().cloned().collect(),
        });
    }
}

/// A finished request, as the endpoint records it.
struct Completed<'a> {
    request_id: &'a str,
    input: Option<&'a Input>,
    outcome: &'a Result<Value>,
    logged: &'a Logged,
    status: u16,
    at: SystemTime,
    elapsed: Duration,
}

#[async_trait]
impl Endpoint for ModelEndpoint {
    fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn predict(&self, request: PredictRequest) -> Result<Prediction> {
        let _in_flight = crate::metrics::InFlight::start(self.metrics.as_ref(), &self.name);
        let at = SystemTime::now();
        let started = Instant::now();
        let request_id = request.request_id.unwrap_or_else(new_request_id);
        // The input is moved into the predictor; keep a copy only when it will be recorded.
        let kept_input =
            (self.records.is_some() && self.spec.logging.log_input).then(|| request.input.clone());
        let (outcome, logged) = self
            .run(request.input, request.resources, &request_id)
            .await;
        let elapsed = started.elapsed();
        let status = match &outcome {
            Ok(_) => 200,
            Err(error) => error.status(),
        };
        if let Err(error) = &outcome {
            if error.is_client_error() {
                tracing::debug!(endpoint = %self.name, request_id, %error, "prediction refused");
            } else {
                tracing::error!(endpoint = %self.name, request_id, %error, "prediction failed");
            }
        }
        self.metrics.record_request(&RequestEvent {
            endpoint: self.name.to_string(),
            model_version: self.model_version.to_string(),
            status,
            latency: elapsed,
            at,
        });
        self.record(&Completed {
            request_id: &request_id,
            input: kept_input.as_ref(),
            outcome: &outcome,
            logged: &logged,
            status,
            at,
            elapsed,
        });
        outcome.map(|output| Prediction {
            output,
            request_id,
            model_version: self.model_version.to_string(),
            elapsed,
        })
    }
}

/// A new random request id.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Builds a [`ModelEndpoint`].
#[derive(Debug)]
pub struct ModelEndpointBuilder {
    spec: EndpointSpec,
    predictor: Arc<DynPredictor>,
    metrics: Option<Arc<DynMetricSink>>,
    records: Option<Arc<DynRecordSink>>,
}

impl ModelEndpointBuilder {
    /// Replaces the whole spec (its name included).
    pub fn spec(mut self, spec: EndpointSpec) -> Self {
        self.spec = spec;
        self
    }

    /// The model's name and version.
    pub fn model(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.spec.model = ModelRef::new(name, version);
        self
    }

    /// Runs `preprocess` before the predictor; its output is the predictor's input.
    pub fn preprocess(mut self, name: impl Into<String>, preprocess: impl Predictor) -> Self {
        self.spec.preprocess = Some(name.into());
        self.predictor = Arc::new(Preprocessed::new(preprocess, self.predictor));
        self
    }

    /// Decodes Base64 file input before predict.
    pub fn files(mut self, files: FileInput) -> Self {
        self.spec.files = files;
        self
    }

    /// Sets one worker setting (`timeout`, `threads`, `concurrency`, …) as a KEY-VALUE pair.
    pub fn worker_setting(mut self, key: &str, value: &str) -> Result<Self> {
        self.spec.server.workers.set(key, value)?;
        Ok(self)
    }

    /// Sets the prediction timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.server.workers.timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// Adds a KEY-VALUE setting readable through [`Context::setting`].
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.server.env.insert(key.into(), value.into());
        self
    }

    /// Where measurements go; an [`InMemoryMetrics`] by default.
    pub fn metric_sink(mut self, sink: Arc<DynMetricSink>) -> Self {
        self.metrics = Some(sink);
        self
    }

    /// Where prediction records go (the prediction log); none are made when unset.
    pub fn record_sink(mut self, sink: Arc<DynRecordSink>) -> Self {
        self.records = Some(sink);
        self
    }

    /// Validates the spec and builds a ready endpoint.
    pub fn build(self) -> Result<ModelEndpoint> {
        self.spec.validate()?;
        let workers = &self.spec.server.workers;
        Ok(ModelEndpoint {
            name: Arc::from(self.spec.name.as_str()),
            model_version: Arc::from(self.spec.model.version.as_str()),
            predictor: self.predictor,
            metrics: self
                .metrics
                .unwrap_or_else(|| Arc::new(InMemoryMetrics::new())),
            records: self.records,
            settings: Arc::new(self.spec.server.env.clone()),
            pool: BlockingPool::new(workers.threads),
            in_flight: Arc::new(Semaphore::new(workers.concurrency)),
            ready: AtomicBool::new(true),
            spec: self.spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictor_fn;
    use crate::record::RecordSink;
    use serde_json::json;

    mockall::mock! {
        #[derive(Debug)]
        Records {}
        impl RecordSink for Records {
            fn record(&self, record: PredictionRecord);
        }
    }

    #[tokio::test]
    async fn every_prediction_is_recorded_once_failures_included() {
        let mut records = MockRecords::new();
        let mut order = mockall::Sequence::new();
        records
            .expect_record()
            .withf(|r| r.status == 200 && r.output == Some(json!(3.0)) && r.metrics["half"] == 0.75)
            .times(1)
            .in_sequence(&mut order)
            .return_const(());
        records
            .expect_record()
            .withf(|r| {
                r.status == 422 && r.output.is_none() && r.error.is_some() && r.input.is_none()
            })
            .times(1)
            .in_sequence(&mut order)
            .return_const(());
        let mut spec = EndpointSpec::new("doubler", ModelRef::new("double", "7"));
        spec.logging.log_input = false;
        let double = predictor_fn(|x: f64| -> Result<f64> {
            crate::log_metric("half", x / 2.0);
            Ok(x * 2.0)
        });
        let endpoint = ModelEndpoint::builder("doubler", double)
            .spec(spec)
            .record_sink(Arc::new(records))
            .build()
            .unwrap();
        endpoint
            .predict(PredictRequest::new(json!(1.5)))
            .await
            .unwrap();
        endpoint
            .predict(PredictRequest::new(json!("x")))
            .await
            .unwrap_err();
    }
}
