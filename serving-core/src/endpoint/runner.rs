//! [`Runner`]: the one path from a stream or a batch of items to an endpoint's `predict`, for
//! every transport that is not a request/response server (a Kafka consumer, a batch of rows).
//!
//! ```
//! use futures::StreamExt as _;
//! use serving_core::{predictor_fn, runner::{Item, Runner}, ModelEndpoint, Result};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let double = predictor_fn(|x: f64| -> Result<f64> { Ok(x * 2.0) });
//! let endpoint = ModelEndpoint::builder("doubler", double).build()?;
//! let rows = futures::stream::iter((0..100).map(|i| Item::new(json!(i))));
//! let outputs: Vec<_> = Runner::new(endpoint).run(rows).collect().await;
//! assert_eq!(outputs.len(), 100);
//! assert_eq!(outputs[7].result.as_ref().unwrap().output, json!(14.0));
//! # Ok(()) }
//! ```
//!
//! A transport that writes its results somewhere (a Kafka producer, a batch output file)
//! implements [`OutputSink`] and hands it to [`Runner::run_into`], with its shutdown signal:
//!
//! ```
//! use serving_core::runner::{Item, OutputSink, Processed, Runner};
//! use serving_core::{predictor_fn, Error, ModelEndpoint, Result};
//! use serde_json::json;
//!
//! /// Writes `row,prediction` lines; the row number travels with each item as its metadata.
//! #[derive(Default)]
//! struct Lines(Vec<String>);
//!
//! #[async_trait::async_trait]
//! impl OutputSink<usize> for Lines {
//!     async fn write(&mut self, processed: Processed<usize>) -> Result<()> {
//!         let cell = match processed.result {
//!             Ok(prediction) => prediction.output.to_string(),
//!             Err(error) => format!("error: {error}"),
//!         };
//!         self.0.push(format!("{},{cell}", processed.meta));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let negate = predictor_fn(|x: f64| -> Result<f64> { Ok(-x) });
//! let endpoint = ModelEndpoint::builder("negate", negate).build()?;
//! let rows = ["1", "2", "oops"].into_iter().enumerate().map(|(row, text)| {
//!     match text.parse::<f64>() {
//!         Ok(x) => Item::new(json!(x)).with_meta(row),
//!         // Refused before the model: recorded, never predicted, still written.
//!         Err(e) => Item::refused(Error::invalid_request(e.to_string())).with_meta(row),
//!     }
//! });
//! let mut lines = Lines::default();
//! let shutdown = std::future::pending(); // for example `serving_core::shutdown_signal()`
//! let summary = Runner::new(endpoint)
//!     .run_into(futures::stream::iter(rows), &mut lines, shutdown)
//!     .await?;
//! assert_eq!((summary.predicted, summary.refused), (2, 1));
//! assert_eq!(lines.0[..2], ["0,-1.0", "1,-2.0"]);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt as _, Stream, StreamExt as _};

use crate::endpoint::{
    Arrival, DynEndpoint, Endpoint, PredictRequest, Prediction, Refused, new_request_id,
};
use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::model::context::{Resources, panic_message};
use crate::model::input::Input;

/// One item for a [`Runner`]: what a transport received, before the model.
///
/// `M` is the transport's own metadata (a Kafka partition and offset, a row number), handed
/// back untouched with the item's result.
#[derive(Debug)]
#[non_exhaustive]
pub struct Item<M = ()> {
    /// The id the source gave the item (a message header, a row's id column); the runner
    /// generates one with [`new_request_id`] when it is `None`.
    pub request_id: Option<String>,
    /// The decoded input, or why the transport could not decode it: such an item is recorded
    /// through [`Endpoint::refused`] and never reaches the model.
    pub input: Result<Input>,
    /// Makes the canary split sticky (a message key, a user id); also the key of
    /// [`OutputOrder::PerKey`].
    pub routing_key: Option<String>,
    /// When the transport received the item; the runner stamps it when it takes the item from
    /// the stream if `None`.
    pub arrival: Option<Arrival>,
    /// The transport's metadata.
    pub meta: M,
    /// Values the predictor can read through [`Context::resource`](crate::Context::resource)
    /// (a Kafka message's key, headers and position).
    pub resources: Resources,
    /// Orders the item's output among others in [`OutputOrder::PerKey`] when set (a Kafka
    /// message's partition, while its key still routes the canary split); the routing key
    /// does otherwise.
    pub order_key: Option<String>,
    /// Parameters recorded with the item's prediction ([`PredictRequest::with_param`]).
    pub params: Vec<(String, serde_json::Value)>,
}

impl Item {
    /// An item for `input`, without metadata.
    pub fn new(input: impl Into<Input>) -> Self {
        Self::of(Ok(input.into()))
    }

    /// An item the transport could not decode (for example a message that is not JSON): it is
    /// recorded as refused with `error` and never reaches the model.
    pub fn refused(error: Error) -> Self {
        Self::of(Err(error))
    }

    fn of(input: Result<Input>) -> Self {
        Item {
            request_id: None,
            input,
            routing_key: None,
            arrival: None,
            meta: (),
            resources: Resources::default(),
            order_key: None,
            params: Vec::new(),
        }
    }
}

