//! The [`Endpoint`] trait and [`ModelEndpoint`], the in-process endpoint every backend serves.

pub(crate) mod admission;
mod chunk;
pub mod runner;

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::FutureExt as _;
use serde_json::Value;

use crate::config::setting::Settings as _;
use crate::config::spec::{EndpointSpec, FileInput, ModelRef};
use crate::control::actions::ActionSettings;
use crate::control::autoscale::{DynAutoscaler, InMemoryAutoscaler};
use crate::control::trigger::DynTrigger;
use crate::endpoint::admission::Admission;
use crate::endpoint::chunk::{InChunk, RemakeInput, Tally};
use crate::error::{Error, Result};
use crate::lifecycle::{CanaryPolicy, Lifecycle, LifecycleParts, Mirrored, ModelRegistry, Served};
use crate::model::context::{Context, EndpointContext, Logged, Resources, panic_message};
use crate::model::input::Input;
use crate::model::pool::BlockingPool;
use crate::model::predictor::{DynPredictor, Predictor, PredictorExt};
use crate::model::preprocess::Preprocessed;
use crate::model::signature::ModelSignature;
use crate::observe::metrics::{
    DynMetricHistory, DynMetricSink, InMemoryMetrics, RequestEvent, SinkHistory,
};
use crate::observe::record::{DynRecordSink, PredictionRecord, crop, crop_error, crop_owned};
use crate::outcome::Outcome;
use crate::sync::Locked as _;

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
    /// Makes the canary split sticky: requests with the same key reach the same version for
    /// a given share (for example a user id, sent as the `X-Routing-Key` header).
    pub routing_key: Option<String>,
    /// Asks for one version by id, bypassing the split (it must be the stable, candidate or
    /// shadow version).
    pub version: Option<String>,
    /// When the transport received the request; its latency counts from then. Taken when
    /// `predict` starts if unset.
    pub arrival: Option<Arrival>,
    /// Parameters the transport attaches to the prediction's record (a Kafka message's
    /// source), as if the predictor had logged them with [`log_param`](crate::log_param).
    pub params: Vec<(String, Value)>,
    /// The routing table the runner took when it took the item, so that versions switch in
    /// input order.
    pub(crate) routing: Option<crate::lifecycle::RoutingSnapshot>,
}

/// When a request arrived: the wall-clock time it is recorded at, and the monotonic instant its
/// latency and timeout count from.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Wall-clock time of arrival.
    pub at: SystemTime,
    /// Monotonic time of arrival.
    pub started: Instant,
}

