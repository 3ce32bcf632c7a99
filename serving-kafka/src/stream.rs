//! [`KafkaStream`]: consumer → [`Runner`] → producer, committed exactly once (or at least once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serving_core::runner::{Item, OutputOrder, Processed, Run, Runner, Spawn};
use serving_core::{
    AutoscaleBounds, DynAutoscaler, Endpoint, Error, InMemoryAutoscaler, Input, Observability,
    Result, Value,
};
use tokio::sync::watch;

use crate::config::{DeliveryMode, InputFormat, KafkaStreamConfig, OutputFormat};
use crate::metrics::{KafkaMetrics, StreamContext};
use crate::scaling::{WorkerScaler, replica_bounds};

/// The consumer, with the context that counts rebalances and marks revocations.
type Inbound = StreamConsumer<StreamContext>;

/// How often the consumer lag is measured and the workers rescaled.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Header of an output naming the model version that answered.
pub const MODEL_VERSION_HEADER: &str = "serving-model-version";
/// Header of an output (or dead letter) carrying the request id; an input's own is kept as
/// its request id.
pub const REQUEST_ID_HEADER: &str = "serving-request-id";
/// Header of an output (or dead letter) naming its input: `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "serving-source";
/// Header of an output: milliseconds from receipt to prediction.
pub const LATENCY_HEADER: &str = "serving-latency-ms";
/// Header of a dead letter: the error's text.
pub const ERROR_HEADER: &str = "serving-error";
/// Header of a dead letter: the error's outcome (`rejected_input`, `model_failure`, …).
pub const STATUS_HEADER: &str = "serving-status";

/// Timeout of the blocking transactional calls; a broker outage longer than this aborts the
/// transaction and the stream rewinds to its last commit.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages in the runner at once by default (taken and not yet produced), unless the
/// endpoint admits fewer: with the runner's default (one per core) each message waited for
/// the one before it to come back from its task, which capped a trivial model at a fifth of
/// a bare consume→produce loop. Outputs still come out in input order.
const DEFAULT_WINDOW: usize = 256;

/// Messages produced at most in one go, from what the runner has ready, before the session
/// looks at its timer and signals again.
const BURST: usize = 256;

/// One consumed message, as the predictor reads it with
/// [`Context::resource`](serving_core::Context::resource).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaMessage {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp, milliseconds since the epoch, when it has one.
    pub timestamp: Option<i64>,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl KafkaMessage {
    /// `topic/partition/offset`.
    pub fn source(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    fn of(message: &impl rdkafka::Message) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                    .collect()
            })
            .unwrap_or_default();
        KafkaMessage {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(Bytes::copy_from_slice),
            headers,
        }
    }
}

/// What [`KafkaStream::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// Messages whose output (prediction or dead letter) was committed.
    pub committed: u64,
    /// Of which dead-lettered.
    pub dead_lettered: u64,
    /// Transactions (or offset commits) that succeeded.
    pub commits: u64,
    /// Transactions aborted, each followed by a rewind to the last commit.
    pub aborts: u64,
}

/// A Kafka-stream endpoint: consumes the input topics, predicts each message's value (as
/// [`Input::Bytes`]) with an endpoint, produces the predictions to the output topic and the
/// failures to the dead-letter topic, and commits the input offsets with them.
///
/// - **Exactly once** (the default): outputs and input offsets go in one transaction of at most
///   `transaction_messages` messages or `transaction_ms` milliseconds; anything we read is
///   `read_committed`. An abortable error aborts the transaction and rewinds to the committed
///   offsets.
/// - **At least once**: the offsets are committed once the outputs are acknowledged.
/// - **Start at latest**: before joining, the partitions that have no committed offset in the
///   group get their current end committed, so a restart before the first message skips
///   nothing that arrived after deployment.
/// - **Order**: each partition's outputs come out in its input order, and versions switch
///   between two of its messages (the runner routes each message when it takes it);
///   partitions pass each other, with up to the runner's concurrency per worker of messages
///   predicted at once.
/// - **Workers**: between the spec's autoscale bounds, the maximum capped by the input
///   topics' partition count (logged, never an error; the endpoint's bounds are set to the
///   capped ones); scaled each second on the consumer lag (one worker per
///   `transaction_messages` messages behind) through the [`Autoscaler`](serving_core::Autoscaler)
///   ([`KafkaStream::with_autoscaler`]). Several processes in one group share the partitions.
/// - **Observed**: every message is recorded as the endpoint records predictions, with its
///   `topic/partition/offset` as the `source` param; [`KafkaMetrics`] go to `/metrics`
///   ([`KafkaStream::with_observability`]) and to the admin status under `kafka`.
/// - **Shutdown**: when `stop` completes, the messages in flight finish, the last transaction
///   commits, and the consumer leaves the group.
#[derive(Debug)]
pub struct KafkaStream {
    runner: Runner,
    config: KafkaStreamConfig,
    name: String,
    ready: watch::Sender<bool>,
    metrics: Arc<KafkaMetrics>,
    autoscaler: Arc<DynAutoscaler>,
}