impl<M> Item<M> {
    /// Carries `meta` through the runner with this item.
    pub fn with_meta<N>(self, meta: N) -> Item<N> {
        Item {
            request_id: self.request_id,
            input: self.input,
            routing_key: self.routing_key,
            arrival: self.arrival,
            meta,
            resources: self.resources,
            order_key: self.order_key,
            params: self.params,
        }
    }

    /// Adds a value the predictor can read with [`Context::resource`](crate::Context::resource).
    pub fn with_resource(mut self, resource: impl std::any::Any + Send + Sync) -> Self {
        self.resources.push(resource);
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets the routing key.
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Orders the item by `key` in [`OutputOrder::PerKey`] instead of its routing key.
    pub fn with_order_key(mut self, key: impl Into<String>) -> Self {
        self.order_key = Some(key.into());
        self
    }

    /// Records `tag` = `value` with the item's prediction, as the predictor's
    /// [`log_param`](crate::log_param) would.
    pub fn with_param(
        mut self,
        tag: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.params.push((tag.into(), value.into()));
        self
    }

    /// Sets when the transport received the item.
    pub fn with_arrival(mut self, arrival: Arrival) -> Self {
        self.arrival = Some(arrival);
        self
    }
}

/// One item's result, as a [`Runner`] delivers it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Processed<M = ()> {
    /// The item's request id: the source's, or the one generated for it.
    pub request_id: String,
    /// The item's routing key.
    pub routing_key: Option<String>,
    /// When it arrived.
    pub arrival: Arrival,
    /// Whether it was refused before the model (its input could not be decoded).
    pub refused: bool,
    /// The prediction, or why there is none.
    pub result: Result<Prediction>,
    /// The transport's metadata, as given.
    pub meta: M,
}

/// The order in which a [`Runner`] delivers results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputOrder {
    /// In input order: what a Kafka partition (one runner per partition) or a batch file that
    /// must be written row by row needs. A slow item holds back the ones after it.
    #[default]
    Input,
    /// In input order among items with the same order key ([`Item::order_key`], else the
    /// routing key; items without one are one key); items with different keys pass each
    /// other.
    PerKey,
    /// As each finishes.
    Completion,
}

/// Makes bounded, back-pressured `predict` calls on an endpoint for a stream of [`Item`]s and
/// delivers one [`Processed`] per item.
///
/// At most [`Runner::concurrency`] items are taken from the stream and not yet delivered at
/// once; the stream is not polled for more until one is delivered. Items wait for capacity
/// there, in the source (the Kafka consumer, the file being read): a runner never sheds an
/// item with [`Error::Overloaded`] as HTTP's admission does, because it never has more calls
/// running or queued than the endpoint's `concurrency` and `queue_depth` worker settings
/// admit. Those beyond `concurrency` wait in the endpoint's queue, their wait counted in their
/// latency and their timeout.
///
/// The endpoint's slots are shared by everything that calls it: when another transport (a
/// web service on the same endpoint) or a shadow version's mirrored calls also take them,
/// give the endpoint a `queue_depth` larger than the runner's concurrency, so that the
/// runner's calls wait there rather than being shed.
///
/// By default each prediction runs in its own Tokio task (a run must be polled inside a Tokio
/// runtime), so that predictors which answer inline use every core; [`Spawn::WhenPending`]
/// spares the task for predictions that answer at once. A dropped [`Run`] does not cancel the
/// calls it started: they finish and are recorded.
///
/// # Contract
/// What a transport owes the endpoint, and what the runner does of it for the transport that
/// uses it. Every transport (HTTP included, which does not use the runner) passes the
/// conformance suite `conformance::transport`.
/// - **Arrival at receipt.** An item's arrival is stamped when the transport receives it
///   (the message is polled, the row is read), before decoding: its latency and its timeout
///   count from then, queueing included. The runner stamps items that arrive without one when
///   it takes them from the stream; a lazy stream therefore reads its source only as capacity
///   frees up.
/// - **Request ids.** Each item carries the source's id when it has one; otherwise one is
///   generated with [`new_request_id`] (the runner does this). The id is in the record, and
///   the transport hands it back with the output (a header, a column).
/// - **Refused before the model.** A failure before the model (an undecodable message, a row
///   that does not parse, a payload too large) is reported with [`Endpoint::refused`], never
///   dropped silently and never sent to the model: pass it as [`Item::refused`].
/// - **One record per item.** Every item the transport takes gets exactly one record (through
///   `predict` or `refused`) and exactly one output, failures included; items the transport
///   never took (left in the source at shutdown) get neither.
/// - **Order as declared.** The transport says in which [`OutputOrder`] its outputs come out
///   and keeps to it.
/// - **Drain on shutdown.** On shutdown a transport stops taking new items, finishes every
///   item in flight and delivers its output, and only then returns ([`Runner::run_until`]).
/// - **Wait, don't shed.** A stream or a batch waits for capacity; only request/response
///   servers, whose callers can retry, shed load with [`Error::Overloaded`].
#[derive(Clone)]
pub struct Runner {
    endpoint: Arc<DynEndpoint>,
    concurrency: usize,
    order: OutputOrder,
    spawn: Spawn,
}

