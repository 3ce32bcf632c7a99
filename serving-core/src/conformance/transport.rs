//! The transport suite: what every transport (HTTP, Kafka, batch, the [`Runner`] itself) owes
//! the endpoint, as the `# Contract` of [`Runner`] writes it down.
//!
//! A transport's test harness implements [`TransportHarness`] over the transport under test,
//! serving the endpoint of a [`TransportKit`]; the suite then submits items through it and
//! checks what the transport delivered against the records the endpoint made:
//!
//! ```
//! # use serving_core::conformance::transport::{self, TransportKit};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let kit = TransportKit::new();
//! let mut harness = transport::RunnerHarness::new(serving_core::runner::Runner::new(kit.endpoint()));
//! transport::transport(&mut harness, &kit).await;
//! # }
//! ```
//!
//! A harness for another transport does the same over its own wire. For Kafka, for example:
//! produce each submission to the input topic (its id and routing key as the message's
//! header and key, an undecodable one as bytes that are not JSON), read one message per item
//! from the output topic, declare the order the stream keeps, and for the drain stop the
//! stream with its shutdown signal once `busy` completes.
//!
//! [`Runner`]: crate::endpoint::runner::Runner

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::endpoint::runner::{Item, OutputOrder, Runner};
use crate::{
    Arrival, Context, Error, InMemoryRecords, Input, ModelEndpoint, PredictionRecord, Predictor,
    Result,
};

/// The endpoint every transport serves in the suite, and what the suite observes of it: the
/// records it makes and the calls its model gets.
///
/// The endpoint (named `transport`, model `transport` version `1`) admits two predictions at
/// once and queues up to 256 more, with a 60-second timeout. Its model echoes its input, a
/// JSON object, after sleeping the object's `sleep_ms`.
#[derive(Debug)]
pub struct TransportKit {
    endpoint: ModelEndpoint,
    records: InMemoryRecords,
    model: Arc<Echo>,
}

impl Default for TransportKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TransportKit {
    /// The endpoint's name.
    pub const ENDPOINT: &'static str = "transport";

    /// A new endpoint with no records yet.
    pub fn new() -> Self {
        let records = InMemoryRecords::new();
        let model = Arc::new(Echo::default());
        let endpoint = ModelEndpoint::builder(Self::ENDPOINT, Arc::clone(&model))
            .model(Self::ENDPOINT, "1")
            .record_sink(Arc::new(records.clone()))
            .timeout(Duration::from_secs(60))
            .worker_setting("concurrency", "2")
            .and_then(|builder| builder.worker_setting("queue_depth", "256"))
            .and_then(|builder| builder.build())
            .expect("the suite's endpoint builds");
        TransportKit {
            endpoint,
            records,
            model,
        }
    }

    /// A handle on the endpoint, for the transport under test to serve.
    pub fn endpoint(&self) -> ModelEndpoint {
        self.endpoint.clone()
    }

    /// Every record made so far, in order.
    pub fn records(&self) -> Vec<PredictionRecord> {
        self.records.records()
    }

    /// Predictions the model has started.
    pub fn started(&self) -> usize {
        self.model.started.load(Ordering::SeqCst)
    }

    /// Predictions the model has finished.
    pub fn finished(&self) -> usize {
        self.model.finished.load(Ordering::SeqCst)
    }

    /// Completes once the model has started `count` predictions in all.
    pub fn until_started(&self, count: usize) -> BoxFuture<'static, ()> {
        let model = Arc::clone(&self.model);
        Box::pin(async move {
            while model.started.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    /// The records of one part of the suite (inputs tagged `suite: tag`), by item.
    fn records_of(&self, tag: &str) -> BTreeMap<u64, Vec<PredictionRecord>> {
        let mut by_item: BTreeMap<u64, Vec<PredictionRecord>> = BTreeMap::new();
        for record in self.records() {
            let input = record.input.as_ref();
            if input.and_then(|i| i["suite"].as_str()) == Some(tag) {
                let item = input.and_then(|i| i["item"].as_u64()).expect("tagged item");
                by_item.entry(item).or_default().push(record);
            }
        }
        by_item
    }
}

/// What the suite sends through a transport.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Submission {
    /// The id the source gives the item (a header, a message key, an id column), if any.
    pub request_id: Option<String>,
    /// The routing key the source gives the item, if any.
    pub routing_key: Option<String>,
    /// The item's content.
    pub payload: Payload,
}

/// The content of a [`Submission`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// A JSON value, to send encoded as the transport expects it.
    Json(Value),
    /// Something the transport cannot decode (a body or message that is not JSON): it must
    /// be recorded as refused and never reach the model.
    Undecodable,
}

