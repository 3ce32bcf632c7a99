//! The Kafka-stream benchmark: our `KafkaStream` with a trivial predictor against a bare
//! rdkafka consume→produce loop (the limit), in at-least-once and in exactly-once mode at the
//! same transaction size, with the prediction log on and off. Run with
//! `cargo bench --features kafka --bench kafka` against the broker at `$SERVING_TEST_KAFKA`
//! (default `127.0.0.1:39092`; `scripts/components/kafka start` runs one).
//!
//! Each run gets fresh topics (input with [`PARTITIONS`] partitions) and measures two things:
//! - **msgs/s**: `BENCH_MESSAGES` (default 200,000) keyed messages are in the input topic
//!   before the system starts (its group's offsets are committed at 0); the rate is the
//!   middle 80 % of them over the time between the 10th and the 90th percentile becoming
//!   visible to a `read_committed` reader of the output topic (startup and tail left out).
//! - **p50/p99 ms**: then `BENCH_RATE` (default 2,000) messages/s for `BENCH_SECS` (default 5)
//!   seconds; each value is its produce time in µs, so the reader measures produce → output
//!   visible (read_committed: after the transaction, or the at-least-once batch, committed).
//!
//! `BENCH_RUNS` (default 3) rounds run every row once; the table shows medians, and each ratio
//! is the median over rounds of a run against the same round's bare loop in the same mode.
//! `BENCH_ONLY=<text>` runs only the rows whose name contains it (and the bare rows, unless
//! `BENCH_NO_BARE` is set: for profiling one row).
//!
//! Both systems get the same client tuning (`linger.ms=1`, `retry.backoff.ms=5`, idempotence,
//! `acks=all`), the same transaction size (1,000 messages or 100 ms), and the same commit
//! protocol: every output acknowledged, and released by librdkafka, before the commit
//! (rust-rdkafka's `commit_transaction` would otherwise flush, which waits 100 ms whenever a
//! message is still held; see `settle`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serving::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use serving::kafka::rdkafka::client::DefaultClientContext;
use serving::kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use serving::kafka::rdkafka::error::KafkaError;
use serving::kafka::rdkafka::message::{Header, Message as _, OwnedHeaders};
use serving::kafka::rdkafka::producer::{
    DeliveryFuture, FutureProducer, FutureRecord, Producer as _,
};
use serving::kafka::rdkafka::types::RDKafkaErrorCode;
use serving::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serving::kafka::{DeliveryMode, KafkaStream, KafkaStreamConfig};
use serving::observe::Observability;
use serving::prediction_log::PredictionLog;
use serving::{ModelEndpoint, Result, predictor_fn};
use tokio::sync::oneshot;

/// Partitions of every input topic.
const PARTITIONS: i32 = 3;
/// Messages per transaction (or per at-least-once commit), for both systems.
const TRANSACTION_MESSAGES: usize = 1000;
/// Milliseconds a transaction stays open at most, for both systems.
const TRANSACTION_MS: u64 = 100;
/// How long a phase may take before the run is declared stuck.
const STUCK: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq)]
enum System {
    Bare,
    /// The bare loop writing the four headers our outputs carry (request id, source, model
    /// version, latency): what those alone cost, to read the distance from bare by.
    BareHeaders,
    Serving {
        log: bool,
    },
}

struct Row {
    name: &'static str,
    system: System,
    mode: DeliveryMode,
}

const ROWS: &[Row] = &[
    Row {
        name: "bare rdkafka loop, at least once",
        system: System::Bare,
        mode: DeliveryMode::AtLeastOnce,
    },
    Row {
        name: "bare loop + our 4 headers, at least once",
        system: System::BareHeaders,
        mode: DeliveryMode::AtLeastOnce,
    },
    Row {
        name: "KafkaStream, at least once, log off",
        system: System::Serving { log: false },
        mode: DeliveryMode::AtLeastOnce,
    },
    Row {
        name: "KafkaStream, at least once, log on",
        system: System::Serving { log: true },
        mode: DeliveryMode::AtLeastOnce,
    },
    Row {
        name: "bare rdkafka loop, exactly once",
        system: System::Bare,
        mode: DeliveryMode::ExactlyOnce,
    },
    Row {
        name: "bare loop + our 4 headers, exactly once",
        system: System::BareHeaders,
        mode: DeliveryMode::ExactlyOnce,
    },
    Row {
        name: "KafkaStream, exactly once, log off",
        system: System::Serving { log: false },
        mode: DeliveryMode::ExactlyOnce,
    },
    Row {
        name: "KafkaStream, exactly once, log on",
        system: System::Serving { log: true },
        mode: DeliveryMode::ExactlyOnce,
    },
];

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    rate: f64,
    /// CPU time of this process (the system under test, the reader, the producer idle) per
    /// backlog message, µs: unlike msgs/s, it barely moves when other work shares the machine.
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Outputs beyond one per input (0 in a run without faults).
    extra: usize,
    /// Share of predictions the prediction log dropped, when it is on.
    dropped: Option<f64>,
}