impl KafkaStream {
    /// A stream over `endpoint` with `config` (validated).
    ///
    /// # Errors
    /// What [`KafkaStreamConfig::validate`] refuses.
    pub fn new(endpoint: impl Endpoint, config: KafkaStreamConfig) -> Result<Self> {
        config.validate()?;
        let name = endpoint.name().to_owned();
        let metrics = KafkaMetrics::new(&name, config.delivery);
        if let Some(lifecycle) = endpoint.lifecycle() {
            let shown = Arc::clone(&metrics);
            lifecycle.attach_status("kafka", move || shown.status());
        }
        tracing::info!(endpoint = %name, delivery = config.delivery.as_str(), "kafka stream delivery mode");
        Ok(KafkaStream {
            runner: Runner::new(endpoint)
                .with_order(OutputOrder::PerKey)
                .with_spawn(Spawn::WhenPending)
                .with_concurrency(DEFAULT_WINDOW),
            config,
            name,
            ready: watch::channel(false).0,
            metrics,
            autoscaler: Arc::new(InMemoryAutoscaler::new()),
        })
    }

    /// Exports the stream's [`KafkaMetrics`] with `observability`'s Prometheus metrics (the
    /// `/metrics` of the web side). The endpoint's own request metrics come from
    /// instrumenting it with the same observability.
    pub fn with_observability(self, observability: &Observability) -> Self {
        if let Some(registry) = self.metrics.take_registry() {
            observability.prometheus().add_registry(registry);
        }
        self
    }

    /// Scales the workers through `autoscaler` (an [`InMemoryAutoscaler`] by default); give
    /// the endpoint the same one so that its status shows the replicas applied.
    pub fn with_autoscaler(mut self, autoscaler: Arc<DynAutoscaler>) -> Self {
        self.autoscaler = autoscaler;
        self
    }

    /// The stream's counters: commits, aborts, dead letters, rebalances, lag, workers.
    pub fn metrics(&self) -> &Arc<KafkaMetrics> {
        &self.metrics
    }