/// What a transport delivered for one item: the HTTP answer, the output message, the row
/// written.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delivered {
    /// The request id the transport reported with the output.
    pub request_id: Option<String>,
    /// The prediction, or `None` when the item failed.
    pub output: Option<Value>,
}

impl Delivered {
    /// A delivery of `output` (`None` for a failure) for `request_id`.
    pub fn new(request_id: Option<String>, output: Option<Value>) -> Self {
        Delivered { request_id, output }
    }
}

/// A transport under test, as its test harness drives it.
#[async_trait]
pub trait TransportHarness: Send {
    /// The order the transport declares for its outputs ([`OutputOrder::Completion`] for one
    /// whose items are independent requests).
    fn order(&self) -> OutputOrder;

    /// Sends every submission through the transport at once (as concurrently as it takes
    /// them) and returns what it delivered, in the order it delivered them, once it has
    /// delivered one output per submission.
    async fn submit(&mut self, items: Vec<Submission>) -> Vec<Delivered>;

    /// Sends every submission as [`TransportHarness::submit`] does, shuts the transport down
    /// (its own shutdown signal) once `busy` completes (the model is working on some items),
    /// and returns what it delivered once the shutdown has completed.
    async fn submit_then_shut_down(
        &mut self,
        items: Vec<Submission>,
        busy: BoxFuture<'static, ()>,
    ) -> Vec<Delivered>;
}

fn tagged(tag: &str, item: usize, sleep_ms: u64) -> Value {
    json!({"suite": tag, "item": item, "sleep_ms": sleep_ms})
}

fn submission(payload: Payload) -> Submission {
    Submission {
        request_id: None,
        routing_key: None,
        payload,
    }
}

fn item_of(delivered: &Delivered) -> Option<u64> {
    delivered.output.as_ref()?["item"].as_u64()
}

/// Every item gets exactly one record and one output; request ids are unique, the source's
/// are kept and generated ones are echoed; arrival is recorded at receipt, so latency
/// includes the time an item waited for capacity.
pub async fn records(harness: &mut dyn TransportHarness, kit: &TransportKit) {
    const ITEMS: usize = 16;
    const SLEEP_MS: u64 = 25;
    let tag = "records";
    let items = (0..ITEMS)
        .map(|i| Submission {
            request_id: (i % 2 == 0).then(|| format!("records-{i}")),
            ..submission(Payload::Json(tagged(tag, i, SLEEP_MS)))
        })
        .collect();
    let before = SystemTime::now();
    let delivered = harness.submit(items).await;
    let after = SystemTime::now();

    assert_eq!(delivered.len(), ITEMS, "one output per item: {delivered:?}");
    let by_item: BTreeMap<u64, &Delivered> = delivered
        .iter()
        .map(|d| {
            (
                item_of(d).unwrap_or_else(|| panic!("a prediction: {d:?}")),
                d,
            )
        })
        .collect();
    assert_eq!(
        by_item.len(),
        ITEMS,
        "each item delivered once: {delivered:?}"
    );

    let records = kit.records_of(tag);
    assert_eq!(records.len(), ITEMS, "a record for every item: {records:?}");
    let mut ids = BTreeSet::new();
    let mut slowest = 0.0_f64;
    for (item, records) in &records {
        let [record] = records.as_slice() else {
            panic!("item {item} has {} records: {records:?}", records.len());
        };
        assert_eq!(record.status, 200, "{record:?}");
        assert_eq!(record.model_version, "1", "{record:?}");
        assert!(ids.insert(record.request_id.clone()), "ids are unique");
        let output = by_item[item];
        assert_eq!(
            output.request_id.as_deref(),
            Some(record.request_id.as_str()),
            "the output carries the recorded request id"
        );
        if item % 2 == 0 {
            assert_eq!(
                record.request_id,
                format!("records-{item}"),
                "the source's id is kept"
            );
        } else {
            assert!(!record.request_id.is_empty(), "an id is generated");
        }
        assert!(
            before <= record.start_time && record.start_time <= after,
            "arrival is recorded when the item is received: {record:?}"
        );
        assert!(
            record.elapsed_ms >= SLEEP_MS as f64,
            "latency counts the model's time: {record:?}"
        );
        slowest = slowest.max(record.elapsed_ms);
    }
    // Two run at once: the last items waited for about seven rounds before the model saw
    // them. A transport that stamped arrival when the model starts would record ~25 ms.
    assert!(
        slowest >= 4.0 * SLEEP_MS as f64,
        "latency counts from receipt, queueing included: the slowest item took {slowest} ms"
    );
}