/// Where a [`Runner`] runs each prediction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spawn {
    /// In its own Tokio task, so that predictors which compute inline use every core.
    #[default]
    Always,
    /// Polled once in the run's own task first; only a prediction that does not answer at
    /// that poll (it waits for the blocking pool, I/O, a timer or a slot) moves to its own
    /// task. For transports whose cost per item matters as much as the model's (a Kafka
    /// stream): a model that answers in microseconds then costs no task, no wake-up and no
    /// hop between threads. An inline predictor that computes for long runs on the run's
    /// thread, one at a time (a [`predictor_fn`](crate::predictor_fn) that is slow moves
    /// to the blocking pool by itself, and so to a task).
    WhenPending,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("endpoint", &self.endpoint.name())
            .field("concurrency", &self.concurrency)
            .field("order", &self.order)
            .field("spawn", &self.spawn)
            .finish()
    }
}

impl Runner {
    /// A runner for `endpoint`, delivering in [`OutputOrder::Input`], with the default
    /// concurrency: the endpoint's `threads` worker setting (the number of cores by default),
    /// or its `max_batch_size` when larger so that batches can fill, at most its
    /// `concurrency`.
    pub fn new(endpoint: impl Endpoint) -> Self {
        let workers = &endpoint.spec().server.workers;
        let default = workers.threads.max(workers.max_batch_size);
        let mut runner = Runner {
            endpoint: Arc::new(endpoint),
            concurrency: 1,
            order: OutputOrder::default(),
            spawn: Spawn::default(),
        };
        runner.concurrency = runner.clamped(default);
        runner
    }

    /// At most `concurrency` items in flight (at least one, at most the endpoint's
    /// `concurrency` plus `queue_depth` worker settings, beyond which the endpoint would shed
    /// them). Items beyond `concurrency` wait in the endpoint's queue, where their wait counts
    /// toward their latency and timeout, as it does for a request queued on the web service.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = self.clamped(concurrency);
        self
    }

    /// Runs each prediction as `spawn` says ([`Spawn::Always`] by default).
    pub fn with_spawn(mut self, spawn: Spawn) -> Self {
        self.spawn = spawn;
        self
    }

    /// Where each prediction runs.
    pub fn spawn(&self) -> Spawn {
        self.spawn
    }

    /// Delivers results in `order`.
    pub fn with_order(mut self, order: OutputOrder) -> Self {
        self.order = order;
        self
    }

    /// Items in flight at most.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The order results are delivered in.
    pub fn order(&self) -> OutputOrder {
        self.order
    }

    /// The endpoint it calls.
    pub fn endpoint(&self) -> &Arc<DynEndpoint> {
        &self.endpoint
    }

    fn clamped(&self, concurrency: usize) -> usize {
        let workers = &self.endpoint.spec().server.workers;
        let admitted = workers.concurrency.saturating_add(workers.queue_depth);
        concurrency.min(admitted).max(1)
    }

    /// Runs every item of `items` until the stream ends; see [`Runner::run_until`].
    pub fn run<M, S>(&self, items: S) -> Run<M>
    where
        M: Send + 'static,
        S: Stream<Item = Item<M>> + Send + 'static,
    {
        self.run_until(items, futures::future::pending())
    }

    /// Runs the items of `items` until the stream ends or `stop` completes, and delivers one
    /// [`Processed`] per item taken, in the runner's [`OutputOrder`].
    ///
    /// Once `stop` completes the runner takes no more items (the rest stay in the stream),
    /// finishes and delivers those in flight, then ends: the drain a transport owes on
    /// shutdown.
    pub fn run_until<M, S, F>(&self, items: S, stop: F) -> Run<M>
    where
        M: Send + 'static,
        S: Stream<Item = Item<M>> + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Run {
            endpoint: Arc::clone(&self.endpoint),
            capacity: self.concurrency,
            order: self.order,
            spawn: self.spawn,
            source: Some(items.boxed()),
            stop: Some(stop.boxed()),
            running: FuturesUnordered::new(),
            window: 0,
            sequences: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Runs `items` until the stream ends or `stop` completes (as [`Runner::run_until`]) and
    /// writes each result to `output` as it is delivered, then flushes it: rows → runner →
    /// writer, consumer → runner → producer.
    ///
    /// When `output` fails, the runner takes no more items, lets those in flight finish (they
    /// are recorded, not written), and returns the error.
    pub async fn run_into<M, S, F, O>(
        &self,
        items: S,
        output: &mut O,
        stop: F,
    ) -> Result<RunSummary>
    where
        M: Send + 'static,
        S: Stream<Item = Item<M>> + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
        O: OutputSink<M> + ?Sized,
    {
        let (failed, on_failure) = futures::channel::oneshot::channel::<()>();
        let stop = futures::future::select(stop.boxed(), on_failure.map(drop)).map(drop);
        let mut run = self.run_until(items, stop);
        let mut summary = RunSummary::default();
        let mut failed = Some(failed);
        let mut error = None;
        while let Some(processed) = run.next().await {
            if error.is_some() {
                continue;
            }
            summary.count(&processed);
            if let Err(e) = output.write(processed).await {
                error = Some(e);
                if let Some(failed) = failed.take() {
                    // The run only needs to hear it; it may have ended already.
                    let _ = failed.send(());
                }
            }
        }
        match error {
            Some(error) => Err(error),
            None => output.flush().await.map(|()| summary),
        }
    }
}