impl Arrival {
    /// Now.
    pub fn now() -> Self {
        Arrival {
            at: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

impl PredictRequest {
    /// A request for `input`.
    pub fn new(input: impl Into<Input>) -> Self {
        PredictRequest {
            input: input.into(),
            request_id: None,
            resources: Resources::default(),
            routing_key: None,
            version: None,
            arrival: None,
            params: Vec::new(),
            routing: None,
        }
    }

    /// Attaches a parameter to the prediction's record, as the predictor's
    /// [`log_param`](crate::log_param) would.
    pub fn with_param(mut self, tag: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.push((tag.into(), value.into()));
        self
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

    /// Sets the routing key that makes the canary split sticky.
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Asks for one version, bypassing the split.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Counts the request's latency from `arrival`: when the transport received it, before
    /// reading and decoding its body.
    pub fn with_arrival(mut self, arrival: Arrival) -> Self {
        self.arrival = Some(arrival);
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
    /// The model version that answered (shared with the endpoint's routing: no copy per
    /// prediction).
    pub model_version: Arc<str>,
    /// Time from receipt to answer.
    pub elapsed: Duration,
}

/// A running endpoint: it holds the model, routes each request to it, and records and measures
/// every request.
///
/// # Contract
/// - `predict` records exactly one [`RequestEvent`] in the endpoint's metric sink per call,
///   failures included, with the error's [`Outcome`] (and its code as `status`).
/// - A panic in the predictor fails that request with [`Error::Panicked`]; the endpoint keeps
///   serving.
/// - A prediction that outlives the configured timeout fails with [`Error::Timeout`].
/// - While [`Endpoint::is_ready`] is false, `predict` fails with [`Error::NotReady`].
/// - `Prediction::model_version` and the recorded event carry the version that answered; a
///   request for a version the endpoint does not serve fails with [`Error::VersionNotFound`].
#[async_trait]
pub trait Endpoint: Debug + Send + Sync + 'static {
    /// The endpoint's name.
    fn name(&self) -> &str;

    /// The spec it was built with. Endpoint-level settings (auth, files, server, logging)
    /// hold for every version; the model serving now is in [`Lifecycle::export_spec`].
    fn spec(&self) -> &EndpointSpec;

    /// Whether it answers predictions now.
    fn is_ready(&self) -> bool;

    /// Serves one prediction.
    async fn predict(&self, request: PredictRequest) -> Result<Prediction>;

    /// The control surface of its model versions, when it has one (a wrapper forwards it).
    fn lifecycle(&self) -> Option<&Lifecycle> {
        None
    }

    /// Records a request that its transport refused before it reached the model (bad token,
    /// malformed body, body too large, wrong content type), so that metrics and the
    /// prediction log show every request, not only those that reached `predict`.
    fn refused(&self, refused: Refused) {
        let _ = refused;
    }

    /// Resolves once the endpoint's prediction records have room for `records` more (see
    /// [`RecordSink::ready`](crate::RecordSink::ready)): a transport that would rather slow
    /// down than have records dropped (a Kafka stream) awaits it between bursts. Ready at once
    /// by default.
    fn records_ready(&self, records: usize) -> crate::SinkReady<'_> {
        let _ = records;
        Box::pin(std::future::ready(()))
    }
}

/// A request refused by a transport before it reached the model; see [`Endpoint::refused`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Refused {
    /// The request's id.
    pub request_id: String,
    /// Why it was refused.
    pub error: Error,
    /// When it arrived.
    pub at: SystemTime,
    /// How long the transport spent on it.
    pub elapsed: Duration,
}

impl Refused {
    /// A refusal, now, of the request `request_id` that arrived at `arrival`.
    pub fn new(request_id: impl Into<String>, error: Error, arrival: Arrival) -> Self {
        Refused {
            request_id: request_id.into(),
            error,
            at: arrival.at,
            elapsed: arrival.started.elapsed(),
        }
    }
}

/// A type-erased endpoint.
pub type DynEndpoint = dyn Endpoint;

/// Forwards to the pointee, every method included.
macro_rules! forward_endpoint {
    ($pointer:ident) => {
        #[deny(clippy::missing_trait_methods)]
        impl<E: Endpoint + ?Sized> Endpoint for $pointer<E> {
            fn name(&self) -> &str {
                (**self).name()
            }

            fn spec(&self) -> &EndpointSpec {
                (**self).spec()
            }

            fn is_ready(&self) -> bool {
                (**self).is_ready()
            }

            // Hands back the pointee's boxed future as it is, rather than boxing another around it.
            fn predict<'a, 'f>(
                &'a self,
                request: PredictRequest,
            ) -> std::pin::Pin<Box<dyn Future<Output = Result<Prediction>> + Send + 'f>>
            where
                'a: 'f,
                Self: 'f,
            {
                (**self).predict(request)
            }

            fn lifecycle(&self) -> Option<&Lifecycle> {
                (**self).lifecycle()
            }

            fn refused(&self, refused: Refused) {
                (**self).refused(refused)
            }

            fn records_ready(&self, records: usize) -> crate::SinkReady<'_> {
                (**self).records_ready(records)
            }
        }
    };
}

forward_endpoint!(Arc);
forward_endpoint!(Box);

/// The endpoint that runs a predictor in this process: the embedded default, and what every
/// backend (HTTP, Kafka, batch) serves.
///
/// It serves versions of its model: see [`ModelEndpoint::lifecycle`] for updates, canary
/// rollouts, rollback and shadow traffic. Timeout, concurrency limit and blocking pool are the
/// endpoint's and shared by its versions. Cloning gives another handle to the same endpoint.
#[derive(Debug, Clone)]
pub struct ModelEndpoint {
    spec: Arc<EndpointSpec>,
    name: Arc<str>,
    lifecycle: Lifecycle,
    metrics: Arc<DynMetricSink>,
    records: Option<Arc<DynRecordSink>>,
    /// What every request's context shares.
    context: Arc<EndpointContext>,
    admission: Arc<Admission>,
    ready: Arc<AtomicBool>,
}

impl ModelEndpoint {
    /// Starts building an endpoint named `name` that serves `predictor`.
    pub fn builder(name: impl Into<String>, predictor: impl Predictor) -> ModelEndpointBuilder {
        let name = name.into();
        ModelEndpointBuilder {
            spec: EndpointSpec::new(name.clone(), ModelRef::new(name, "1")),
            predictor: predictor.into_dyn(),
            metrics: None,
            history: None,
            records: None,
            description: String::new(),
            registry: None,
            autoscaler: None,
            retain: 5,
            triggers: Vec::new(),
            action_settings: None,
        }
    }