/// Items the transport cannot decode are recorded as refused, get an output that says they
/// failed, carry their request id, and never reach the model.
pub async fn refusals(harness: &mut dyn TransportHarness, kit: &TransportKit) {
    let tag = "refusals";
    let started = kit.started();
    let items: Vec<Submission> = (0..6)
        .map(|i| {
            let payload = if i % 3 == 1 {
                Payload::Undecodable
            } else {
                Payload::Json(tagged(tag, i, 0))
            };
            Submission {
                request_id: Some(format!("refusals-{i}")),
                ..submission(payload)
            }
        })
        .collect();
    let delivered = harness.submit(items).await;
    assert_eq!(delivered.len(), 6, "one output per item: {delivered:?}");
    assert_eq!(
        kit.started() - started,
        4,
        "refused items never reach the model"
    );
    for i in [1, 4] {
        let id = format!("refusals-{i}");
        let outputs: Vec<&Delivered> = delivered
            .iter()
            .filter(|d| d.request_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(outputs.len(), 1, "one output for {id}: {delivered:?}");
        assert_eq!(outputs[0].output, None, "{id} failed");
        let records: Vec<PredictionRecord> = kit
            .records()
            .into_iter()
            .filter(|r| r.request_id == id)
            .collect();
        let [record] = records.as_slice() else {
            panic!("{id} has {} records: {records:?}", records.len());
        };
        assert!(
            (400..500).contains(&record.status),
            "a refusal is the caller's fault: {record:?}"
        );
        assert!(
            record.error.is_some() && record.output.is_none(),
            "{record:?}"
        );
        assert_eq!(
            record.model_version, "",
            "no version answered a refused item: {record:?}"
        );
    }
    assert_eq!(kit.records_of(tag).len(), 4, "the others are predicted");
}

/// Outputs come out in the order the transport declares: later items finish first here.
pub async fn order(harness: &mut dyn TransportHarness, kit: &TransportKit) {
    const ITEMS: usize = 8;
    let tag = "order";
    let key = |i: usize| if i % 2 == 0 { "even" } else { "odd" };
    let items = (0..ITEMS)
        .map(|i| Submission {
            routing_key: Some(key(i).to_owned()),
            ..submission(Payload::Json(tagged(tag, i, 15 * (ITEMS - i) as u64)))
        })
        .collect();
    let delivered = harness.submit(items).await;
    let order: Vec<u64> = delivered
        .iter()
        .map(|d| item_of(d).unwrap_or_else(|| panic!("a prediction: {d:?}")))
        .collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..ITEMS as u64).collect::<Vec<_>>(),
        "each item once"
    );
    assert_eq!(kit.records_of(tag).len(), ITEMS, "a record for every item");
    match harness.order() {
        OutputOrder::Input => assert_eq!(order, sorted, "outputs in input order"),
        OutputOrder::PerKey => {
            for parity in [0, 1] {
                let of_key: Vec<u64> = order.iter().copied().filter(|i| i % 2 == parity).collect();
                assert!(
                    of_key.is_sorted(),
                    "outputs in input order per routing key: {order:?}"
                );
            }
        }
        _ => {}
    }
}

/// On shutdown the transport finishes and delivers every item the model is working on, and
/// returns only then; items it never took get neither a record nor an output.
///
/// It shuts the transport down: run it last.
pub async fn drain(harness: &mut dyn TransportHarness, kit: &TransportKit) {
    const ITEMS: usize = 6;
    let tag = "drain";
    let busy = kit.started() + 2;
    let items = (0..ITEMS)
        .map(|i| submission(Payload::Json(tagged(tag, i, 300))))
        .collect();
    let delivered = harness
        .submit_then_shut_down(items, kit.until_started(busy))
        .await;
    let started = kit.started();
    assert_eq!(
        kit.finished(),
        started,
        "every prediction started has finished when shutdown returns"
    );
    assert!(started >= busy, "the model was busy at shutdown");
    let records = kit.records_of(tag);
    let predicted: BTreeSet<u64> = delivered.iter().filter_map(item_of).collect();
    assert_eq!(
        predicted.len(),
        delivered.len(),
        "every item in flight succeeded: {delivered:?}"
    );
    assert!(
        predicted.len() >= 2,
        "the items in flight at shutdown were delivered: {delivered:?}"
    );
    assert_eq!(
        records.keys().copied().collect::<BTreeSet<_>>(),
        predicted,
        "a record for every item delivered, none for items never taken"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        kit.records_of(tag).len(),
        records.len(),
        "nothing is still running after shutdown"
    );
}