/// Where a [`Runner`] writes results in [`Runner::run_into`]: a Kafka producer, a batch
/// output file.
///
/// # Contract
/// - `write` is called once per item, in the runner's [`OutputOrder`], and not again after it
///   fails; `flush` is called once after the last `write` when none failed.
/// - A result is delivered once `write` returns `Ok`: only then may the transport
///   acknowledge its source (commit a Kafka offset).
#[async_trait]
pub trait OutputSink<M>: Send {
    /// Writes one item's result.
    async fn write(&mut self, processed: Processed<M>) -> Result<()>;

    /// Makes every written result durable; nothing to do by default.
    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Keeps every result in memory, in delivery order.
#[async_trait]
impl<M: Send> OutputSink<M> for Vec<Processed<M>> {
    async fn write(&mut self, processed: Processed<M>) -> Result<()> {
        self.push(processed);
        Ok(())
    }
}

/// What [`Runner::run_into`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Items written.
    pub items: usize,
    /// Of which predicted.
    pub predicted: usize,
    /// Of which refused before the model.
    pub refused: usize,
    /// Of which failed in the model or the endpoint.
    pub failed: usize,
}

impl RunSummary {
    fn count<M>(&mut self, processed: &Processed<M>) {
        self.items += 1;
        match (&processed.result, processed.refused) {
            (Ok(_), _) => self.predicted += 1,
            (Err(_), true) => self.refused += 1,
            (Err(_), false) => self.failed += 1,
        }
    }
}

/// The stream of results of [`Runner::run`] and [`Runner::run_until`]: one [`Processed`] per
/// item taken, ending once the input has ended (or the stop signal has come) and every item
/// in flight is delivered.
#[must_use = "a run does nothing until its stream is polled"]
pub struct Run<M> {
    endpoint: Arc<DynEndpoint>,
    capacity: usize,
    order: OutputOrder,
    spawn: Spawn,
    /// `None` once the input ended or the stop signal came: nothing more is taken.
    source: Option<BoxStream<'static, Item<M>>>,
    stop: Option<BoxFuture<'static, ()>>,
    running: FuturesUnordered<BoxFuture<'static, Sequenced<M>>>,
    /// Items taken and not yet delivered: running, or done and held back by the order.
    window: usize,
    /// Per ordering key: the next sequence number to hand out and to deliver, and the results
    /// held back until those before them are delivered.
    sequences: HashMap<Option<String>, Sequence<M>>,
    ready: VecDeque<Processed<M>>,
}

impl<M> fmt::Debug for Run<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("endpoint", &self.endpoint.name())
            .field("capacity", &self.capacity)
            .field("order", &self.order)
            .field("taking", &self.source.is_some())
            .field("in_flight", &self.window)
            .finish()
    }
}

/// A finished item and its place in the output order (`None` when unordered).
struct Sequenced<M> {
    place: Option<(Option<String>, u64)>,
    processed: Processed<M>,
}

/// The items of one ordering key: the next sequence number to hand out, the next one to
/// deliver, and the results held back until those before them are delivered.
struct Sequence<M> {
    next: u64,
    deliver: u64,
    held: BTreeMap<u64, Processed<M>>,
}