    /// The control surface of this endpoint's model versions: update, canary, promote,
    /// rollback, shadow, status. Clone it to keep control after handing the endpoint to a
    /// server.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The spec to deploy this endpoint again ("rerun"); see [`Lifecycle::export_spec`].
    pub fn export_spec(&self) -> EndpointSpec {
        self.lifecycle.export_spec()
    }

    /// The sink that receives this endpoint's measurements.
    pub fn metrics(&self) -> &Arc<DynMetricSink> {
        &self.metrics
    }

    /// What reads back this endpoint's custom metrics (see
    /// [`ModelEndpointBuilder::metric_history`]): ask it, not the sink, for samples.
    pub fn metric_history(&self) -> &Arc<DynMetricHistory> {
        self.lifecycle.metric_history()
    }

    /// Marks the endpoint ready or not; a draining server marks it not ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether inputs are Base64 files to decode before predict.
    pub fn file_input(&self) -> FileInput {
        self.spec.files
    }

    /// [`Endpoint::predict`], without the boxed future of the trait's method: what a chunk's
    /// requests are predicted with, one after another on one task.
    async fn predict_one(&self, request: PredictRequest, chunk: InChunk<'_>) -> Result<Prediction> {
        let _in_flight =
            crate::observe::metrics::InFlight::start(self.metrics.as_ref(), &self.name);
        let Arrival { at, started } = request.arrival.unwrap_or_else(Arrival::now);
        let request_id = request.request_id.unwrap_or_else(new_request_id);
        let routed = self.lifecycle.route(
            request.routing.as_ref().or(chunk.routing),
            request.routing_key.as_deref(),
            request.version.as_deref(),
        );
        // The input is moved into the predictor; keep a copy only when it will be recorded
        // or mirrored, and not when the chunk can make it again for the few records kept.
        let remade = chunk.remake_input.filter(|_| {
            !self
                .records
                .as_ref()
                .is_some_and(|records| records.keeps(false))
        });
        let kept_input = match remade {
            Some(_) => None,
            None => self.kept_input(&request.input),
        };
        let mirror = routed
            .as_ref()
            .ok()
            .and_then(|routed| routed.mirror.clone());
        // A mirror keeps the request's resources (temporary input files) alive too.
        let mirror_input = mirror
            .as_ref()
            .map(|_| (request.input.clone(), request.resources.clone()));
        // The id moves into the predictor's context and back.
        let (version, model, (outcome, mut logged, request_id)) = match routed {
            Ok(routed) => {
                let (version, model) = match chunk.local {
                    Some(local) => local.version(&routed.serve),
                    None => (
                        Arc::clone(&routed.serve.id),
                        Arc::clone(&routed.serve.model),
                    ),
                };
                let ran = self
                    .run(
                        &routed.serve,
                        (request.input, request.resources),
                        (request_id, &version),
                        started,
                        chunk,
                    )
                    .await;
                (version, Some(model), ran)
            }
            Err(error) => (
                Arc::from(""),
                None,
                (Err(error), Logged::default(), request_id),
            ),
        };
        if logged.params.is_empty() {
            logged.params = request.params;
        } else if !request.params.is_empty() {
            logged.params.splice(0..0, request.params);
        }
        let outcome = outcome.map_err(|e| crop_error(e, self.spec.logging.max_value_chars));
        let ended = Instant::now();
        let elapsed = ended - started;
        self.finish(Completed {
            endpoint: chunk.local.map(|local| &local.name),
            request_id: &request_id,
            version: &version,
            model: model.as_deref(),
            mirror_of: None,
            input: kept_input,
            remade_input: remade,
            tally: chunk.tally,
            kind: Outcome::from(&outcome),
            outcome: &outcome,
            logged,
            at,
            elapsed,
            ended,
        });
        if let (Some(shadow), Some(input), Ok(output)) = (mirror, mirror_input, &outcome) {
            let primary = Primary {
                request_id: request_id.clone(),
                version: version.to_string(),
                output: output.clone(),
                elapsed,
            };
            self.mirror(shadow, input, primary);
        }
        outcome.map(|output| Prediction {
            output,
            request_id,
            model_version: version,
            elapsed,
        })
    }