    /// At most `concurrency` messages in flight at once, taken and not yet produced (see
    /// [`Runner::with_concurrency`]); 256 by default, at most the endpoint's `concurrency`.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.runner = self.runner.with_concurrency(concurrency);
        self
    }

    /// The stream's settings.
    pub fn config(&self) -> &KafkaStreamConfig {
        &self.config
    }

    /// Turns true once the stream holds its starting offsets and has subscribed: messages
    /// produced from then on are predicted.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn client_config(&self) -> ClientConfig {
        base_client(&self.config)
    }

    /// The total partition count of the input topics, read from the brokers.
    ///
    /// # Errors
    /// [`Error::Storage`] when the brokers cannot be reached or a topic does not exist.
    pub async fn input_partitions(&self) -> Result<usize> {
        input_partitions(&self.config).await
    }

    /// The worker bounds: the endpoint's autoscale bounds, capped by `partitions`.
    fn worker_bounds(&self, partitions: usize) -> AutoscaleBounds {
        let spec = self
            .runner
            .endpoint()
            .lifecycle()
            .map_or(self.runner.endpoint().spec().autoscale, |l| l.autoscale());
        replica_bounds(&self.name, spec, partitions)
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut client = self.client_config();
        client
            .set("group.id", self.config.group_id(&self.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("isolation.level", "read_committed");
        client
    }

    fn producer_config(&self) -> ClientConfig {
        let mut client = self.client_config();
        // Without it librdkafka waits 100 ms after the CONCURRENT_TRANSACTIONS that follows a
        // commit.
        client
            .set("retry.backoff.ms", "5")
            .set("linger.ms", "1")
            .set("enable.idempotence", "true")
            .set("acks", "all");
        if self.config.delivery == DeliveryMode::ExactlyOnce {
            client
                .set("transactional.id", self.config.transactional_id(&self.name))
                .set("transaction.timeout.ms", "60000");
        }
        client
    }

    /// Commits the end of every input partition that has no committed offset in the group;
    /// returns how many it committed and how many partitions the inputs have.
    fn commit_starting_offsets(&self) -> Result<(usize, usize)> {
        let consumer: BaseConsumer = self.consumer_config().create().map_err(storage)?;
        let all = partitions_of(&consumer, &self.config.input_topics)?;
        let committed = consumer
            .committed_offsets(all, TRANSACTION_TIMEOUT)
            .map_err(storage)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (_, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), TRANSACTION_TIMEOUT)
                    .map_err(storage)?;
                start
                    .add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(high),
                    )
                    .map_err(storage)?;
            }
        }
        if start.count() > 0 {
            consumer.commit(&start, CommitMode::Sync).map_err(storage)?;
        }
        Ok((start.count(), committed.count()))
    }

    /// Runs until `stop` completes (then drains, commits and leaves the group) or a fatal
    /// Kafka error.
    ///
    /// # Errors
    /// [`Error::Storage`] when the producer is fenced (another process took its
    /// `transactional.id`) or fails fatally. Brokers that cannot be reached at start, or an
    /// input topic that does not exist yet, are waited for (logged as warnings).
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<StreamSummary> {
        let this = Arc::new(self);
        let mode = this.config.delivery;
        // A broker that is down at start is waited for, not an error.
        let started = loop {
            let attempt = Arc::clone(&this);
            let started = tokio::task::spawn_blocking(move || attempt.commit_starting_offsets())
                .await
                .map_err(|e| failure("kafka", e.to_string()))?;
            match started {
                Ok(started) => break started,
                Err(error) => {
                    tracing::warn!(endpoint = %this.name, %error, "kafka stream cannot start yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let (started, partitions) = started;
        let bounds = this.worker_bounds(partitions);
        if let Some(lifecycle) = this.runner.endpoint().lifecycle()
            && lifecycle.autoscale() != bounds
        {
            lifecycle.set_autoscale(bounds).await?;
        }
        let scaler = WorkerScaler {
            autoscaler: Arc::clone(&this.autoscaler),
            bounds,
            per_worker: this.config.transaction_messages(),
        };
        let workers = this
            .autoscaler
            .scale(&this.name, bounds, bounds.min_replicas)
            .await?;
        this.metrics.set_workers(workers);
        let revoked = Arc::new(Mutex::new(false));
        let context = StreamContext {
            metrics: Arc::clone(&this.metrics),
            revoked: Arc::clone(&revoked),
        };
        let consumer: Arc<Inbound> = Arc::new(
            this.consumer_config()
                .create_with_context(context)
                .map_err(storage)?,
        );
        let topics: Vec<&str> = this
            .config
            .input_topics
            .iter()
            .map(String::as_str)
            .collect();
        consumer.subscribe(&topics).map_err(storage)?;
        let producer: FutureProducer = this.producer_config().create().map_err(storage)?;
        if mode == DeliveryMode::ExactlyOnce {
            let p = producer.clone();
            blocking(move || p.init_transactions(TRANSACTION_TIMEOUT)).await?;
        }
        tracing::info!(
            endpoint = %this.name,
            delivery = mode.as_str(),
            group = %this.config.group_id(&this.name),
            inputs = ?this.config.input_topics,
            output = %this.config.output_topic,
            started_partitions = started,
            workers,
            min_workers = bounds.min_replicas,
            max_workers = bounds.max_replicas,
            "kafka stream started"
        );
        this.ready.send_replace(true);
        let (workers_tx, mut workers_rx) = watch::channel(workers);
        let monitor = tokio::spawn(monitor(
            Arc::clone(&this),
            Arc::clone(&consumer),
            scaler,
            workers_tx,
        ));

        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stop_tx.send(true);
        });
        let mut state = Transaction::new(Arc::clone(&this), Arc::clone(&consumer), producer);
        state.revoked = revoked;
        let result = loop {
            // Marked seen, so that only a later change ends the session.
            let workers = *workers_rx.borrow_and_update();
            state.runner = this
                .runner
                .clone()
                .with_concurrency(this.runner.concurrency() * workers as usize);
            this.metrics.set_workers(workers);
            match state.session(stop_rx.clone(), workers_rx.clone()).await {
                Ok(Session::Stopped) => break Ok(()),
                Ok(Session::Rescale) => {
                    tracing::info!(endpoint = %this.name, workers = *workers_rx.borrow(), "kafka workers rescaled");
                }
                Ok(Session::Rewind) => {
                    if let Err(error) = state.rewind().await {
                        break Err(error);
                    }
                }
                Err(error) => break Err(error),
            }
        };
        monitor.abort();
        consumer.unsubscribe();
        this.ready.send_replace(false);
        tracing::info!(
            endpoint = %this.name,
            delivery = mode.as_str(),
            committed = state.summary.committed,
            dead_lettered = state.summary.dead_lettered,
            commits = state.summary.commits,
            aborts = state.summary.aborts,
            "kafka stream stopped"
        );
        result.map(|()| state.summary)
    }
}

enum Session {
    Stopped,
    Rewind,
    /// The workers changed: everything taken is committed, the next session runs them.
    Rescale,
}

/// Measures the consumer lag of the assigned partitions each [`LAG_INTERVAL`] and asks the
/// autoscaler for the workers it calls for.
async fn monitor(
    stream: Arc<KafkaStream>,
    consumer: Arc<Inbound>,
    scaler: WorkerScaler,
    workers: watch::Sender<u32>,
) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    loop {
        tick.tick().await;
        let c = Arc::clone(&consumer);
        let lags = blocking_kafka(move || consumer_lag(&c)).await;
        let lags = match lags {
            Ok(lags) => lags,
            Err(error) => {
                tracing::debug!(%error, "kafka consumer lag not measured");
                continue;
            }
        };
        stream.metrics.set_lag(&lags);
        let lag = lags.iter().map(|(_, _, lag)| lag).sum();
        match scaler.scale(&stream.name, lag).await {
            Ok(applied) => {
                workers.send_if_modified(|current| {
                    let changed = *current != applied;
                    *current = applied;
                    changed
                });
            }
            Err(error) => {
                tracing::warn!(endpoint = %stream.name, %error, "kafka workers not scaled")
            }
        }
    }
}