impl<M: Send + 'static> Run<M> {
    /// The ordering key of an item (`None` for all of them in [`OutputOrder::Input`]), or no
    /// key at all in [`OutputOrder::Completion`].
    fn order_key(&self, key: Option<String>) -> Option<Option<String>> {
        match self.order {
            OutputOrder::Input => Some(None),
            OutputOrder::PerKey => Some(key),
            OutputOrder::Completion => None,
        }
    }

    /// The next place in the output order for an item of `key`.
    fn place(&mut self, key: Option<Option<String>>) -> Option<(Option<String>, u64)> {
        let key = key?;
        let sequence = self.sequences.entry(key.clone()).or_insert(Sequence {
            next: 0,
            deliver: 0,
            held: BTreeMap::new(),
        });
        sequence.next += 1;
        Some((key, sequence.next - 1))
    }

    /// Delivers an item finished as it was taken: at once when nothing of its key is in
    /// flight or held (no sequence to keep), else in its place.
    fn finished_now(&mut self, key: Option<Option<String>>, processed: Processed<M>) {
        match key {
            Some(key) if self.sequences.contains_key(&key) => {
                let place = self.place(Some(key));
                self.finish(Sequenced { place, processed });
            }
            _ => self.deliver(processed),
        }
    }

    /// Starts one item: a prediction (polled in place first with [`Spawn::WhenPending`],
    /// else in its own task), or a refusal recorded at once.
    fn start(&mut self, item: Item<M>, cx: &mut TaskContext<'_>) {
        let Item {
            request_id,
            input,
            routing_key,
            arrival,
            meta,
            resources,
            order_key,
            params,
        } = item;
        let arrival = arrival.unwrap_or_else(Arrival::now);
        let request_id = request_id.unwrap_or_else(new_request_id);
        let key = self.order_key(order_key.or_else(|| routing_key.clone()));
        self.window += 1;
        let input = match input {
            Ok(input) => input,
            Err(error) => {
                let result = Err(same_error(&error));
                self.endpoint
                    .refused(Refused::new(request_id.clone(), error, arrival));
                let processed = Processed {
                    request_id,
                    routing_key,
                    arrival,
                    refused: true,
                    result,
                    meta,
                };
                return self.finished_now(key, processed);
            }
        };
        let mut request = PredictRequest::new(input)
            .with_request_id(request_id.clone())
            .with_arrival(arrival);
        request.routing_key = routing_key.clone();
        request.resources = resources;
        request.params = params;
        // Routed now, in input order: a version switch falls between two items.
        request.routing = self.endpoint.lifecycle().map(Lifecycle::snapshot);
        let endpoint = Arc::clone(&self.endpoint);
        let mut call: BoxFuture<'static, Result<Prediction>> =
            Box::pin(async move { endpoint.predict(request).await });
        let processed = move |result| Processed {
            request_id,
            routing_key,
            arrival,
            refused: false,
            result,
            meta,
        };
        if self.spawn == Spawn::WhenPending {
            // A panic in this poll is the item's failure, as it would be in its own task.
            let first = std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx)));
            let result = match first {
                Ok(Poll::Pending) => None,
                Ok(Poll::Ready(result)) => Some(result),
                Err(panic) => Some(Err(Error::Panicked {
                    message: panic_message(&*panic),
                })),
            };
            if let Some(result) = result {
                return self.finished_now(key, processed(result));
            }
        }
        let place = self.place(key);
        let task = tokio::spawn(call);
        self.running.push(
            async move {
                let result = task.await.unwrap_or_else(|join| Err(join.into()));
                Sequenced {
                    place,
                    processed: processed(result),
                }
            }
            .boxed(),
        );
    }

    /// Queues `done` for delivery if its turn has come, with the held results it frees.
    fn finish(&mut self, done: Sequenced<M>) {
        let Some((key, seq)) = done.place else {
            self.deliver(done.processed);
            return;
        };
        let Some(sequence) = self.sequences.get_mut(&key) else {
            unreachable!("a place is handed out from its key's sequence");
        };
        sequence.held.insert(seq, done.processed);
        let mut freed = Vec::new();
        while let Some(next) = sequence.held.remove(&sequence.deliver) {
            sequence.deliver += 1;
            freed.push(next);
        }
        if sequence.deliver == sequence.next {
            // Nothing of this key is in flight: forget it, so distinct keys do not pile up.
            self.sequences.remove(&key);
        }
        freed
            .into_iter()
            .for_each(|processed| self.deliver(processed));
    }

    fn deliver(&mut self, processed: Processed<M>) {
        self.window -= 1;
        self.ready.push_back(processed);
    }
}

// Nothing in a run is pinned in place (its futures and stream are boxed), so it may move
// whatever `M` is.
impl<M> Unpin for Run<M> {}

impl<M: Send + 'static> Stream for Run<M> {
    type Item = Processed<M>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(processed) = this.ready.pop_front() {
                return Poll::Ready(Some(processed));
            }
            let stopped = this
                .stop
                .as_mut()
                .is_some_and(|stop| stop.poll_unpin(cx).is_ready());
            if stopped {
                this.stop = None;
                this.source = None;
            }
            // Back-pressure: the source is asked for an item only when there is room for it,
            // and not while results wait to be handed out (items that finish as they are
            // taken would otherwise drain the whole source first).
            while this.window < this.capacity && this.ready.is_empty() {
                let Some(source) = &mut this.source else {
                    break;
                };
                match source.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => this.start(item, cx),
                    Poll::Ready(None) => this.source = None,
                    Poll::Pending => break,
                }
            }
            if !this.ready.is_empty() {
                continue;
            }
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => this.finish(done),
                Poll::Ready(None) if this.source.is_none() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A copy of `error` for the transport's output, while the original goes to the record: the