    async fn run(
        &self,
        served: &Served,
        (input, resources): (Input, Resources),
        (request_id, version): (String, &Arc<str>),
        started: Instant,
        chunk: InChunk<'_>,
    ) -> (Result<Value>, Logged, String) {
        if !self.is_ready() {
            let error = Error::NotReady {
                endpoint: self.name.to_string(),
            };
            return (Err(error), Logged::default(), request_id);
        }
        // Time spent waiting for a slot counts toward the prediction's timeout.
        let timeout = self.spec.server.workers.timeout();
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let _slot = if chunk.slot_held {
            None
        } else {
            match self.admission.admit(&self.name, deadline).await {
                Ok(slot) => Some(slot),
                Err(error) => return (Err(error), Logged::default(), request_id),
            }
        };
        let shared = chunk.local.map_or(&self.context, |local| &local.context);
        let context = Context::for_request(shared, Arc::clone(version), request_id, resources);
        // A predictor that answers at once (an inline function) is called without a future.
        let now = std::panic::catch_unwind(AssertUnwindSafe(|| {
            context.enter(|| served.predictor.predict_now(input, &context))
        }));
        let outcome = match now {
            Ok(Ok(outcome)) => outcome,
            Err(panic) => Err(Error::Panicked {
                message: panic_message(&*panic),
            }),
            Ok(Err(input)) => {
                let prediction =
                    AssertUnwindSafe(served.predictor.predict(input, &context)).catch_unwind();
                match within(deadline, context.clone().scope(prediction)).await {
                    None => Err(Error::Timeout { after: timeout }),
                    Some(Err(panic)) => Err(Error::Panicked {
                        message: panic_message(&*panic),
                    }),
                    Some(Ok(outcome)) => outcome,
                }
            }
        };
        let (logged, request_id) = context.into_logged_and_id();
        (outcome, logged, request_id)
    }

    /// The input as its prediction record keeps it (cropped), when records keep inputs: made
    /// before the input moves into the predictor, and without copying it whole first.
    fn kept_input(&self, input: &Input) -> Option<Value> {
        let logging = &self.spec.logging;
        let kept = self
            .records
            .as_ref()
            .is_some_and(|records| records.keeps(false) || records.keeps(true));
        (kept && logging.log_input).then(|| match input {
            Input::Json(value) => crop(value, logging.max_value_chars),
            other => crop_owned(other.to_json(), logging.max_value_chars),
        })
    }

    /// Logs, measures and records one finished request, the shadow's included.
    fn finish(&self, request: Completed<'_>) {
        if let Err(error) = request.outcome {
            let (request_id, version) = (request.request_id, &**request.version);
            let shadow = request.mirror_of.is_some();
            if error.is_client_error() {
                tracing::debug!(endpoint = %self.name, model_version = version, request_id, shadow, %error, "prediction refused");
            } else {
                tracing::error!(endpoint = %self.name, model_version = version, request_id, shadow, %error, "prediction failed");
            }
        }
        let event = RequestEvent {
            endpoint: Arc::clone(request.endpoint.unwrap_or(&self.name)),
            model_version: Arc::clone(request.version),
            status: request.kind.code(),
            outcome: request.kind,
            latency: request.elapsed,
            at: request.at,
        };
        match request.tally {
            Some(tally) => {
                let due = tally.locked().push(event, request.ended);
                if due {
                    self.hand_over(tally);
                }
            }
            None => {
                self.metrics.record_request(&event);
                self.lifecycle.record(&event, request.ended);
            }
        }
        self.record(request);
    }