/// `(topic, partition, lag)` of each assigned partition: its end less the consumer's position
/// (or committed offset, before it consumed anything).
fn consumer_lag(consumer: &Inbound) -> std::result::Result<Vec<(String, i32, i64)>, KafkaError> {
    let position = consumer.position()?;
    let mut unknown = TopicPartitionList::new();
    for element in position.elements() {
        if !matches!(element.offset(), Offset::Offset(_)) {
            unknown.add_partition(element.topic(), element.partition());
        }
    }
    let committed = if unknown.count() > 0 {
        consumer.committed_offsets(unknown, TRANSACTION_TIMEOUT)?
    } else {
        unknown
    };
    let mut lags = Vec::new();
    for element in position.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let at = match element.offset() {
            Offset::Offset(at) => Some(at),
            _ => committed
                .find_partition(topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(at) => Some(at),
                    _ => None,
                }),
        };
        let (_, high) = consumer.fetch_watermarks(topic, partition, TRANSACTION_TIMEOUT)?;
        lags.push((
            topic.to_owned(),
            partition,
            at.map_or(0, |at| (high - at).max(0)),
        ));
    }
    Ok(lags)
}

/// The open transaction (or, at least once, the batch not yet committed).
struct Transaction {
    stream: Arc<KafkaStream>,
    consumer: Arc<Inbound>,
    producer: FutureProducer,
    /// The stream's runner at the current worker count.
    runner: Runner,
    /// Set when partitions were revoked (see [`StreamContext::revoked`]).
    revoked: Arc<Mutex<bool>>,
    open: bool,
    opened: Instant,
    messages: usize,
    dead_letters: u64,
    deliveries: Vec<DeliveryFuture>,
    /// The next offset of each `(topic, partition)` in the transaction: few, so a list (a
    /// partition's topic is one shared string).
    offsets: Vec<(Arc<str>, i32, i64)>,
    summary: StreamSummary,
    /// The dead-letter topic, computed once.
    dead_letter_topic: String,
    /// Reused for every output's header values (librdkafka copies them).
    text: String,
}

impl Transaction {
    fn new(stream: Arc<KafkaStream>, consumer: Arc<Inbound>, producer: FutureProducer) -> Self {
        Transaction {
            runner: stream.runner.clone(),
            revoked: Arc::default(),
            consumer,
            producer,
            open: false,
            opened: Instant::now(),
            messages: 0,
            dead_letters: 0,
            deliveries: Vec::new(),
            offsets: Vec::new(),
            summary: StreamSummary::default(),
            dead_letter_topic: stream.config.dead_letter_topic(),
            stream,
            text: String::new(),
        }
    }

    fn exactly_once(&self) -> bool {
        self.stream.config.delivery == DeliveryMode::ExactlyOnce
    }