/// same variant for errors a transport makes before the model, the same message and kind of
/// fault for the others.
fn same_error(error: &Error) -> Error {
    match error {
        Error::InvalidRequest { reason } => Error::invalid_request(reason.clone()),
        Error::InvalidArgument {
            position,
            expected,
            reason,
        } => Error::InvalidArgument {
            position: *position,
            expected,
            reason: reason.clone(),
        },
        Error::ArgumentCount { expected, got } => Error::ArgumentCount {
            expected: *expected,
            got: *got,
        },
        Error::Rejected { reason } => Error::rejected(reason.clone()),
        Error::PayloadTooLarge { limit } => Error::PayloadTooLarge { limit: *limit },
        Error::Timeout { after } => Error::Timeout { after: *after },
        Error::NotReady { endpoint } => Error::NotReady {
            endpoint: endpoint.clone(),
        },
        other if other.is_client_error() => Error::invalid_request(other.to_string()),
        other => Error::Predictor {
            source: other.to_string().into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, InMemoryMetrics, ModelEndpoint, Predictor};
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Echoes `{"item": i, "sleep_ms": ms}` after sleeping `ms`, and counts how many run at once.
    #[derive(Debug, Default)]
    struct Sleeper {
        running: AtomicUsize,
        most: AtomicUsize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Predictor for Sleeper {
        async fn predict(&self, input: Input, _ctx: &Context) -> Result<Value> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let value = input.to_json();
            // No sleep at all for 0: the prediction answers at its first poll.
            let ms = value["sleep_ms"].as_u64().unwrap_or(0);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(value)
        }
    }

    fn endpoint(
        sleeper: &Arc<Sleeper>,
        concurrency: &str,
    ) -> (ModelEndpoint, Arc<InMemoryMetrics>) {
        let metrics = Arc::new(InMemoryMetrics::new());
        let endpoint = ModelEndpoint::builder("runner", Arc::clone(sleeper))
            .worker_setting("concurrency", concurrency)
            .unwrap()
            .metric_sink(metrics.clone())
            .build()
            .unwrap();
        (endpoint, metrics)
    }

    fn item(i: usize, sleep_ms: u64) -> Item<usize> {
        Item::new(json!({"item": i, "sleep_ms": sleep_ms})).with_meta(i)
    }

    fn output_item<M>(processed: &Processed<M>) -> u64 {
        processed.result.as_ref().expect("predicted").output["item"]
            .as_u64()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_far_beyond_capacity_wait_and_none_is_shed() {
        let sleeper = Arc::new(Sleeper::default());
        // No queue: HTTP would shed every request beyond the second with 503.
        let (endpoint, metrics) = endpoint(&sleeper, "2");
        let runner = Runner::new(endpoint).with_concurrency(64);
        assert_eq!(
            runner.concurrency(),
            2,
            "clamped to what the endpoint admits"
        );
        let taken = Arc::new(AtomicUsize::new(0));
        let items = futures::stream::iter(0..300).map({
            let taken = Arc::clone(&taken);
            move |i| {
                taken.fetch_add(1, Ordering::SeqCst);
                item(i, 1)
            }
        });
        let mut run = runner.run(items);
        let mut delivered = 0;
        while let Some(processed) = run.next().await {
            assert!(
                taken.load(Ordering::SeqCst) <= delivered + 2,
                "the source is read only as capacity frees up"
            );
            assert_eq!(output_item(&processed), delivered as u64);
            assert_eq!(processed.meta, delivered);
            delivered += 1;
        }
        assert_eq!(delivered, 300);
        assert_eq!(sleeper.most.load(Ordering::SeqCst), 2);
        let statuses: Vec<u16> = metrics.requests().iter().map(|e| e.status).collect();
        assert_eq!(statuses.len(), 300, "one event per item");
        assert!(
            statuses.iter().all(|&s| s == 200),
            "none refused: {statuses:?}"
        );
    }

    #[tokio::test]
    async fn input_order_holds_back_fast_items_behind_slow_ones() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, _) = endpoint(&sleeper, "4");
        let runner = Runner::new(endpoint).with_concurrency(4);
        // Later items are faster: they finish first and must wait their turn.
        let items = futures::stream::iter((0..12).map(|i| item(i, 60 - 5 * i as u64)));
        let order: Vec<u64> = runner.run(items).map(|p| output_item(&p)).collect().await;
        assert_eq!(order, (0..12).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn per_key_order_lets_keys_pass_each_other() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, _) = endpoint(&sleeper, "8");
        let runner = Runner::new(endpoint)
            .with_concurrency(8)
            .with_order(OutputOrder::PerKey);
        // Key "slow" has one long item first; key "fast" items are quick.
        let items = futures::stream::iter((0..8).map(|i| {
            let (key, ms) = if i % 2 == 0 {
                ("slow", 80)
            } else {
                ("fast", 1)
            };
            item(i, ms).with_routing_key(key)
        }));
        let mut run = runner.run(items);
        let mut order: Vec<(Option<String>, u64)> = Vec::new();
        while let Some(p) = run.next().await {
            order.push((p.routing_key.clone(), output_item(&p)));
        }
        assert!(
            run.sequences.is_empty(),
            "keys with nothing in flight are forgotten"
        );
        for key in ["slow", "fast"] {
            let of_key: Vec<u64> = order
                .iter()
                .filter(|(k, _)| k.as_deref() == Some(key))
                .map(|(_, i)| *i)
                .collect();
            let mut sorted = of_key.clone();
            sorted.sort_unstable();
            assert_eq!(of_key, sorted, "key {key} keeps input order");
            assert_eq!(of_key.len(), 4);
        }
        assert_eq!(
            order[0].0.as_deref(),
            Some("fast"),
            "fast items are not held back by the other key: {order:?}"
        );
    }

    #[tokio::test]
    async fn completion_order_delivers_as_each_finishes() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, _) = endpoint(&sleeper, "4");
        let runner = Runner::new(endpoint)
            .with_concurrency(4)
            .with_order(OutputOrder::Completion);
        let items = futures::stream::iter([item(0, 150), item(1, 1)]);
        let order: Vec<u64> = runner.run(items).map(|p| output_item(&p)).collect().await;
        assert_eq!(order, [1, 0]);
    }

    #[derive(Debug, Default)]
    struct Refusals(std::sync::Mutex<Vec<(String, u16)>>);

    impl Endpoint for Refusals {
        fn name(&self) -> &str {
            "refusals"
        }
        fn spec(&self) -> &crate::EndpointSpec {
            static SPEC: std::sync::OnceLock<crate::EndpointSpec> = std::sync::OnceLock::new();
            SPEC.get_or_init(|| {
                crate::EndpointSpec::new("refusals", crate::ModelRef::new("m", "1"))
            })
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn predict<'a, 'f>(
            &'a self,
            request: PredictRequest,
        ) -> Pin<Box<dyn Future<Output = Result<Prediction>> + Send + 'f>>
        where
            'a: 'f,
            Self: 'f,
        {
            let input = request.input.to_json();
            assert_ne!(input, json!("panic"), "the endpoint panicked on purpose");
            let output = json!({"input": input, "routing_key": request.routing_key});
            Box::pin(async move {
                Ok(Prediction {
                    output,
                    request_id: request.request_id.unwrap_or_default(),
                    model_version: "1".into(),
                    elapsed: Duration::ZERO,
                })
            })
        }
        fn refused(&self, refused: Refused) {
            let status = refused.error.status();
            self.0.lock().unwrap().push((refused.request_id, status));
        }
    }

    #[tokio::test]
    async fn undecodable_items_are_refused_in_their_place_without_the_model() {
        let endpoint = Arc::new(Refusals::default());
        let items = futures::stream::iter([
            Item::new(json!(1)).with_request_id("a"),
            Item::refused(Error::PayloadTooLarge { limit: 3 }).with_request_id("b"),
            Item::new(json!(3)),
        ]);
        let out: Vec<Processed> = Runner::new(Arc::clone(&endpoint))
            .run(items)
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].request_id, "a");
        assert!(!out[0].refused);
        assert!(out[1].refused);
        assert!(matches!(
            out[1].result,
            Err(Error::PayloadTooLarge { limit: 3 })
        ));
        assert_eq!(*endpoint.0.lock().unwrap(), [("b".to_owned(), 413)]);
        assert_eq!(out[2].request_id.len(), 32, "a generated id");
        assert_eq!(
            out[2].result.as_ref().unwrap().request_id,
            out[2].request_id,
            "the endpoint got the id the output carries"
        );
    }

    #[tokio::test]
    async fn the_routing_key_reaches_the_endpoint() {
        let items = futures::stream::iter([Item::new(json!(1)).with_routing_key("user-7")]);
        let out: Vec<Processed> = Runner::new(Refusals::default()).run(items).collect().await;
        let prediction = out[0].result.as_ref().unwrap();
        assert_eq!(prediction.output["routing_key"], json!("user-7"));
        assert_eq!(out[0].routing_key.as_deref(), Some("user-7"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_place_items_that_answer_at_once_pass_a_waiting_key_and_wait_behind_their_own() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, _) = endpoint(&sleeper, "8");
        let runner = Runner::new(endpoint)
            .with_concurrency(8)
            .with_order(OutputOrder::PerKey)
            .with_spawn(Spawn::WhenPending);
        // Key "a" starts with an item that waits; the others answer as they are taken.
        let items = futures::stream::iter(
            [(0, "a", 60), (1, "b", 0), (2, "a", 0), (3, "b", 0)]
                .map(|(i, key, ms)| item(i, ms).with_order_key(key)),
        );
        let mut run = runner.run(items);
        let mut order = Vec::new();
        while let Some(processed) = run.next().await {
            order.push(output_item(&processed));
        }
        assert_eq!(order, [1, 3, 0, 2]);
        assert!(run.sequences.is_empty(), "nothing held at the end");
        assert_eq!(sleeper.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn in_place_an_endpoint_that_panics_fails_only_that_item() {
        let items = futures::stream::iter([json!(1), json!("panic"), json!(3)].map(Item::new));
        let out: Vec<Processed> = Runner::new(Refusals::default())
            .with_spawn(Spawn::WhenPending)
            .run(items)
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert!(out[0].result.is_ok() && out[2].result.is_ok());
        assert!(
            matches!(&out[1].result, Err(Error::Panicked { message }) if message.contains("on purpose")),
            "{:?}",
            out[1].result
        );
    }

    #[tokio::test]
    async fn the_queue_depth_adds_to_what_a_runner_takes_at_once() {
        let sleeper = Arc::new(Sleeper::default());
        let endpoint = ModelEndpoint::builder("runner", Arc::clone(&sleeper))
            .worker_setting("concurrency", "2")
            .and_then(|b| b.worker_setting("queue_depth", "6"))
            .and_then(|b| b.build())
            .unwrap();
        assert_eq!(Runner::new(endpoint).with_concurrency(64).concurrency(), 8);
    }

    #[tokio::test]
    async fn an_endpoint_that_panics_fails_only_that_item() {
        let items = futures::stream::iter([json!(1), json!("panic"), json!(3)].map(Item::new));
        let out: Vec<Processed> = Runner::new(Refusals::default()).run(items).collect().await;
        assert_eq!(out.len(), 3);
        assert!(out[0].result.is_ok() && out[2].result.is_ok());
        assert!(
            matches!(&out[1].result, Err(Error::Panicked { message }) if message.contains("on purpose")),
            "{:?}",
            out[1].result
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_finishes_the_items_in_flight_and_takes_no_more() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, metrics) = endpoint(&sleeper, "3");
        let runner = Runner::new(endpoint).with_concurrency(3);
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let taken = Arc::new(AtomicUsize::new(0));
        let items = futures::stream::iter(0..100).map({
            let taken = Arc::clone(&taken);
            move |i| {
                taken.fetch_add(1, Ordering::SeqCst);
                item(i, 200)
            }
        });
        let run = runner.run_until(items, stopped.map(drop));
        let collect = tokio::spawn(run.collect::<Vec<_>>());
        while sleeper.calls.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(()).unwrap();
        let delivered = collect.await.unwrap();
        assert_eq!(delivered.len(), 3, "the three in flight are delivered");
        assert!(delivered.iter().all(|p| p.result.is_ok()));
        assert_eq!(
            taken.load(Ordering::SeqCst),
            3,
            "the rest stay in the source"
        );
        assert_eq!(sleeper.running.load(Ordering::SeqCst), 0);
        assert_eq!(metrics.requests().len(), 3);
    }

    #[derive(Debug, Default)]
    struct Failing {
        written: usize,
        flushed: bool,
    }

    #[async_trait]
    impl OutputSink<usize> for Failing {
        async fn write(&mut self, _processed: Processed<usize>) -> Result<()> {
            self.written += 1;
            if self.written == 5 {
                return Err(Error::Storage {
                    location: "out".into(),
                    source: "disk full".into(),
                });
            }
            Ok(())
        }
        async fn flush(&mut self) -> Result<()> {
            self.flushed = true;
            Ok(())
        }
    }

    #[tokio::test]
    async fn run_into_writes_every_result_then_flushes() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, _) = endpoint(&sleeper, "4");
        let runner = Runner::new(endpoint);
        let items =
            futures::stream::iter((0..20).map(|i| item(i, 0))).chain(futures::stream::iter([
                Item::refused(Error::invalid_request("not JSON")).with_meta(20),
            ]));
        let mut written = Vec::new();
        let summary = runner
            .run_into(items, &mut written, futures::future::pending())
            .await
            .unwrap();
        assert_eq!(
            (
                summary.items,
                summary.predicted,
                summary.refused,
                summary.failed
            ),
            (21, 20, 1, 0)
        );
        let metas: Vec<usize> = written.iter().map(|p| p.meta).collect();
        assert_eq!(metas, (0..21).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failing_output_stops_the_run_after_its_in_flight_items() {
        let sleeper = Arc::new(Sleeper::default());
        let (endpoint, metrics) = endpoint(&sleeper, "2");
        let runner = Runner::new(endpoint).with_concurrency(2);
        let items = futures::stream::iter((0..1000).map(|i| item(i, 1)));
        let mut output = Failing::default();
        let error = runner
            .run_into(items, &mut output, futures::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Storage { .. }), "{error}");
        assert_eq!(output.written, 5, "nothing is written after the failure");
        assert!(!output.flushed);
        let recorded = metrics.requests().len();
        assert!(
            (5..=7).contains(&recorded),
            "only the items in flight finish after the failure: {recorded}"
        );
        assert_eq!(sleeper.running.load(Ordering::SeqCst), 0, "drained");
    }
}

#[cfg(test)]
mod in_place_tests {
    use super::*;
    use crate::conformance::transport::{self, RunnerHarness, TransportKit};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runner_that_polls_in_place_first_conforms_in_every_order() {
        for order in [
            OutputOrder::Input,
            OutputOrder::PerKey,
            OutputOrder::Completion,
        ] {
            let kit = TransportKit::new();
            let runner = Runner::new(kit.endpoint())
                .with_order(order)
                .with_spawn(Spawn::WhenPending);
            transport::transport(&mut RunnerHarness::new(runner), &kit).await;
        }
    }
}

#[cfg(test)]
mod switch_tests {
    use super::*;
    use crate::{ModelEndpoint, ModelUpdate, predictor_fn};
    use serde_json::json;

    /// A version switch made between taking two items falls between them, even though the
    /// predictions run in parallel tasks that may start in any order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_version_switch_falls_between_two_items_in_input_order() {
        let model = predictor_fn(|x: u64| -> Result<u64> { Ok(x) });
        let endpoint = ModelEndpoint::builder("switch", model)
            .worker_setting("concurrency", "64")
            .unwrap()
            .build()
            .unwrap();
        let lifecycle = endpoint.lifecycle().clone();
        let items = futures::stream::iter(0..400u64).map(move |i| {
            // Within the first items taken at once, while those before it wait to start.
            if i == 20 {
                let next = predictor_fn(|x: u64| -> Result<u64> { Ok(x) });
                lifecycle
                    .update_model(ModelUpdate::new(next), None)
                    .unwrap();
            }
            Item::new(json!(i)).with_order_key((i % 3).to_string())
        });
        let runner = Runner::new(endpoint)
            .with_concurrency(32)
            .with_order(OutputOrder::PerKey);
        // On a worker thread, as a transport's task runs: a task it spawns may wait in that
        // thread's LIFO slot, behind the items taken after it.
        let outputs: Vec<_> = tokio::spawn(async move { runner.run(items).collect().await })
            .await
            .unwrap();
        assert_eq!(outputs.len(), 400);
        for processed in outputs {
            let prediction = processed.result.unwrap();
            let i = prediction.output.as_u64().unwrap();
            let expected = if i < 20 { "1" } else { "2" };
            assert_eq!(&*prediction.model_version, expected, "item {i}");
        }
    }
}