    fn record(&self, request: Completed<'_>) {
        let Some(records) = &self.records else {
            return;
        };
        // Unauthenticated callers are counted in metrics but must not be able to fill the
        // prediction log.
        if !request.kind.is_recorded() || !records.keeps(request.outcome.is_err()) {
            return;
        }
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
            endpoint: String::from(&*self.name),
            model: request
                .model
                .map_or_else(|| self.spec.model.name.clone(), str::to_owned),
            model_version: String::from(&**request.version),
            input: request.input.or_else(|| {
                let remake = request.remade_input.filter(|_| logging.log_input)?;
                remake().map(|input| crop(&input, logging.max_value_chars))
            }),
            output,
            error,
            status: request.kind.code(),
            start_time: request.at,
            elapsed_ms: request.elapsed.as_secs_f64() * 1000.0,
            metrics: request.logged.metrics.into_iter().collect(),
            params: request
                .logged
                .params
                .into_iter()
                .chain(
                    request
                        .mirror_of
                        .map(|primary| ("shadow_of".to_owned(), primary.into())),
                )
                .collect(),
        });
    }

    /// Runs `input` on the shadow version after the caller got `primary`'s answer, records it
    /// like any request (with the shadow's version and a `shadow_of` parameter), and compares.
    fn mirror(
        &self,
        shadow: Arc<Served>,
        (input, resources): (Input, Resources),
        primary: Primary,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let endpoint = self.clone();
        runtime.spawn(async move {
            let Arrival { at, started } = Arrival::now();
            let kept_input = endpoint.kept_input(&input);
            let (outcome, logged, _) = endpoint
                .run(
                    &shadow,
                    (input, resources),
                    (primary.request_id.clone(), &shadow.id),
                    started,
                    InChunk::default(),
                )
                .await;
            let outcome = outcome.map_err(|e| crop_error(e, endpoint.spec.logging.max_value_chars));
            if matches!(outcome, Err(Error::Overloaded { .. })) {
                // Mirrors never take capacity from real traffic.
                endpoint.lifecycle.mirror_skipped(&shadow.id);
                return;
            }
            let ended = Instant::now();
            let elapsed = ended - started;
            endpoint.finish(Completed {
                endpoint: None,
                request_id: &primary.request_id,
                version: &shadow.id,
                model: Some(&shadow.model),
                mirror_of: Some(&primary.version),
                input: kept_input,
                remade_input: None,
                tally: None,
                kind: Outcome::from(&outcome),
                outcome: &outcome,
                logged,
                at,
                elapsed,
                ended,
            });
            endpoint.lifecycle.record_mirror(
                &shadow.id,
                &Mirrored {
                    shadow_output: outcome.as_ref().ok(),
                    primary_output: &primary.output,
                    shadow_latency: elapsed,
                    primary_latency: primary.elapsed,
                },
            );
        });
    }
}

/// `future`'s output, or `None` once `deadline` has passed, as `tokio::time::timeout_at`
/// would; but the timer is made only when the future does not finish at its first poll, so a
/// prediction that answers at once (an inline model) registers no timer.
async fn within<F: Future>(deadline: tokio::time::Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    })
    .await
}

/// The answer the caller got, for comparison with a shadow's.
struct Primary {
    request_id: String,
    version: String,
    output: Value,
    elapsed: Duration,
}

/// A finished request, as the endpoint records it.
struct Completed<'a> {
    /// The endpoint's name as its chunk holds it (see [`Local`](chunk::Local)), for a chunk's request.
    endpoint: Option<&'a Arc<str>>,
    request_id: &'a str,
    /// The version that answered; empty when none was found.
    version: &'a Arc<str>,
    /// Its model's name, when a version was found.
    model: Option<&'a str>,
    /// For a shadow's run, the version whose answer was returned.
    mirror_of: Option<&'a str>,
    /// The input as recorded (cropped), when inputs are recorded.
    input: Option<Value>,
    /// Makes the input again when `input` was not kept and it is recorded after all.
    remade_input: Option<RemakeInput<'a>>,
    /// Where a chunk's request is measured until the chunk hands its events over.
    tally: Option<&'a Mutex<Tally>>,
    outcome: &'a Result<Value>,
    /// How it ended, as every sink classifies it.
    kind: Outcome,
    /// What the predictor logged, moved into the record.
    logged: Logged,
    at: SystemTime,
    elapsed: Duration,
    /// When it ended (`elapsed` after it started).
    ended: Instant,
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
        self.predict_one(request, InChunk::default()).await
    }

    fn lifecycle(&self) -> Option<&Lifecycle> {
        Some(&self.lifecycle)
    }

    fn refused(&self, refused: Refused) {
        let kind = refused.error.outcome();
        let error = crop_error(refused.error, self.spec.logging.max_value_chars);
        self.finish(Completed {
            endpoint: None,
            request_id: &refused.request_id,
            version: &Arc::from(""),
            model: None,
            mirror_of: None,
            input: None,
            remade_input: None,
            tally: None,
            kind,
            outcome: &Err(error),
            logged: Logged::default(),
            at: refused.at,
            elapsed: refused.elapsed,
            ended: Instant::now(),
        });
    }
    fn records_ready(&self, records: usize) -> crate::SinkReady<'_> {
        match &self.records {
            Some(sink) => sink.ready(records),
            None => Box::pin(std::future::ready(())),
        }
    }
}