    /// Consumes, predicts and produces until stopped (after a final commit) or until a
    /// transaction must be aborted.
    async fn session(
        &mut self,
        mut stop: watch::Receiver<bool>,
        mut workers: watch::Receiver<u32>,
    ) -> Result<Session> {
        let consumer = Arc::clone(&self.consumer);
        let format = self.stream.config.input_format;
        let endpoint = Arc::clone(self.runner.endpoint());
        let state = (consumer, Partitions::default(), endpoint, 0_usize);
        let source = futures::stream::unfold(
            state,
            move |(consumer, mut partitions, endpoint, taken)| async move {
                // Every burst waits for room in the prediction log first: the stream slows down
                // (its lag grows) rather than have the log drop records.
                if taken % BURST == 0 {
                    endpoint.records_ready(2 * BURST).await;
                }
                loop {
                    match consumer.recv().await {
                        Ok(message) => {
                            let item = item_of(&message, format, &mut partitions);
                            drop(message);
                            return Some((item, (consumer, partitions, endpoint, taken + 1)));
                        }
                        // A broker outage: the consumer reconnects by itself.
                        Err(error) => {
                            tracing::warn!(%error, "kafka consume failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            },
        );
        let (halt_tx, halt_rx) = tokio::sync::oneshot::channel::<()>();
        let mut halt_tx = Some(halt_tx);
        let mut run = self.runner.run_until(source, async move {
            let _ = halt_rx.await;
        });
        let period = self.stream.config.transaction_time();
        let mut tick = tokio::time::interval(period.min(Duration::from_millis(50)));
        let mut rewinding = false;
        let mut rescaling = false;
        // Delivered while a commit ran, for the next transaction.
        let mut early = VecDeque::new();
        let mut ended = false;
        loop {
            while !rewinding && let Some(output) = early.pop_front() {
                if !self.take(output, &mut run, &mut early, &mut ended).await? {
                    rewinding = true;
                    early.clear();
                    halt_tx.take().map(|h| h.send(()));
                }
            }
            if ended {
                break;
            }
            tokio::select! {
                processed = run.next() => {
                    let Some(mut processed) = processed else { break };
                    // What the run has ready is produced without going back through the
                    // select (whose branches cost more than producing a message).
                    for burst in 1.. {
                        let output = prepare(&self.stream, &mut self.text, processed);
                        if !rewinding && !self.take(output, &mut run, &mut early, &mut ended).await? {
                            rewinding = true;
                            early.clear();
                            halt_tx.take().map(|h| h.send(()));
                        }
                        if ended || !early.is_empty() || burst == BURST {
                            break;
                        }
                        match std::future::poll_fn(|cx| Poll::Ready(run.poll_next_unpin(cx))).await {
                            Poll::Ready(Some(next)) => processed = next,
                            Poll::Ready(None) => {
                                ended = true;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if ended {
                        break;
                    }
                }
                _ = tick.tick(), if !rewinding => {
                    if self.messages > 0
                        && self.opened.elapsed() >= period
                        && !self.commit_while(&mut run, &mut early, &mut ended).await?
                    {
                        rewinding = true;
                        early.clear();
                        halt_tx.take().map(|h| h.send(()));
                    }
                }
                _ = stop.changed(), if halt_tx.is_some() => {
                    halt_tx.take().map(|h| h.send(()));
                }
                _ = workers.changed(), if halt_tx.is_some() => {
                    rescaling = true;
                    halt_tx.take().map(|h| h.send(()));
                }
            }
        }
        if rewinding {
            return Ok(Session::Rewind);
        }
        // The run ended (stopped or rescaled): what it delivered during the last commit goes
        // in the final one.
        while let Some(output) = early.pop_front() {
            if let Err(error) = self.produce(output).await {
                tracing::warn!(%error, "kafka produce failed; rewinding");
                return Ok(Session::Rewind);
            }
            if self.messages >= self.stream.config.transaction_messages() && !self.commit().await? {
                return Ok(Session::Rewind);
            }
        }
        match self.commit().await? {
            false => Ok(Session::Rewind),
            true if rescaling && !*stop.borrow() => Ok(Session::Rescale),
            true => Ok(Session::Stopped),
        }
    }

    /// Produces one prepared output and commits once the transaction is full (while the run
    /// goes on predicting into `early`). `Ok(false)`: the stream must rewind.
    async fn take(
        &mut self,
        output: Output,
        run: &mut Run<Consumed>,
        early: &mut VecDeque<Output>,
        ended: &mut bool,
    ) -> Result<bool> {
        if let Err(error) = self.produce(output).await {
            tracing::warn!(%error, "kafka produce failed; rewinding");
            return Ok(false);
        }
        if self.messages >= self.stream.config.transaction_messages() {
            return self.commit_while(run, early, ended).await;
        }
        Ok(true)
    }

    /// Commits (see [`Transaction::commit`]) while the run keeps predicting: what it delivers
    /// meanwhile, up to a transaction's worth, is prepared and waits in `early` for the next
    /// transaction, so that neither the model nor the making of outputs idles while the
    /// broker commits.
    async fn commit_while(
        &mut self,
        run: &mut Run<Consumed>,
        early: &mut VecDeque<Output>,
        ended: &mut bool,
    ) -> Result<bool> {
        let room = self.stream.config.transaction_messages();
        let (stream, mut text) = (Arc::clone(&self.stream), String::new());
        let commit = self.commit();
        tokio::pin!(commit);
        loop {
            tokio::select! {
                biased;
                committed = &mut commit => return committed,
                processed = run.next(), if !*ended && early.len() < room => match processed {
                    Some(processed) => early.push_back(prepare(&stream, &mut text, processed)),
                    None => *ended = true,
                },
            }
        }
    }

    fn begin(&mut self) -> Result<()> {
        if self.open {
            return Ok(());
        }
        // A local state change in librdkafka (no request to the broker): called in place, as
        // a thread hop per transaction costs more than the call.
        if self.exactly_once() {
            self.producer.begin_transaction().map_err(storage)?;
        }
        self.open = true;
        self.opened = Instant::now();
        Ok(())
    }

    /// Produces one prepared output (see [`prepare`]) into the open transaction.
    async fn produce(&mut self, output: Output) -> Result<()> {
        self.begin()?;
        let topic = if output.dead {
            &self.dead_letter_topic
        } else {
            &self.stream.config.output_topic
        };
        let mut record = FutureRecord::to(topic)
            .payload(&output.payload)
            .headers(output.headers);
        if let Some(key) = &output.key {
            record = record.key(key.as_ref());
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => return Err(storage(error)),
            }
        };
        self.deliveries.push(delivery);
        let next = output.offset + 1;
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == output.partition && **t == *output.topic)
        {
            Some((_, _, offset)) => *offset = next,
            None => self.offsets.push((output.topic, output.partition, next)),
        }
        self.messages += 1;
        self.dead_letters += u64::from(output.dead);
        Ok(())
    }

    /// Commits the open transaction (or, at least once, the acknowledged batch's offsets).
    /// `Ok(false)`: it was aborted and the stream must rewind.
    ///
    /// Exactly once, the offsets go to the transaction (two round trips to the group
    /// coordinator) while the outputs are still being acknowledged: both are parts of the same
    /// transaction, which only the commit below makes visible, and an output that fails
    /// aborts them together. The commit itself still waits for every acknowledgement.
    async fn commit(&mut self) -> Result<bool> {
        if !self.open {
            return Ok(true);
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, offset) in &self.offsets {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(storage)?;
        }
        let sending = if self.exactly_once() && offsets.count() > 0 {
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or_else(|| failure("kafka", "the consumer has no group metadata"))?;
            let (p, list) = (self.producer.clone(), offsets.clone());
            Some(tokio::task::spawn_blocking(move || {
                p.send_offsets_to_transaction(&list, &metadata, TRANSACTION_TIMEOUT)
            }))
        } else {
            None
        };
        // Every output acknowledged before the commit: rdkafka's commit would otherwise
        // flush, which waits 100 ms whenever a message is still in flight (see [`settle`]).
        let mut delivered = true;
        for delivery in self.deliveries.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    tracing::warn!(%error, "kafka output not delivered");
                    delivered = false;
                }
                Err(_) => delivered = false,
            }
        }
        let sent = match sending {
            Some(sending) => sending.await.unwrap_or(Err(KafkaError::Canceled)),
            None => Ok(()),
        };
        let committed = if !delivered {
            Err(KafkaError::Canceled)
        } else if let Err(error) = sent {
            Err(error)
        } else if self.exactly_once() {
            let (p, revoked) = (self.producer.clone(), Arc::clone(&self.revoked));
            blocking_kafka(move || {
                settle(&p);
                // A revocation waits for this commit; after one, another member may own the
                // partitions, so nothing of this transaction may commit.
                let revoked = revoked.lock().unwrap_or_else(|p| p.into_inner());
                if *revoked {
                    return Err(KafkaError::Canceled);
                }
                p.commit_transaction(TRANSACTION_TIMEOUT)
            })
            .await
        } else if offsets.count() == 0 {
            Ok(())
        } else {
            let (c, revoked) = (Arc::clone(&self.consumer), Arc::clone(&self.revoked));
            blocking_kafka(move || {
                let revoked = revoked.lock().unwrap_or_else(|p| p.into_inner());
                if *revoked {
                    return Err(KafkaError::Canceled);
                }
                c.commit(&offsets, CommitMode::Sync)
            })
            .await
        };
        let messages = self.messages as u64;
        let dead = self.dead_letters;
        self.open = false;
        self.messages = 0;
        self.dead_letters = 0;
        self.offsets.clear();
        match committed {
            Ok(()) => {
                self.summary.committed += messages;
                self.summary.dead_lettered += dead;
                self.summary.commits += 1;
                self.stream.metrics.committed(messages, dead);
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(%error, messages, "kafka commit failed; aborting and rewinding");
                self.summary.aborts += 1;
                self.stream.metrics.aborted();
                if self.exactly_once() {
                    let p = self.producer.clone();
                    if let Err(abort) =
                        blocking_kafka(move || p.abort_transaction(TRANSACTION_TIMEOUT)).await
                    {
                        if is_fatal(&abort) || is_fatal(&error) {
                            return Err(storage(abort));
                        }
                        tracing::warn!(error = %abort, "kafka abort failed");
                    }
                }
                Ok(false)
            }
        }
    }

    /// Moves every assigned partition back to its committed offset.
    async fn rewind(&mut self) -> Result<()> {
        // From here the consumer's assignment is current again.
        *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = false;
        loop {
            let c = Arc::clone(&self.consumer);
            let rewound = blocking_kafka(move || {
                let committed = c.committed(TRANSACTION_TIMEOUT)?;
                let mut back = TopicPartitionList::new();
                for element in committed.elements() {
                    if let Offset::Offset(offset) = element.offset() {
                        back.add_partition_offset(
                            element.topic(),
                            element.partition(),
                            Offset::Offset(offset),
                        )?;
                    }
                }
                if back.count() > 0 {
                    c.seek_partitions(back, TRANSACTION_TIMEOUT)?;
                }
                Ok(())
            })
            .await;
            match rewound {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, "kafka rewind failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// One output made ready to produce: its value, key and headers, and the input it answers.
#[derive(Debug)]
struct Output {
    /// Whether it goes to the dead-letter topic.
    dead: bool,
    key: Option<Bytes>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    /// The input's topic, partition and offset.
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// Makes `processed`'s output (its prediction, or a dead letter): the value and the headers,
/// which cost more than producing them. Made as the prediction arrives, so that the outputs
/// predicted while a transaction commits are ready when the next one opens, and filling it
/// only hands them to librdkafka.
fn prepare(stream: &KafkaStream, text: &mut String, processed: Processed<Consumed>) -> Output {
    use std::fmt::Write as _;

    let message = processed.meta;
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 6);
    for (key, value) in message
        .headers
        .iter()
        .filter(|(k, _)| k != REQUEST_ID_HEADER)
    {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    let header = |headers: OwnedHeaders, key: &str, value: &str| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    };
    headers = header(headers, REQUEST_ID_HEADER, &processed.request_id);
    text.clear();
    text.push_str(&message.topic);
    text.push('/');
    push_integer(text, message.partition.unsigned_abs().into());
    text.push('/');
    push_integer(text, message.offset.unsigned_abs());
    headers = header(headers, SOURCE_HEADER, text);
    let mut payload = Vec::new();
    let dead = match &processed.result {
        Ok(prediction) => {
            headers = header(headers, MODEL_VERSION_HEADER, &prediction.model_version);
            text.clear();
            // Milliseconds with three decimals, from whole microseconds.
            let micros = prediction.elapsed.as_micros();
            push_integer(text, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
            text.push('.');
            let fraction = (micros % 1000) as u16;
            text.extend(
                [fraction / 100, fraction / 10 % 10, fraction % 10]
                    .map(|d| char::from(b'0' + d as u8)),
            );
            headers = header(headers, LATENCY_HEADER, text);
            match write_output(
                stream.config.output_format,
                &prediction.output,
                &mut payload,
            ) {
                Ok(()) => false,
                Err(error) => {
                    headers = header(headers, ERROR_HEADER, &error);
                    headers = header(headers, STATUS_HEADER, "model_failure");
                    payload.clear();
                    payload.extend_from_slice(&message.value);
                    true
                }
            }
        }
        Err(error) => {
            let version = &stream.runner.endpoint().spec().model.version;
            headers = header(headers, MODEL_VERSION_HEADER, version);
            text.clear();
            let _ = write!(text, "{error}");
            headers = header(headers, ERROR_HEADER, text);
            headers = header(headers, STATUS_HEADER, error.outcome().as_str());
            payload.extend_from_slice(&message.value);
            true
        }
    };
    Output {
        dead,
        key: message.key,
        payload,
        headers,
        topic: message.topic,
        partition: message.partition,
        offset: message.offset,
    }
}

/// What travels with a message through the runner: its position, key and headers for its
/// output, and its value for a dead letter.
#[derive(Debug)]
struct Consumed {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
    value: Bytes,
}

/// What every message of one partition repeats, made once: its topic (shared by the
/// messages' metadata) and its order key (`topic/partition`).
#[derive(Debug, Default)]
struct Partitions(Vec<(Arc<str>, i32, String)>);

impl Partitions {
    fn of(&mut self, topic: &str, partition: i32) -> (&Arc<str>, &String) {
        let at = match self
            .0
            .iter()
            .position(|(t, p, _)| *p == partition && **t == *topic)
        {
            Some(at) => at,
            None => {
                let key = format!("{topic}/{partition}");
                self.0.push((Arc::from(topic), partition, key));
                self.0.len() - 1
            }
        };
        let (topic, _, key) = &self.0[at];
        (topic, key)
    }
}

fn item_of(
    message: &rdkafka::message::BorrowedMessage<'_>,
    format: InputFormat,
    partitions: &mut Partitions,
) -> Item<Consumed> {
    let arrival = serving_core::Arrival::now();
    let info = KafkaMessage::of(message);
    let value = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let item = match format {
        InputFormat::Bytes => Item::new(Input::Bytes(value.clone())),
        InputFormat::Json => match serde_json::from_slice::<Value>(&value) {
            Ok(json) => Item::new(Input::Json(json)),
            Err(error) => Item::refused(Error::invalid_request(format!(
                "the message's value is not JSON: {error}"
            ))),
        },
    };
    let (topic, order_key) = partitions.of(&info.topic, info.partition);
    let mut source = String::with_capacity(order_key.len() + 21);
    source.push_str(order_key);
    source.push('/');
    push_integer(&mut source, info.offset.unsigned_abs());
    let mut item = item
        .with_arrival(arrival)
        .with_order_key(order_key.clone())
        .with_param("source", source);
    if let Some(key) = &info.key {
        item = item.with_routing_key(String::from_utf8_lossy(key).into_owned());
    }
    // The source's request id, when the producer gave one, is kept (else one is generated).
    let id = info
        .headers
        .iter()
        .find(|(k, _)| k == REQUEST_ID_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
        .filter(|id| !id.is_empty());
    if let Some(id) = id {
        item = item.with_request_id(id);
    }
    let consumed = Consumed {
        topic: Arc::clone(topic),
        partition: info.partition,
        offset: info.offset,
        key: info.key.clone(),
        headers: info.headers.clone(),
        value,
    };
    item.with_resource(info).with_meta(consumed)
}

/// Appends `n` in decimal: `write!` costs several times more, per message, than the rest of
/// what builds a header.
fn push_integer(into: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    into.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// An output message's value: the prediction as JSON, or its raw bytes.
/// Writes the prediction as the output's value into `into` (cleared by the caller).
fn write_output(
    format: OutputFormat,
    output: &Value,
    into: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    match (format, output) {
        (OutputFormat::Json, output) => {
            serde_json::to_writer(&mut *into, output).map_err(|e| e.to_string())
        }
        (OutputFormat::Bytes, Value::String(text)) => {
            into.extend_from_slice(text.as_bytes());
            Ok(())
        }
        (OutputFormat::Bytes, Value::Array(items)) => {
            for item in items {
                let byte = item.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or_else(|| {
                    "output_format is bytes: the prediction is an array, but not of bytes (integers 0 to 255)".to_owned()
                })?;
                into.push(byte);
            }
            Ok(())
        }
        (OutputFormat::Bytes, other) => Err(format!(
            "output_format is bytes: expected bytes or a string from the predictor, got {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "an object",
            }
        )),
    }
}

/// Waits (briefly), once every output is acknowledged, until librdkafka holds none of them.
///
/// A delivery future resolves inside the producer's polling thread while that thread still
/// holds the acknowledged batch, which it frees just after. rust-rdkafka's
/// `commit_transaction` flushes first, and a flush that finds a message still held polls for
/// a full 100 ms, since the polling thread, not the flush, receives the events that would end
/// it. On a busy machine about one commit in seven lost that race (14-16 ms per commit on
/// average instead of 1); freeing outputs with headers takes longer, so they lost it more.
fn settle(producer: &FutureProducer) {
    let deadline = Instant::now() + SETTLE;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// How long [`settle`] waits at most; after it, the flush in `commit_transaction` waits.
const SETTLE: Duration = Duration::from_millis(20);

fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}

fn storage(error: KafkaError) -> Error {
    failure("kafka", error.to_string())
}

fn failure(location: &str, reason: impl Into<String>) -> Error {
    Error::Storage {
        location: location.to_owned(),
        source: reason.into().into(),
    }
}

async fn blocking_kafka<T: Send + 'static>(
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    blocking_kafka(call).await.map_err(storage)
}

/// The total partition count of `config`'s input topics, read from its brokers (what a
/// stream's workers, and on Kubernetes its pods, are capped by).
///
/// # Errors
/// [`Error::Storage`] when the brokers cannot be reached or a topic does not exist.
pub async fn input_partitions(config: &KafkaStreamConfig) -> Result<usize> {
    let consumer: BaseConsumer = base_client(config).create().map_err(storage)?;
    let topics = config.input_topics.clone();
    tokio::task::spawn_blocking(move || Ok(partitions_of(&consumer, &topics)?.count()))
        .await
        .map_err(|e| failure("kafka", e.to_string()))?
}

/// Every partition of `topics`, read from the brokers (blocking); a topic the brokers do not
/// know is an error naming it.
fn partitions_of(consumer: &BaseConsumer, topics: &[String]) -> Result<TopicPartitionList> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), TRANSACTION_TIMEOUT)
            .map_err(storage)?;
        for t in metadata.topics() {
            if let Some(error) = t.error() {
                return Err(failure(topic, format!("input topic: {error:?}")));
            }
            for p in t.partitions() {
                all.add_partition(topic, p.id());
            }
        }
    }
    Ok(all)
}

/// The client settings every consumer and producer of a stream starts from: its brokers and
/// its librdkafka properties.
fn base_client(config: &KafkaStreamConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", config.brokers.join(","));
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}