struct Settings {
    brokers: String,
    messages: usize,
    rate: usize,
    secs: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    let settings = Settings {
        brokers: std::env::var("SERVING_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:39092".into()),
        messages: env_or("BENCH_MESSAGES", 200_000usize).max(100),
        rate: env_or("BENCH_RATE", 2000usize).max(1),
        secs: Duration::from_secs(env_or("BENCH_SECS", 5u64).max(1)),
    };
    let rounds: usize = env_or("BENCH_RUNS", 3usize).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        check_broker(&settings.brokers);
        println!(
            "serving Kafka-stream benchmark against {}: {rounds} round(s) of every row, medians shown",
            settings.brokers
        );
        println!(
            "{} cores shared by broker, system under test, producer and reader; input {PARTITIONS} partitions; \
             transactions (and at-least-once commits) of {TRANSACTION_MESSAGES} messages or {TRANSACTION_MS} ms",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "msgs/s: a backlog of {} messages drained; latency: {} msgs/s for {} s, produce → visible to read_committed",
            settings.messages,
            settings.rate,
            settings.secs.as_secs()
        );
        println!("machine load at start: {}", load_average());
        println!();
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let rows: Vec<&Row> = ROWS
            .iter()
            .filter(|row| {
                (row.system == System::Bare && std::env::var_os("BENCH_NO_BARE").is_none())
                    || row.name.contains(&only)
            })
            .collect();
        let mut measured: Vec<Vec<Measured>> = rows.iter().map(|_| Vec::new()).collect();
        for round in 1..=rounds {
            for (row, runs) in rows.iter().zip(&mut measured) {
                let run = measure(row, &settings).await;
                eprintln!(
                    "  round {round}, {}: {:.0} msgs/s, {:.1} CPU µs/msg, p50 {:.1} ms, p99 {:.1} ms, {} extra",
                    row.name, run.rate, run.cpu_us, run.p50_ms, run.p99_ms, run.extra
                );
                runs.push(run);
            }
        }
        print_table(&rows, &mut measured);
        println!("machine load at end: {}", load_average());
    });
}

fn print_table(rows: &[&Row], measured: &mut [Vec<Measured>]) {
    let header = [
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "× msgs/s",
        "× p99",
        "CPU µs/msg",
        "extra",
        "log drop %",
    ];
    print!("| {:<40} |", "system");
    header.iter().for_each(|h| print!(" {h:>10} |"));
    println!();
    print!("|{:-<42}|", "");
    header.iter().for_each(|_| print!("{:-<12}|", ""));
    println!();
    let bares: Vec<Vec<Measured>> = rows
        .iter()
        .map(|row| {
            rows.iter()
                .position(|r| r.system == System::Bare && r.mode == row.mode)
                .map(|i| measured[i].clone())
                .unwrap_or_default()
        })
        .collect();
    for ((row, runs), bare) in rows.iter().zip(measured.iter_mut()).zip(bares) {
        let pick = |f: fn(&Measured) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        // Each round's run against the same round's bare loop in the same mode.
        let ratio = |f: fn(&Measured) -> f64| {
            let mut ratios: Vec<f64> = runs.iter().zip(&bare).map(|(r, b)| f(r) / f(b)).collect();
            median(&mut ratios)
        };
        let dropped: Vec<f64> = runs.iter().filter_map(|r| r.dropped).collect();
        let cells = [
            format!("{:.0}", pick(|r| r.rate)),
            format!("{:.1}", pick(|r| r.p50_ms)),
            format!("{:.1}", pick(|r| r.p99_ms)),
            format!("{:.2}", ratio(|r| r.rate)),
            format!("{:.2}", ratio(|r| r.p99_ms)),
            format!("{:.1}", pick(|r| r.cpu_us)),
            runs.iter().map(|r| r.extra).sum::<usize>().to_string(),
            if dropped.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median(&mut dropped.clone()))
            },
        ];
        print!("| {:<40} |", row.name);
        cells.iter().for_each(|c| print!(" {c:>10} |"));
        println!();
    }
    println!();
    println!(
        "goal: KafkaStream ≥ 0.8× the bare loop's msgs/s in the same mode (× columns: median over \
         rounds of each run against the same round's bare run)"
    );
    println!(
        "log off: metrics and charts on, no prediction log; log on: also the PredictionLog writing \
         JSON-lines segments to a temporary directory"
    );
    println!(
        "CPU µs/msg: this process's CPU (system under test, reader) per backlog message; the broker's is not counted"
    );
    println!("extra: outputs beyond one per input, summed over rounds (expected 0)");
}