/// A new request id: 32 hex digits, a random per-process prefix and a counter, so ids are
/// unique without a system call per request.
pub fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    /// Counters a thread takes at a time: cores making ids at once do not take turns at one
    /// shared counter for every request.
    const BLOCK: u64 = 1024;
    /// A thread's block of counters, and the text of the id it made last.
    struct Block {
        next: u64,
        end: u64,
        text: [u8; 32],
    }
    thread_local! {
        static BLOCK_TAKEN: std::cell::RefCell<Block> = const {
            std::cell::RefCell::new(Block { next: 0, end: 0, text: [b'0'; 32] })
        };
    }
    BLOCK_TAKEN.with_borrow_mut(|block| {
        if block.next == block.end {
            block.next = NEXT.fetch_add(BLOCK, Ordering::Relaxed);
            block.end = block.next + BLOCK;
            let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
            write_hex(&mut block.text[..16], *prefix);
            write_hex(&mut block.text[16..], block.next);
        } else {
            // The next counter's text is the last one's plus one, in place: writing all 32
            // digits again cost more than the rest of the id (it runs per request).
            for digit in block.text[16..].iter_mut().rev() {
                match *digit {
                    b'f' => *digit = b'0',
                    b'9' => {
                        *digit = b'a';
                        break;
                    }
                    _ => {
                        *digit += 1;
                        break;
                    }
                }
            }
        }
        block.next += 1;
        std::str::from_utf8(&block.text)
            .expect("hex digits are ASCII")
            .to_owned()
    })
}