/// The whole suite, [`drain`] last.
pub async fn transport(harness: &mut dyn TransportHarness, kit: &TransportKit) {
    records(harness, kit).await;
    refusals(harness, kit).await;
    order(harness, kit).await;
    drain(harness, kit).await;
}

/// The [`TransportHarness`] of the [`Runner`] itself: submissions become a stream of
/// [`Item`]s (an undecodable one an [`Item::refused`]), stamped with their arrival when
/// submitted, and outputs are what the run delivers.
#[derive(Debug)]
pub struct RunnerHarness {
    runner: Runner,
}

impl RunnerHarness {
    /// Drives `runner`.
    pub fn new(runner: Runner) -> Self {
        RunnerHarness { runner }
    }

    fn items(items: Vec<Submission>) -> Vec<Item> {
        let arrival = Arrival::now();
        items
            .into_iter()
            .map(|submission| {
                let mut item = match submission.payload {
                    Payload::Json(value) => Item::new(value),
                    Payload::Undecodable => {
                        Item::refused(Error::invalid_request("the message is not JSON"))
                    }
                }
                .with_arrival(arrival);
                item.request_id = submission.request_id;
                item.routing_key = submission.routing_key;
                item
            })
            .collect()
    }
}

fn delivered(processed: crate::endpoint::runner::Processed) -> Delivered {
    Delivered {
        request_id: Some(processed.request_id),
        output: processed.result.ok().map(|prediction| prediction.output),
    }
}

#[async_trait]
impl TransportHarness for RunnerHarness {
    fn order(&self) -> OutputOrder {
        self.runner.order()
    }

    async fn submit(&mut self, items: Vec<Submission>) -> Vec<Delivered> {
        let items = futures::stream::iter(Self::items(items));
        self.runner.run(items).map(delivered).collect().await
    }

    async fn submit_then_shut_down(
        &mut self,
        items: Vec<Submission>,
        busy: BoxFuture<'static, ()>,
    ) -> Vec<Delivered> {
        let items = futures::stream::iter(Self::items(items));
        self.runner
            .run_until(items, busy)
            .map(delivered)
            .collect()
            .await
    }
}

/// The suite's model: echoes its JSON input after sleeping its `sleep_ms`, counting calls.
#[derive(Debug, Default)]
struct Echo {
    started: AtomicUsize,
    finished: AtomicUsize,
}

#[async_trait]
impl Predictor for Echo {
    async fn predict(&self, input: Input, _ctx: &Context) -> Result<Value> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let value = input.to_json();
        let sleep = Duration::from_millis(value["sleep_ms"].as_u64().unwrap_or(0));
        tokio::time::sleep(sleep).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conforms(order: OutputOrder) {
        let kit = TransportKit::new();
        let runner = Runner::new(kit.endpoint()).with_order(order);
        transport(&mut RunnerHarness::new(runner), &kit).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runner_in_input_order_conforms() {
        conforms(OutputOrder::Input).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runner_in_key_order_conforms() {
        conforms(OutputOrder::PerKey).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runner_in_completion_order_conforms() {
        conforms(OutputOrder::Completion).await;
    }

    /// A transport that breaks one rule: it stamps arrival when it hands an item to the
    /// runner rather than when it received it, or loses undecodable items.
    struct Broken {
        runner: Runner,
        late_arrival: bool,
    }

    #[async_trait]
    impl TransportHarness for Broken {
        fn order(&self) -> OutputOrder {
            self.runner.order()
        }

        async fn submit(&mut self, items: Vec<Submission>) -> Vec<Delivered> {
            let late = self.late_arrival;
            let items = RunnerHarness::items(items)
                .into_iter()
                .filter(move |item| late || item.input.is_ok())
                .map(move |mut item| {
                    if late {
                        item.arrival = None;
                    }
                    item
                });
            let stream = futures::stream::iter(items);
            self.runner.run(stream).map(delivered).collect().await
        }

        async fn submit_then_shut_down(
            &mut self,
            _items: Vec<Submission>,
            _busy: BoxFuture<'static, ()>,
        ) -> Vec<Delivered> {
            unreachable!("the broken transports fail before")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "latency counts from receipt")]
    async fn a_transport_that_stamps_arrival_late_fails() {
        let kit = TransportKit::new();
        let runner = Runner::new(kit.endpoint()).with_concurrency(2);
        let mut broken = Broken {
            runner,
            late_arrival: true,
        };
        records(&mut broken, &kit).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "one output per item")]
    async fn a_transport_that_loses_undecodable_items_fails() {
        let kit = TransportKit::new();
        let mut broken = Broken {
            runner: Runner::new(kit.endpoint()),
            late_arrival: false,
        };
        refusals(&mut broken, &kit).await;
    }
}