/// One run of `row` on fresh topics.
async fn measure(row: &Row, settings: &Settings) -> Measured {
    let brokers = settings.brokers.as_str();
    let id = unique();
    let input = format!("bench-in-{id}");
    let output = format!("bench-out-{id}");
    let group = format!("bench-group-{id}");
    create_topics(
        brokers,
        &[
            (&input, PARTITIONS),
            (&output, PARTITIONS),
            (&format!("{output}.dlq"), 1),
        ],
    )
    .await;
    commit_start(brokers, &group, &input);
    let producer = producer(brokers, "5");
    produce_backlog(&producer, &input, settings.messages).await;
    let reader = Reader::start(brokers, &output);
    let cpu_before = cpu_secs();

    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    let mut log_dir = None;
    let mut observability = None;
    let task = match row.system {
        System::Bare | System::BareHeaders => {
            let headers = row.system == System::BareHeaders;
            let (brokers, input, output, group, mode) = (
                brokers.to_owned(),
                input.clone(),
                output.clone(),
                group.clone(),
                row.mode,
            );
            tokio::spawn(async move {
                bare_loop(&brokers, &input, &output, &group, mode, headers, stopped)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        System::Serving { log } => {
            let mut observed = Observability::new();
            if log {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let log = PredictionLog::builder()
                    .with_dir(dir.path())
                    .build()
                    .expect("a prediction log");
                observed = observed.with_prediction_log(log);
                log_dir = Some(dir);
            }
            let predictor = predictor_fn(|x: f64| -> Result<f64> { Ok(x) }).inline();
            let endpoint = observed
                .instrument(ModelEndpoint::builder("bench", predictor))
                .build()
                .expect("an endpoint");
            let mut config = KafkaStreamConfig::new([brokers], [input.as_str()], output.as_str());
            config.group_id = Some(group.clone());
            config.delivery = row.mode;
            config.transaction_messages = TRANSACTION_MESSAGES;
            config.transaction_ms = TRANSACTION_MS;
            let stream = KafkaStream::new(endpoint, config).expect("a stream");
            observability = Some(observed);
            tokio::spawn(async move {
                stream
                    .run(stopped)
                    .await
                    .map(|summary| summary.committed)
                    .map_err(|e| e.to_string())
            })
        }
    };

    // The backlog.
    let n = settings.messages;
    reader.wait_for(n, row.name).await;
    let cpu_us = (cpu_secs() - cpu_before) * 1e6 / n as f64;
    let times = reader.received_at(n);
    let (low, high) = (times[n / 10], times[n * 9 / 10]);
    let rate = (n * 8 / 10) as f64 / ((high - low).max(1) as f64 / 1e6);

    // Latency at a steady rate under capacity.
    let sent = produce_paced(&producer, &input, settings.rate, settings.secs).await;
    reader.wait_for(n + sent, row.name).await;
    let _ = stop.send(());
    let processed = tokio::time::timeout(STUCK, task)
        .await
        .unwrap_or_else(|_| panic!("{}: did not stop", row.name))
        .expect("the system's task")
        .unwrap_or_else(|e| panic!("{}: failed: {e}", row.name));
    // Anything beyond one output per input shows up within a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = reader.stop();
    let mut latencies: Vec<f64> = samples[n..n + sent]
        .iter()
        .map(|s| (s.received_us.saturating_sub(s.produced_us)) as f64 / 1000.0)
        .collect();
    let dropped = observability.as_ref().and_then(|o| {
        let stats = o.prediction_log()?.stats();
        Some(100.0 * stats.dropped as f64 / (processed.max(1) as f64))
    });
    if let Some(o) = observability {
        o.close().await;
    }
    drop(log_dir);
    Measured {
        rate,
        cpu_us,
        p50_ms: percentile(&mut latencies, 0.50),
        p99_ms: percentile(&mut latencies, 0.99),
        extra: samples.len() - (n + sent),
        dropped,
    }
}

/// The limit: consume, produce the same key and value, commit the offsets with the outputs
/// (in a transaction, or once they are acknowledged), as little else as possible.
async fn bare_loop(
    brokers: &str,
    input: &str,
    output: &str,
    group: &str,
    mode: DeliveryMode,
    headers: bool,
    stop: impl std::future::Future<Output = ()>,
) -> std::result::Result<u64, KafkaError> {
    use std::fmt::Write as _;
    let exactly_once = mode == DeliveryMode::ExactlyOnce;
    let consumer: Arc<StreamConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()?,
    );
    consumer.subscribe(&[input])?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("retry.backoff.ms", "5")
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if exactly_once {
        config
            .set("transactional.id", format!("{group}-bare"))
            .set("transaction.timeout.ms", "60000");
    }
    let producer: FutureProducer = config.create()?;
    if exactly_once {
        let p = producer.clone();
        blocking(move || p.init_transactions(Duration::from_secs(30))).await?;
    }
    let period = Duration::from_millis(TRANSACTION_MS);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut open = false;
    let mut opened = Instant::now();
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(TRANSACTION_MESSAGES);
    let mut offsets: Vec<Option<i64>> = vec![None; PARTITIONS as usize];
    let mut committed = 0u64;
    let mut stop = std::pin::pin!(stop);
    let mut text = String::new();

    // Acknowledged outputs first, then the offsets, in the transaction or alone.
    let commit = async |deliveries: &mut Vec<DeliveryFuture>,
                        offsets: &mut Vec<Option<i64>>|
           -> std::result::Result<(), KafkaError> {
        for delivery in deliveries.drain(..) {
            delivery
                .await
                .map_err(|_| KafkaError::Canceled)?
                .map_err(|(e, _)| e)?;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets.iter_mut().enumerate() {
            if let Some(offset) = offset.take() {
                list.add_partition_offset(input, partition as i32, Offset::Offset(offset))?;
            }
        }
        if exactly_once {
            let metadata = consumer.group_metadata().ok_or(KafkaError::Canceled)?;
            let p = producer.clone();
            blocking(move || {
                p.send_offsets_to_transaction(&list, &metadata, Duration::from_secs(30))?;
                settle(&p);
                p.commit_transaction(Duration::from_secs(30))
            })
            .await
        } else {
            let c = Arc::clone(&consumer);
            blocking(move || c.commit(&list, CommitMode::Sync)).await
        }
    };

    loop {
        tokio::select! {
            message = consumer.recv() => {
                let message = message?;
                if !open {
                    if exactly_once {
                        producer.begin_transaction()?;
                    }
                    open = true;
                    opened = Instant::now();
                }
                let mut record = FutureRecord::to(output)
                    .payload(message.payload().unwrap_or_default());
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if headers {
                    let header = |h: OwnedHeaders, key, value: &str| {
                        h.insert(Header { key, value: Some(value.as_bytes()) })
                    };
                    text.clear();
                    let _ = write!(text, "{:032x}", committed as usize + deliveries.len());
                    let mut h = header(OwnedHeaders::new_with_capacity(4), "serving-request-id", &text);
                    text.clear();
                    let _ = write!(text, "{input}/{}/{}", message.partition(), message.offset());
                    h = header(h, "serving-source", &text);
                    h = header(h, "serving-model-version", "1");
                    text.clear();
                    let _ = write!(text, "{:.3}", opened.elapsed().as_secs_f64());
                    h = header(h, "serving-latency-ms", &text);
                    record = record.headers(h);
                }
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err((error, _)) => return Err(error),
                    }
                };
                deliveries.push(delivery);
                offsets[message.partition() as usize] = Some(message.offset() + 1);
                if deliveries.len() >= TRANSACTION_MESSAGES {
                    committed += deliveries.len() as u64;
                    commit(&mut deliveries, &mut offsets).await?;
                    open = false;
                }
            }
            _ = tick.tick() => {
                if open && opened.elapsed() >= period {
                    committed += deliveries.len() as u64;
                    commit(&mut deliveries, &mut offsets).await?;
                    open = false;
                }
            }
            () = &mut stop => {
                if open {
                    committed += deliveries.len() as u64;
                    commit(&mut deliveries, &mut offsets).await?;
                }
                consumer.unsubscribe();
                return Ok(committed);
            }
        }
    }
}

/// Waits until librdkafka holds none of the acknowledged outputs (at most 20 ms), as our
/// stream does: rust-rdkafka's `commit_transaction` flushes first, and a flush that finds a
/// message still held (the polling thread frees a batch just after resolving its futures)
/// waits a full 100 ms. Which system lost that race more often decided the exactly-once
/// rows more than the systems did (our stream's commits averaged 14-16 ms against 1 ms).
fn settle(producer: &FutureProducer) {
    let deadline = Instant::now() + Duration::from_millis(20);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// One output as the reader saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    received_us: u64,
    produced_us: u64,
}

/// A `read_committed` reader of the output topic, on its own thread.
struct Reader {
    samples: Arc<Mutex<Vec<Sample>>>,
    count: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(brokers: &str, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("bench-reader-{}", unique()))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("a reader");
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("a partition");
        }
        consumer.assign(&assignment).expect("assigned");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, count, done) = (samples.clone(), count.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let message = message.expect("the reader reads");
                    let received_us = now_us();
                    // The bare loop copies the value ("1733…"); our predictor answers it as a
                    // JSON number ("1733….0").
                    let produced_us = std::str::from_utf8(message.payload().unwrap_or_default())
                        .ok()
                        .and_then(|v| v.parse::<f64>().ok())
                        .expect("an output holding the input's produce time")
                        as u64;
                    samples.lock().unwrap().push(Sample {
                        received_us,
                        produced_us,
                    });
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Reader {
            samples,
            count,
            done,
            thread: Some(thread),
        }
    }

    async fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + STUCK;
        while self.count.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {n} outputs after {STUCK:?}",
                self.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// When each of the first `n` outputs became visible, in µs since the epoch.
    fn received_at(&self, n: usize) -> Vec<u64> {
        self.samples.lock().unwrap()[..n]
            .iter()
            .map(|s| s.received_us)
            .collect()
    }

    fn stop(mut self) -> Vec<Sample> {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the reader thread");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

fn producer(brokers: &str, linger_ms: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a producer")
}

fn send(producer: &FutureProducer, topic: &str, i: usize) {
    let key = format!("k{}", i % 97);
    let value = now_us().to_string();
    let mut record = FutureRecord::to(topic).key(&key).payload(&value);
    loop {
        match producer.send_result(record) {
            // Delivery is checked by the flush (and by the outputs).
            Ok(delivery) => return drop(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((error, _)) => panic!("producing to {topic}: {error}"),
        }
    }
}

async fn produce_backlog(producer: &FutureProducer, topic: &str, n: usize) {
    for i in 0..n {
        send(producer, topic, i);
        if i % 10_000 == 9_999 {
            tokio::task::yield_now().await;
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the backlog is produced");
}

/// Produces `rate` messages a second for `secs`; returns how many.
async fn produce_paced(
    producer: &FutureProducer,
    topic: &str,
    rate: usize,
    secs: Duration,
) -> usize {
    let total = (rate as f64 * secs.as_secs_f64()) as usize;
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(total);
        while sent < due {
            send(producer, topic, sent);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the paced messages are produced");
    total
}

/// Commits offset 0 of every input partition for `group`, so the system starts at the backlog
/// (the stream would otherwise start at the latest offset).
fn commit_start(brokers: &str, group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut start = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        start
            .add_partition_offset(topic, p, Offset::Offset(0))
            .expect("a partition");
    }
    consumer
        .commit(&start, CommitMode::Sync)
        .expect("the starting offsets are committed");
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("topics created")
    {
        result.expect("a topic created");
    }
    // A fresh topic may answer without a leader for a moment.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a probe");
    for (name, partitions) in topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = probe
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .expect("metadata");
            let t = &metadata.topics()[0];
            if t.error().is_none()
                && t.partitions().len() == *partitions as usize
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.error().is_none())
            {
                break;
            }
            assert!(Instant::now() < deadline, "topic {name} has no leaders");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn check_broker(brokers: &str) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a probe");
    if let Err(error) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka broker at {brokers} ({error}): run `scripts/components/kafka start` and set SERVING_TEST_KAFKA"
        );
    }
}

/// The 1, 5 and 15-minute load averages (other builds and tests may share the machine).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// CPU time this process has used so far (user + system, all threads), in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name; utime and stime are the 12th and 13th.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // Linux reports in USER_HZ, 100 per second on every mainstream architecture.
    ticks as f64 / 100.0
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{:x}-{}-{}",
        now_us(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The median of `values` (the middle one, or the mean of the two middle ones).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile of `values` (nearest rank).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