/// Writes `n` as 16 hex digits.
fn write_hex(digits: &mut [u8], n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Builds a [`ModelEndpoint`].
#[derive(Debug)]
pub struct ModelEndpointBuilder {
    spec: EndpointSpec,
    predictor: Arc<DynPredictor>,
    metrics: Option<Arc<DynMetricSink>>,
    history: Option<Arc<DynMetricHistory>>,
    records: Option<Arc<DynRecordSink>>,
    description: String,
    registry: Option<Arc<ModelRegistry>>,
    autoscaler: Option<Arc<DynAutoscaler>>,
    retain: usize,
    triggers: Vec<Arc<DynTrigger>>,
    action_settings: Option<ActionSettings>,
}

impl ModelEndpointBuilder {
    /// Adds a trigger in code (a [`CallbackTrigger`](crate::CallbackTrigger), for example),
    /// started with the endpoint; the spec's own triggers start too.
    pub fn trigger(mut self, trigger: Arc<DynTrigger>) -> Self {
        self.triggers.push(trigger);
        self
    }

    /// Configures the actions of the spec's triggers (SMTP server, dashboard link);
    /// [`ActionSettings::from_env`](crate::setting::Settings::from_env) by default.
    pub fn action_settings(mut self, settings: ActionSettings) -> Self {
        self.action_settings = Some(settings);
        self
    }

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

    /// Groups concurrent requests into batches (see [`Batched`](crate::Batched)); the same as
    /// the worker settings `max_batch_size` and `max_batch_wait_ms`. The predictor must declare
    /// [`Capabilities::batch`](crate::Capabilities::batch).
    pub fn batching(mut self, config: crate::BatchConfig) -> Self {
        let workers = &mut self.spec.server.workers;
        workers.max_batch_size = config.max_batch_size;
        workers.max_batch_wait_ms = config.max_wait.as_millis().try_into().unwrap_or(u64::MAX);
        self
    }

    /// Takes the endpoint's token from the environment variable `var` when it is set and not
    /// empty; a token is generated otherwise (`auth.token_env` in the spec).
    pub fn token_env(mut self, var: impl Into<String>) -> Self {
        self.spec.auth.token_env = Some(var.into());
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

    /// What reads back the custom metrics this endpoint's sink kept, for canary rules on
    /// `custom:<key>` and for triggers ([`ModelEndpoint::metric_history`]).
    ///
    /// By default, the default [`InMemoryMetrics`] sink is also the history; an endpoint given
    /// a [`metric_sink`](Self::metric_sink) but no history reads through that sink's deprecated
    /// [`MetricSink::recent_metric`](crate::MetricSink::recent_metric), as before. Set it
    /// whenever the sink is a [`FanOut`](crate::FanOut): the reader is then asked, not the
    /// fan-out's first sink.
    pub fn metric_history(mut self, history: Arc<DynMetricHistory>) -> Self {
        self.history = Some(history);
        self
    }

    /// Where prediction records go (the prediction log); none are made when unset.
    pub fn record_sink(mut self, sink: Arc<DynRecordSink>) -> Self {
        self.records = Some(sink);
        self
    }

    /// Describes the first version, for the version history.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The model's named inputs and outputs, for the Open Inference Protocol routes.
    pub fn signature(mut self, signature: ModelSignature) -> Self {
        self.spec.signature = Some(signature);
        self
    }

    /// Promotes or rolls back canaries automatically under `policy`.
    pub fn canary_policy(mut self, policy: CanaryPolicy) -> Self {
        self.spec.canary = Some(policy);
        self
    }

    /// The registry of predictor factories: lets the control plane roll out registered
    /// versions by name and rebuild unloaded versions on rollback.
    pub fn registry(mut self, registry: Arc<ModelRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// What applies replica bounds; an [`InMemoryAutoscaler`] by default.
    pub fn autoscaler(mut self, autoscaler: Arc<DynAutoscaler>) -> Self {
        self.autoscaler = Some(autoscaler);
        self
    }

    /// How many superseded versions keep their predictor in memory for instant rollback (5
    /// by default); the stable version and the one before it always do.
    pub fn retain_versions(mut self, retain: usize) -> Self {
        self.retain = retain;
        self
    }

    /// Validates the spec and builds a ready endpoint.
    pub fn build(self) -> Result<ModelEndpoint> {
        self.spec.validate()?;
        let workers = &self.spec.server.workers;
        let (metrics, history): (Arc<DynMetricSink>, Arc<DynMetricHistory>) =
            match (self.metrics, self.history) {
                (Some(sink), Some(history)) => (sink, history),
                (Some(sink), None) => (Arc::clone(&sink), Arc::new(SinkHistory(sink))),
                (None, history) => {
                    let default = Arc::new(InMemoryMetrics::new());
                    let history = history.unwrap_or_else(|| Arc::clone(&default) as _);
                    (default, history)
                }
            };
        let lifecycle = Lifecycle::new(LifecycleParts {
            spec: self.spec.clone(),
            predictor: crate::model::batching::from_spec(self.predictor, &self.spec, &metrics)?,
            description: self.description,
            metrics: Arc::clone(&metrics),
            history,
            registry: self.registry,
            autoscaler: self
                .autoscaler
                .unwrap_or_else(|| Arc::new(InMemoryAutoscaler::new())),
            retain: self.retain,
            action_settings: match self.action_settings {
                Some(settings) => settings,
                None => ActionSettings::from_env()?,
            },
        });
        for spec in &self.spec.triggers {
            lifecycle.add_trigger_spec(spec.clone())?;
        }
        for trigger in self.triggers {
            lifecycle.add_trigger(trigger)?;
        }
        Ok(ModelEndpoint {
            name: Arc::from(self.spec.name.as_str()),
            lifecycle,
            metrics: Arc::clone(&metrics),
            records: self.records,
            context: Arc::new(EndpointContext {
                endpoint: Arc::from(self.spec.name.as_str()),
                settings: Arc::new(self.spec.server.env.clone()),
                pool: BlockingPool::new(workers.threads),
                sink: metrics,
            }),
            admission: Arc::new(Admission::new(workers.concurrency, workers.queue_depth)),
            ready: Arc::new(AtomicBool::new(true)),
            spec: Arc::new(self.spec),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::record::RecordSink;
    use crate::predictor_fn;
    use serde_json::json;

    mockall::mock! {
        #[derive(Debug)]
        Records {}
        impl RecordSink for Records {
            fn record(&self, record: PredictionRecord);
            fn keeps(&self, failed: bool) -> bool;
        }
    }

    #[test]
    fn request_ids_are_unique_across_threads() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let makers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..3000).map(|_| new_request_id()).collect::<Vec<_>>()))
                .collect();
            makers.into_iter().flat_map(|m| m.join().unwrap()).collect()
        });
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    /// A thread's ids count up by one within its block, their digits carried as a number's
    /// (`…09` → `…0a`, `…0f` → `…10`, `…ff` → `…100`), and share the process's prefix.
    #[test]
    fn a_threads_ids_count_up_in_hex() {
        let ids: Vec<u128> = std::thread::spawn(|| {
            (0..600)
                .map(|_| u128::from_str_radix(&new_request_id(), 16).unwrap())
                .collect()
        })
        .join()
        .unwrap();
        // A new thread takes a new block of 1024: its 600 ids are one run.
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:x?}");
        let prefix = ids[0] >> 64;
        assert!(ids.iter().all(|id| id >> 64 == prefix));
        // The run crossed `…ff` at least twice.
        assert!(ids.iter().filter(|id| *id % 256 == 0).count() >= 2);
    }

    /// The id moves into the predictor's context and back; a context the predictor keeps
    /// beyond its prediction keeps its own copy.
    #[tokio::test]
    async fn the_request_id_comes_back_whether_or_not_the_context_outlives_the_prediction() {
        let kept: Arc<std::sync::Mutex<Vec<Context>>> = Arc::default();
        let keeper = Arc::clone(&kept);
        let endpoint = ModelEndpoint::builder(
            "e",
            predictor_fn(move |keep: bool| -> Result<bool> {
                if keep {
                    keeper.lock().unwrap().push(Context::current().unwrap());
                }
                Ok(keep)
            }),
        )
        .build()
        .unwrap();
        for keep in [false, true] {
            let id = format!("id-{keep}");
            let answer = endpoint
                .predict(PredictRequest::new(json!(keep)).with_request_id(id.clone()))
                .await
                .unwrap();
            assert_eq!(answer.request_id, id);
        }
        assert_eq!(kept.lock().unwrap()[0].request_id(), "id-true");
    }

    /// Predicts a number, which a function of one `f64` answers, then a string it refuses.
    async fn one_good_one_bad(endpoint: &ModelEndpoint) {
        endpoint
            .predict(PredictRequest::new(json!(1.5)))
            .await
            .unwrap();
        endpoint
            .predict(PredictRequest::new(json!("x")))
            .await
            .unwrap_err();
    }

    #[tokio::test]
    async fn no_record_is_made_that_the_sink_would_not_keep() {
        let mut records = MockRecords::new();
        records.expect_keeps().returning(|failed| failed);
        records
            .expect_record()
            .withf(|r| r.status == 422 && r.input == Some(json!("x")))
            .times(1)
            .return_const(());
        let endpoint = ModelEndpoint::builder("e", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
            .record_sink(Arc::new(records))
            .build()
            .unwrap();
        one_good_one_bad(&endpoint).await;
    }

    #[tokio::test]
    async fn every_prediction_is_recorded_once_failures_included() {
        let mut records = MockRecords::new();
        records.expect_keeps().return_const(true);
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
        one_good_one_bad(&endpoint).await;
    }

    #[tokio::test]
    async fn refusals_are_measured_by_outcome_and_only_authenticated_ones_recorded() {
        let mut records = MockRecords::new();
        records.expect_keeps().return_const(true);
        records
            .expect_record()
            .withf(|r| r.status == 413 && r.request_id == "big")
            .times(1)
            .return_const(());
        let metrics = Arc::new(InMemoryMetrics::new());
        let endpoint = ModelEndpoint::builder("e", predictor_fn(|x: f64| -> Result<f64> { Ok(x) }))
            .metric_sink(Arc::clone(&metrics) as Arc<DynMetricSink>)
            .record_sink(Arc::new(records))
            .build()
            .unwrap();
        endpoint.refused(Refused::new("anon", Error::Unauthorized, Arrival::now()));
        endpoint.refused(Refused::new(
            "big",
            Error::PayloadTooLarge { limit: 1 },
            Arrival::now(),
        ));
        let seen: Vec<(Outcome, u16)> = metrics
            .requests()
            .iter()
            .map(|e| (e.outcome, e.status))
            .collect();
        assert_eq!(
            seen,
            [(Outcome::Unauthenticated, 401), (Outcome::TooLarge, 413)]
        );
    }
}
