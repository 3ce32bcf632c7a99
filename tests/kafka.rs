//! The Kafka stream against the real broker (`scripts/components/kafka`, address in
//! `$SERVING_TEST_KAFKA`): start at latest, keys and headers, several inputs, dead letters,
//! graceful shutdown, exactly once across a killed process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serving::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use serving::kafka::rdkafka::client::DefaultClientContext;
use serving::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use serving::kafka::rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use serving::kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serving::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serving::kafka::{
    DeliveryMode, KafkaMessage, KafkaStream, KafkaStreamConfig, MODEL_VERSION_HEADER,
    SOURCE_HEADER, STATUS_HEADER, StreamSummary,
};
use serving::{Context, Error, ModelEndpoint, ModelUpdate, Result, predictor_fn};
use tokio::sync::oneshot;

/// Held shared by every Kafka test and exclusively by the one that restarts the broker.
pub(crate) static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The broker's address; the Kafka tests fail (never skip) without one.
pub(crate) fn brokers() -> String {
    let brokers = std::env::var("SERVING_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:39092".into());
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    if let Err(error) = probe.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka broker at {brokers} ({error}): run `scripts/components/kafka start` (scripts/test-setup does)"
        );
    }
    brokers
}

/// A name no other run used.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

pub(crate) async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // Wait for leaders: a fresh topic may answer without one for a moment.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (name, partitions) in topics {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metadata = probe
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .unwrap();
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

pub(crate) fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &str,
    trace: &str,
) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "trace",
        value: Some(trace),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// One message read back from an output topic.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) key: Option<String>,
    pub(crate) value: Value,
    pub(crate) headers: HashMap<String, String>,
}

/// Reads `topic` from the start with `read_committed` until `count` messages came and
/// `settle` passed without another one (so extra messages would be seen), or `timeout`.
pub(crate) async fn read_committed(
    brokers: &str,
    topic: &str,
    count: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + timeout;
    let mut read = Vec::new();
    let mut last = Instant::now();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last = Instant::now();
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let payload = message.payload().unwrap_or_default();
                    read.push(Read {
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: serde_json::from_slice(payload).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(payload).into_owned())
                        }),
                        headers,
                    });
                }
                Some(Err(error)) => panic!("reading {topic}: {error}"),
                None => {}
            }
            if (read.len() >= count && last.elapsed() >= settle) || Instant::now() > deadline {
                return read;
            }
        }
    })
    .await
    .unwrap()
}

/// Doubles a number; reads the message's position from the context; rejects negatives, fails
/// on 0, panics on 13.
fn doubler() -> ModelEndpoint {
    let predictor = predictor_fn(|x: f64| -> Result<Value> {
        if x < 0.0 {
            return Err(Error::rejected("negative"));
        }
        if x == 0.0 {
            return Err(Error::Predictor {
                source: "zero".into(),
            });
        }
        assert!(x != 13.0, "unlucky");
        let context = Context::current().expect("a context");
        let message = context
            .resource::<KafkaMessage>()
            .expect("the message in the context");
        Ok(json!({
            "double": x * 2.0,
            "topic": message.topic,
            "key": message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "trace": message.headers.iter().find(|(k, _)| k == "trace")
                .and_then(|(_, v)| v.as_ref()).map(|v| String::from_utf8_lossy(v).into_owned()),
        }))
    });
    ModelEndpoint::builder("doubler", predictor)
        .build()
        .unwrap()
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<StreamSummary>>,
}

impl Running {
    async fn stop(mut self) -> StreamSummary {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the stream stops")
            .unwrap()
            .unwrap()
    }
}

/// Starts a stream and waits until it holds its starting offsets.
async fn start(stream: KafkaStream) -> Running {
    let mut ready = stream.ready();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(stream.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
        .await
        .expect("the stream gets ready")
        .unwrap();
    Running {
        stop: Some(stop),
        task,
    }
}

fn config(brokers: &str, inputs: &[&str], output: &str, group: &str) -> KafkaStreamConfig {
    let mut config = KafkaStreamConfig::new([brokers], inputs.iter().copied(), output);
    config.group_id = Some(group.to_owned());
    config.transaction_ms = 50;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_at_latest_keeps_keys_and_headers_from_three_inputs_into_one_output() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (a, b, c, out) = (
        unique("in-a"),
        unique("in-b"),
        unique("in-c"),
        unique("out"),
    );
    let dlq = format!("{out}.dlq");
    create_topics(&brokers, &[(&a, 3), (&b, 2), (&c, 1), (&out, 2), (&dlq, 1)]).await;
    let producer = producer(&brokers);
    // Before deployment: never predicted.
    for i in 0..5 {
        produce(&producer, &a, &format!("old{i}"), "1000", "old").await;
    }
    let group = unique("group");
    let stream =
        KafkaStream::new(doubler(), config(&brokers, &[&a, &b, &c], &out, &group)).unwrap();
    let running = start(stream).await;
    let topics = [&a, &b, &c];
    for i in 0..30 {
        let topic = topics[i % 3];
        // From 100 up: clear of the values the doubler refuses or panics on.
        produce(
            &producer,
            topic,
            &format!("k{i}"),
            &(i + 100).to_string(),
            &format!("t{i}"),
        )
        .await;
    }
    let outputs = read_committed(
        &brokers,
        &out,
        30,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(outputs.len(), 30, "{outputs:?}");
    for output in &outputs {
        let key = output.key.clone().expect("the key is kept");
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(
            output.value["double"],
            json!((i + 100) as f64 * 2.0),
            "{output:?}"
        );
        assert_eq!(output.value["key"], json!(key));
        assert_eq!(output.value["topic"], json!(topics[i % 3]));
        assert_eq!(
            output.headers["trace"],
            format!("t{i}"),
            "input headers are kept"
        );
        assert_eq!(output.headers[MODEL_VERSION_HEADER], "1");
        assert!(output.headers[SOURCE_HEADER].starts_with(&format!("{}/", topics[i % 3])));
        assert!(output.headers.contains_key("serving-request-id"));
        assert!(output.headers["serving-latency-ms"].parse::<f64>().unwrap() >= 0.0);
    }
    let summary = running.stop().await;
    assert_eq!(summary.committed, 30, "{summary:?}");
    assert_eq!(summary.aborts, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_before_the_first_message_skips_nothing_that_arrived_after_deployment() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 2), (&out, 1), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let producer = producer(&brokers);
    produce(&producer, &input, "before", "1000", "old").await;
    let group = unique("group");
    let running =
        start(KafkaStream::new(doubler(), config(&brokers, &[&input], &out, &group)).unwrap())
            .await;
    let summary = running.stop().await;
    assert_eq!(summary.committed, 0);
    // While no stream runs.
    for i in 0..4 {
        produce(
            &producer,
            &input,
            &format!("k{i}"),
            &(i + 1).to_string(),
            "new",
        )
        .await;
    }
    let running =
        start(KafkaStream::new(doubler(), config(&brokers, &[&input], &out, &group)).unwrap())
            .await;
    // The source's request id, as a header, is kept.
    let headers = OwnedHeaders::new().insert(Header {
        key: "serving-request-id",
        value: Some("from-the-source"),
    });
    producer
        .send(
            FutureRecord::to(&input)
                .key("k9")
                .payload("5")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let outputs = read_committed(
        &brokers,
        &out,
        5,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    let ids: Vec<&str> = outputs
        .iter()
        .map(|o| o.headers["serving-request-id"].as_str())
        .collect();
    assert!(ids.contains(&"from-the-source"), "{ids:?}");
    let summary = running.stop().await;
    let mut doubles: Vec<f64> = outputs
        .iter()
        .map(|o| o.value["double"].as_f64().unwrap())
        .collect();
    doubles.sort_by(f64::total_cmp);
    assert_eq!(doubles, [2.0, 4.0, 6.0, 8.0, 10.0], "{outputs:?}");
    assert_eq!(summary.committed, 5);
    // Graceful shutdown committed everything it consumed: the group is at the end.
    let ends: i64 = committed_offsets(&brokers, &group, &input, 2)
        .await
        .iter()
        .sum();
    assert_eq!(ends, 6, "the message before deployment and the five after");
}

async fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(all, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => offset,
            other => panic!("{topic}/{}: {other:?}", e.partition()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_failed_and_panicking_messages_go_to_the_dead_letter_topic_in_both_modes() {
    for delivery in [DeliveryMode::ExactlyOnce, DeliveryMode::AtLeastOnce] {
        let _broker = BROKER.read().await;
        let brokers = brokers();
        let (input, out) = (unique("in"), unique("out"));
        let dlq = format!("{out}.dlq");
        create_topics(&brokers, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
        let mut config = config(&brokers, &[&input], &out, &unique("group"));
        config.delivery = delivery;
        let running = start(KafkaStream::new(doubler(), config).unwrap()).await;
        let producer = producer(&brokers);
        for (i, value) in ["1", "-1", "2", "0", "13", "not json", "3"]
            .iter()
            .enumerate()
        {
            produce(&producer, &input, &format!("k{i}"), value, "t").await;
        }
        let outputs = read_committed(
            &brokers,
            &out,
            3,
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await;
        let letters = read_committed(
            &brokers,
            &dlq,
            4,
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await;
        let summary = running.stop().await;
        let doubles: Vec<f64> = outputs
            .iter()
            .map(|o| o.value["double"].as_f64().unwrap())
            .collect();
        assert_eq!(doubles, [2.0, 4.0, 6.0], "{delivery}: in input order");
        let statuses: Vec<(&str, &str)> = letters
            .iter()
            .map(|l| (l.key.as_deref().unwrap(), l.headers[STATUS_HEADER].as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("k1", "rejected_input"),
                ("k3", "model_failure"),
                ("k4", "model_failure"),
                ("k5", "rejected_input")
            ],
            "{delivery}: {letters:?}"
        );
        assert_eq!(letters[0].value, json!(-1), "the input's value");
        assert!(
            letters[2].headers["serving-error"].contains("unlucky"),
            "{:?}",
            letters[2]
        );
        assert_eq!(letters[0].headers[SOURCE_HEADER], format!("{input}/0/1"));
        assert_eq!(letters[0].headers[MODEL_VERSION_HEADER], "1");
        assert_eq!(
            (summary.committed, summary.dead_lettered),
            (7, 4),
            "{delivery}"
        );
    }
}

const CHILD_ENV: &str = "SERVING_KAFKA_CHILD";

/// Run by `exactly_once_across_a_killed_process` in a child process: the stream until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run as a child process by exactly_once_across_a_killed_process"]
async fn stream_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let (brokers, input, out, group, delivery) = (parts[0], parts[1], parts[2], parts[3], parts[4]);
    // Optional: the model version it serves and its instance (its transactional id).
    let version = parts.get(5).copied().unwrap_or("1");
    let mut config = config(brokers, &[input], out, group);
    config.delivery = delivery.parse().unwrap();
    config.transaction_messages = 200;
    config.instance_id = parts.get(6).map(|i| (*i).to_owned());
    let predictor = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
    let endpoint = ModelEndpoint::builder("child", predictor)
        .model("m", version)
        .build()
        .unwrap();
    let stream = KafkaStream::new(endpoint, config).unwrap();
    // SIGTERM stops it gracefully; SIGKILL, of course, does not.
    let summary = stream.run(serving::shutdown_signal()).await.unwrap();
    eprintln!("child {version} stopped: {summary:?}");
}

fn spawn_child(spec: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kafka::stream_child",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(std::env::temp_dir().join("serving-kafka-child.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

/// Counts how many inputs `0..count` are missing from `outputs` and how many appear twice.
fn lost_and_duplicated(outputs: &[Read], count: usize) -> (usize, usize) {
    let mut seen = vec![0usize; count];
    for output in outputs {
        let i = output.value.as_f64().unwrap() as usize;
        seen[i] += 1;
    }
    (
        seen.iter().filter(|n| **n == 0).count(),
        seen.iter().map(|n| n.saturating_sub(1)).sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_across_a_killed_process() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 3), (&out, 3), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let group = unique("group");
    let spec = format!("{brokers},{input},{out},{group},exactly_once");
    let mut child = spawn_child(&spec);
    // The child is ready once its group holds committed offsets for every partition.
    wait_for_committed_offsets(&brokers, &group, &input, 3).await;
    let producer = producer(&brokers);
    const COUNT: usize = 20_000;
    let feeder = {
        let (producer, input) = (producer.clone(), input.clone());
        tokio::spawn(async move {
            for i in 0..COUNT {
                let key = format!("k{}", i % 97);
                let value = i.to_string();
                let record = FutureRecord::to(&input).key(&key).payload(&value);
                let delivery = producer.send_result(record).map_err(|(e, _)| e).unwrap();
                drop(delivery);
                if i % 1000 == 999 {
                    producer.flush(Duration::from_secs(10)).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };
    // Kill it mid-stream, once some outputs are committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let some =
            read_committed(&brokers, &out, 2000, Duration::ZERO, Duration::from_secs(2)).await;
        if some.len() >= 2000 {
            break;
        }
        assert!(Instant::now() < deadline, "no outputs from the child");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut child = spawn_child(&spec);
    feeder.await.unwrap();
    let outputs = read_committed(
        &brokers,
        &out,
        COUNT,
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let (lost, duplicated) = lost_and_duplicated(&outputs, COUNT);
    eprintln!(
        "exactly once across SIGKILL: {COUNT} inputs, {} outputs, lost {lost}, duplicated {duplicated}",
        outputs.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
}

async fn wait_for_committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = consumer
            .committed_offsets(all.clone(), Duration::from_secs(5))
            .unwrap();
        if committed
            .elements()
            .iter()
            .all(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            // Subscribed a moment later; the offsets alone make it safe to produce.
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the child never committed its starting offsets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_pauses_the_stream_and_it_resumes_losing_nothing() {
    let _broker = BROKER.write().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 2), (&out, 2), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let predictor = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
    let endpoint = ModelEndpoint::builder("restarted", predictor)
        .build()
        .unwrap();
    let running = start(
        KafkaStream::new(
            endpoint,
            config(&brokers, &[&input], &out, &unique("group")),
        )
        .unwrap(),
    )
    .await;
    let producer = producer(&brokers);
    const COUNT: usize = 2000;
    for i in 0..COUNT / 2 {
        produce(
            &producer,
            &input,
            &format!("k{}", i % 13),
            &i.to_string(),
            "t",
        )
        .await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/components/kafka");
    let restarted = std::process::Command::new(script)
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    for i in COUNT / 2..COUNT {
        // Leaders may be missing for a moment right after the restart: the producer retries.
        produce(
            &producer,
            &input,
            &format!("k{}", i % 13),
            &i.to_string(),
            "t",
        )
        .await;
    }
    let outputs = read_committed(
        &brokers,
        &out,
        COUNT,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await;
    let summary = running.stop().await;
    let (lost, duplicated) = lost_and_duplicated(&outputs, COUNT);
    eprintln!("broker restart: {COUNT} inputs, lost {lost}, duplicated {duplicated}, {summary:?}");
    assert_eq!((lost, duplicated), (0, 0));
}

// --- rollover, handover, shutdown, scaling, metrics, the example ---------------------------

/// The message a [`Read`] answers: its input's `(partition, offset)`.
fn source_of(read: &Read) -> (i32, i64) {
    let source = &read.headers[SOURCE_HEADER];
    let mut parts = source.rsplitn(3, '/');
    let offset = parts.next().unwrap().parse().unwrap();
    let partition = parts.next().unwrap().parse().unwrap();
    (partition, offset)
}

fn version_of(read: &Read) -> &str {
    &read.headers[MODEL_VERSION_HEADER]
}

/// The input index an echoing model answered.
fn index_of(read: &Read) -> usize {
    read.value.as_f64().unwrap() as usize
}

fn read_of(message: &serving::kafka::rdkafka::message::BorrowedMessage<'_>) -> Read {
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let payload = message.payload().unwrap_or_default();
    Read {
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        value: serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned())),
        headers,
    }
}

/// Reads a topic with `read_committed` in the background, from its start, while a test runs.
struct Collector {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Read>>>,
    reading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    fn start(brokers: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("collector"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (into, on) = (seen.clone(), reading.clone());
        let task = tokio::task::spawn_blocking(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => into.lock().unwrap().push(read_of(&message)),
                    Some(Err(error)) => eprintln!("collector: {error}"),
                    None => {}
                }
            }
        });
        Collector {
            seen,
            reading,
            task,
        }
    }

    fn snapshot(&self) -> Vec<Read> {
        self.seen.lock().unwrap().clone()
    }

    fn stop_reading(&self) {
        self.reading
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until `done` holds of what was read (a minute at most).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Read]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if done(&self.seen.lock().unwrap()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything read once `count` messages came and `settle` passed without another.
    async fn finish(mut self, count: usize, settle: Duration) -> Vec<Read> {
        self.wait_for(&format!("{count} outputs"), |r| r.len() >= count)
            .await;
        let mut last = self.seen.lock().unwrap().len();
        loop {
            tokio::time::sleep(settle).await;
            let now = self.seen.lock().unwrap().len();
            if now == last {
                break;
            }
            last = now;
        }
        self.stop_reading();
        (&mut self.task).await.unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

// A test that fails must not hang on a reader that never stops.
impl Drop for Collector {
    fn drop(&mut self) {
        self.stop_reading();
    }
}

/// Produces `0, 1, 2, …` keyed `k0`…`k15` until `feeding` turns false; returns how many.
/// `produced` counts each one before it is sent: an index read from it after a change is
/// the first input produced after that change.
async fn feed(
    producer: FutureProducer,
    topic: String,
    produced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    feeding: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    use std::sync::atomic::Ordering::SeqCst;
    while feeding.load(SeqCst) {
        let i = produced.fetch_add(1, SeqCst);
        let (key, value) = (format!("k{}", i % 16), i.to_string());
        let record = FutureRecord::to(&topic).key(&key).payload(&value);
        drop(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if i % 100 == 99 {
            producer.flush(Duration::from_secs(10)).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    produced.load(SeqCst)
}

/// Whether `versions` runs through `1* 2* 3* 2*` in order (each part possibly empty): the
/// versions of a rollover (1 → 2), a canary of 3 promoted, and a rollback to 2.
fn phases_in_order<'a>(versions: impl IntoIterator<Item = &'a str>) -> bool {
    const PHASES: [&str; 4] = ["1", "2", "3", "2"];
    let mut phase = 0;
    for version in versions {
        while phase < PHASES.len() && PHASES[phase] != version {
            phase += 1;
        }
        if phase == PHASES.len() {
            return false;
        }
    }
    true
}

#[test]
fn phases_are_checked_in_order() {
    assert!(phases_in_order(["1", "1", "2", "3", "3", "2"]));
    assert!(phases_in_order(["2", "2", "2"]));
    assert!(!phases_in_order(["2", "1"]));
    assert!(!phases_in_order(["2", "3", "2", "3"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollover_canary_promote_rollback_and_shadow_on_a_running_stream_switch_at_one_offset() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 3), (&out, 3), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let echo = || predictor_fn(|x: u64| -> Result<u64> { Ok(x) });
    let endpoint = ModelEndpoint::builder("rolled", echo()).build().unwrap();
    let lifecycle = endpoint.lifecycle().clone();
    let running = start(
        KafkaStream::new(
            endpoint,
            config(&brokers, &[&input], &out, &unique("group")),
        )
        .unwrap(),
    )
    .await;
    let collector = Collector::start(&brokers, &out);
    let produced = Arc::new(AtomicUsize::new(0));
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = tokio::spawn(feed(
        producer(&brokers),
        input.clone(),
        Arc::clone(&produced),
        Arc::clone(&feeding),
    ));
    // Each change goes on while messages flow; the next waits until 300 inputs produced after
    // it came out, so that every phase is seen.
    let after = |from: usize| {
        move |reads: &[Read]| reads.iter().filter(|r| index_of(r) >= from).count() >= 300
    };
    collector.wait_for("outputs of version 1", after(0)).await;
    assert_eq!(
        lifecycle
            .update_model(ModelUpdate::new(echo()), None)
            .unwrap(),
        "2"
    );
    let from = produced.load(SeqCst);
    collector
        .wait_for("outputs of version 2", after(from))
        .await;
    assert_eq!(
        lifecycle
            .update_model(ModelUpdate::new(echo()), Some(50))
            .unwrap(),
        "3"
    );
    let canary_from = produced.load(SeqCst);
    collector
        .wait_for("every key during the canary", |reads| {
            let mut per_key: HashMap<&str, usize> = HashMap::new();
            for r in reads.iter().filter(|r| index_of(r) >= canary_from) {
                *per_key.entry(r.key.as_deref().unwrap()).or_default() += 1;
            }
            per_key.len() == 16 && per_key.values().all(|n| *n >= 5)
        })
        .await;
    // Produced after the canary started and read before the promotion: the canary's split.
    let canary: Vec<Read> = collector
        .snapshot()
        .into_iter()
        .filter(|r| index_of(r) >= canary_from)
        .collect();
    assert_eq!(lifecycle.promote().unwrap(), "3");
    let from = produced.load(SeqCst);
    collector
        .wait_for("outputs after the promotion", after(from))
        .await;
    assert_eq!(lifecycle.rollback().unwrap(), "2");
    let from = produced.load(SeqCst);
    collector
        .wait_for("outputs after the rollback", after(from))
        .await;
    assert_eq!(
        lifecycle
            .shadow_model(ModelUpdate::new(echo()), 100)
            .unwrap(),
        "4"
    );
    let shadow_from = produced.load(SeqCst);
    collector
        .wait_for("outputs with a shadow", after(shadow_from))
        .await;
    feeding.store(false, SeqCst);
    let total = feeder.await.unwrap();
    let outputs = collector.finish(total, Duration::from_secs(2)).await;
    let summary = running.stop().await;

    let (lost, duplicated) = lost_and_duplicated(&outputs, total);
    eprintln!("rollover: {total} inputs, lost {lost}, duplicated {duplicated}, {summary:?}");
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "every input has exactly one output"
    );

    // The canary is sticky by key: each key saw one version, and both versions got keys.
    let mut split: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    for r in &canary {
        split
            .entry(r.key.clone().unwrap())
            .or_default()
            .insert(version_of(r).to_owned());
    }
    assert!(
        split.values().all(|v| v.len() == 1),
        "sticky by key: {split:?}"
    );
    let candidates: std::collections::BTreeSet<String> = split
        .iter()
        .filter(|(_, v)| v.contains("3"))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        !candidates.is_empty() && candidates.len() < 16,
        "a 50 % canary splits the keys: {split:?}"
    );

    // Per partition, in offset order, every switch happens at one offset.
    let mut partitions: HashMap<i32, Vec<&Read>> = HashMap::new();
    for r in &outputs {
        partitions.entry(source_of(r).0).or_default().push(r);
    }
    for (partition, mut reads) in partitions {
        reads.sort_by_key(|r| source_of(r).1);
        let versions: Vec<&str> = reads.iter().map(|r| version_of(r)).collect();
        let first_later = versions.iter().position(|v| *v != "1").unwrap();
        assert!(
            versions[first_later..].iter().all(|v| *v != "1"),
            "partition {partition}: version 1 after the switch to 2"
        );
        let candidates = &candidates;
        let of_keys = |candidate: bool| {
            reads
                .iter()
                .filter(move |r| candidates.contains(r.key.as_ref().unwrap()) == candidate)
                .map(|r| version_of(r))
        };
        assert!(
            phases_in_order(of_keys(true)),
            "partition {partition}: the canary's keys switch once each way"
        );
        assert!(
            phases_in_order(of_keys(false)),
            "partition {partition}: the stable keys switch once at the promotion"
        );
        // After the first message of the rollback, no message of version 3.
        let mut promoted_keys = std::collections::HashSet::new();
        let mut rolled_back = false;
        for r in &reads {
            let key = r.key.clone().unwrap();
            match version_of(r) {
                "3" => {
                    assert!(
                        !rolled_back,
                        "partition {partition}: version 3 after the rollback"
                    );
                    promoted_keys.insert(key);
                }
                "2" if promoted_keys.contains(&key) => rolled_back = true,
                _ => {}
            }
        }
        assert!(rolled_back, "partition {partition} saw the rollback");
    }
    for version in ["1", "2", "3"] {
        assert!(
            outputs.iter().any(|r| version_of(r) == version),
            "{version}"
        );
    }
    // The shadow was mirrored every message and answered none.
    assert!(outputs.iter().all(|r| version_of(r) != "4"));
    let comparison = lifecycle.shadow_comparison("4");
    assert!(comparison.compared >= 300, "{comparison:?}");
    assert_eq!(comparison.agreed, comparison.compared, "{comparison:?}");
}

fn terminate(child: &std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

/// The group's members, as the broker describes the group.
fn group_members(brokers: &str, group: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let groups = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    groups.groups().iter().map(|g| g.members().len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_with_the_new_version_takes_over_from_the_old_one_losing_and_duplicating_nothing()
 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 3), (&out, 3), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let group = unique("group");
    let mut old = spawn_child(&format!(
        "{brokers},{input},{out},{group},exactly_once,1,old"
    ));
    wait_for_committed_offsets(&brokers, &group, &input, 3).await;
    let collector = Collector::start(&brokers, &out);
    let produced = Arc::new(AtomicUsize::new(0));
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = tokio::spawn(feed(
        producer(&brokers),
        input.clone(),
        Arc::clone(&produced),
        Arc::clone(&feeding),
    ));
    collector
        .wait_for("outputs of the old process", |r| r.len() >= 1000)
        .await;
    // The new version joins the same group and gets a share of the partitions ...
    let mut new = spawn_child(&format!(
        "{brokers},{input},{out},{group},exactly_once,2,new"
    ));
    collector
        .wait_for("outputs of the new process", |r| {
            r.iter().any(|r| version_of(r) == "2")
        })
        .await;
    // ... and the old one stops gracefully: the new one takes its partitions over.
    terminate(&old);
    let status = old.wait().unwrap();
    assert!(status.success(), "the old process stops cleanly: {status}");
    let from = produced.load(SeqCst);
    collector
        .wait_for("outputs after the handover", |r| {
            r.iter().filter(|r| index_of(r) >= from).count() >= 1000
        })
        .await;
    feeding.store(false, SeqCst);
    let total = feeder.await.unwrap();
    let outputs = collector.finish(total, Duration::from_secs(3)).await;
    terminate(&new);
    assert!(new.wait().unwrap().success());

    let (lost, duplicated) = lost_and_duplicated(&outputs, total);
    eprintln!(
        "handover: {total} inputs, {} outputs, lost {lost}, duplicated {duplicated}",
        outputs.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    // Each partition went from the old version to the new one once, and ends on the new one.
    let mut partitions: HashMap<i32, Vec<&Read>> = HashMap::new();
    for r in &outputs {
        partitions.entry(source_of(r).0).or_default().push(r);
    }
    assert_eq!(partitions.len(), 3);
    for (partition, mut reads) in partitions {
        reads.sort_by_key(|r| source_of(r).1);
        let versions: Vec<&str> = reads.iter().map(|r| version_of(r)).collect();
        let switch = versions
            .iter()
            .position(|v| *v == "2")
            .unwrap_or(versions.len());
        assert!(
            versions[..switch].iter().all(|v| *v == "1")
                && versions[switch..].iter().all(|v| *v == "2"),
            "partition {partition}: {versions:?}"
        );
        assert_eq!(versions.last(), Some(&"2"), "partition {partition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_messages_in_flight_commits_and_leaves_the_group() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 2), (&out, 2), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let group = unique("group");
    let mut child = spawn_child(&format!("{brokers},{input},{out},{group},exactly_once"));
    wait_for_committed_offsets(&brokers, &group, &input, 2).await;
    let start = committed_offsets(&brokers, &group, &input, 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while group_members(&brokers, &group) == 0 {
        assert!(Instant::now() < deadline, "the child never joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = producer(&brokers);
    const COUNT: usize = 5000;
    for i in 0..COUNT {
        let (key, value) = (format!("k{}", i % 13), i.to_string());
        drop(
            producer
                .send_result(FutureRecord::to(&input).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    // Mid-stream: some outputs are committed, more are in flight.
    let collector = Collector::start(&brokers, &out);
    collector.wait_for("first outputs", |r| !r.is_empty()).await;
    terminate(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // It left the group at once (not after the session timeout).
    assert_eq!(
        group_members(&brokers, &group),
        0,
        "the child left its group"
    );
    let committed = committed_offsets(&brokers, &group, &input, 2).await;
    let outputs = collector.finish(0, Duration::from_secs(2)).await;
    // What it committed is exactly what it produced, partition by partition: nothing in
    // flight was dropped, nothing uncommitted was produced.
    for partition in 0..2 {
        let mut offsets: Vec<i64> = outputs
            .iter()
            .map(source_of)
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| o)
            .collect();
        offsets.sort_unstable();
        let expected: Vec<i64> =
            (start[partition as usize]..committed[partition as usize]).collect();
        assert_eq!(offsets, expected, "partition {partition}");
    }
    eprintln!(
        "graceful shutdown: {} of {COUNT} predicted before SIGTERM and committed: {committed:?}",
        outputs.len()
    );
    // The rest is predicted by the next process, from the committed offsets.
    let mut next = spawn_child(&format!("{brokers},{input},{out},{group},exactly_once"));
    let all = read_committed(
        &brokers,
        &out,
        COUNT,
        Duration::from_secs(2),
        Duration::from_secs(90),
    )
    .await;
    terminate(&next);
    assert!(next.wait().unwrap().success());
    assert_eq!(lost_and_duplicated(&all, COUNT), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_replicas_is_capped_by_the_partitions_and_workers_scale_on_lag() {
    use serving::{AutoscaleBounds, Autoscaler as _, EndpointSpec, InMemoryAutoscaler, ModelRef};
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (a, b, out) = (unique("in-a"), unique("in-b"), unique("out"));
    create_topics(
        &brokers,
        &[(&a, 2), (&b, 1), (&out, 1), (&format!("{out}.dlq"), 1)],
    )
    .await;
    // Slow enough that a burst builds a backlog.
    let slow = predictor_fn(|x: u64| -> Result<u64> {
        std::thread::sleep(Duration::from_millis(1));
        Ok(x)
    });
    let mut spec = EndpointSpec::new("scaled", ModelRef::new("m", "1"));
    spec.autoscale = AutoscaleBounds::new(1, 10).unwrap();
    let endpoint = ModelEndpoint::builder("scaled", slow)
        .spec(spec)
        .build()
        .unwrap();
    let lifecycle = endpoint.lifecycle().clone();
    let autoscaler = std::sync::Arc::new(InMemoryAutoscaler::new());
    let mut config = config(&brokers, &[&a, &b], &out, &unique("group"));
    config.transaction_messages = 100;
    let stream = KafkaStream::new(endpoint, config)
        .unwrap()
        .with_concurrency(1)
        .with_autoscaler(autoscaler.clone());
    assert_eq!(stream.input_partitions().await.unwrap(), 3);
    let metrics = std::sync::Arc::clone(stream.metrics());
    let running = start(stream).await;
    // 10 asked, 3 partitions: capped, logged, not refused.
    assert_eq!(lifecycle.autoscale(), AutoscaleBounds::new(1, 3).unwrap());
    assert_eq!(metrics.workers(), 1);
    let producer = producer(&brokers);
    const COUNT: usize = 3000;
    for i in 0..COUNT {
        let topic = if i % 3 == 0 { &b } else { &a };
        let (key, value) = (format!("k{}", i % 7), i.to_string());
        drop(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let mut most = 0;
    let mut seen_lag = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while metrics.messages_committed() < COUNT as u64 {
        most = most.max(metrics.workers());
        seen_lag = seen_lag.max(metrics.total_lag());
        assert!(Instant::now() < deadline, "{:?}", metrics.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("scaling: lag up to {seen_lag}, workers up to {most}");
    assert!(seen_lag > 300, "a backlog built up: {seen_lag}");
    assert_eq!(most, 3, "scaled up to the capped maximum on lag");
    assert_eq!(autoscaler.replicas("scaled").await.unwrap(), 3);
    // Caught up: back to the minimum.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.workers() != 1 {
        assert!(Instant::now() < deadline, "{:?}", metrics.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outputs = read_committed(
        &brokers,
        &out,
        COUNT,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    let summary = running.stop().await;
    assert_eq!(lost_and_duplicated(&outputs, COUNT), (0, 0), "{summary:?}");
    // Each partition's outputs came out in its input order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for output in &outputs {
        let source = &output.headers[SOURCE_HEADER];
        let (partition, offset) = source.rsplit_once('/').unwrap();
        let offset: i64 = offset.parse().unwrap();
        let previous = last.insert(partition.to_owned(), offset);
        assert!(
            previous.is_none_or(|p| p < offset),
            "{source} after {previous:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_predictor_that_returns_bytes_produces_them_raw() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    let dlq = format!("{out}.dlq");
    create_topics(&brokers, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
    let bytes = predictor_fn(|x: f64| -> Result<Value> {
        // Bytes as a predictor returns them (a `Vec<u8>`), or a number: not bytes.
        if x < 0.0 {
            return Ok(json!(x));
        }
        Ok(serde_json::to_value(format!("<{x}>").into_bytes()).unwrap())
    });
    let endpoint = ModelEndpoint::builder("raw", bytes).build().unwrap();
    let mut config = config(&brokers, &[&input], &out, &unique("group"));
    config.output_format = serving::kafka::OutputFormat::Bytes;
    let running = start(KafkaStream::new(endpoint, config).unwrap()).await;
    let producer = producer(&brokers);
    for value in ["5", "-1", "7"] {
        produce(&producer, &input, "k", value, "t").await;
    }
    let outputs = read_committed(
        &brokers,
        &out,
        2,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    let letters = read_committed(
        &brokers,
        &dlq,
        1,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    running.stop().await;
    let values: Vec<&Value> = outputs.iter().map(|o| &o.value).collect();
    assert_eq!(
        values,
        [&json!("<5>"), &json!("<7>")],
        "the bytes, not a JSON array"
    );
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].headers["serving-error"].contains("expected bytes or a string"),
        "{:?}",
        letters[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_admin_status_and_the_prediction_log_show_every_message() {
    use serving::http::{Observability, Token, WebService};
    use serving::prediction_log::{PredictionLogBuilder, PredictionQuery};
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    let dlq = format!("{out}.dlq");
    create_topics(&brokers, &[(&input, 2), (&out, 1), (&dlq, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let log = PredictionLogBuilder::new()
        .with_dir(dir.path())
        .build()
        .unwrap();
    let observability = Observability::new().with_prediction_log(log.clone());
    let endpoint = std::sync::Arc::new(
        observability
            .instrument(ModelEndpoint::builder(
                "observed",
                predictor_fn(|x: f64| -> Result<f64> {
                    if x < 0.0 {
                        return Err(Error::rejected("negative"));
                    }
                    Ok(x)
                }),
            ))
            .build()
            .unwrap(),
    );
    let stream = KafkaStream::new(
        endpoint.clone(),
        config(&brokers, &[&input], &out, &unique("group")),
    )
    .unwrap()
    .with_observability(&observability);
    let service = WebService::builder()
        .observability(observability)
        .admin_token(Token::new("admin-secret"))
        .endpoint(serving::kafka::JoinedEndpoint::new(
            endpoint.clone(),
            stream.ready(),
        ))
        .build()
        .unwrap();
    let server = crate::support::TestServer::start(service).await;
    let client = crate::support::client();
    let ready = client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "not ready before the stream joined");
    let running = start(stream).await;
    let ready = client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "ready once it holds its offsets");
    let producer = producer(&brokers);
    for (i, value) in ["1", "2", "-1", "3", "-2", "4", "5"].iter().enumerate() {
        produce(&producer, &input, &format!("k{i}"), value, "t").await;
    }
    read_committed(
        &brokers,
        &out,
        5,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    read_committed(
        &brokers,
        &dlq,
        2,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    // The lag is measured each second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{line} in {metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("serving_kafka_delivery_mode{endpoint=\"observed\",mode=\"exactly_once\"}"),
        1.0
    );
    assert_eq!(
        value("serving_kafka_dead_lettered_total{endpoint=\"observed\"}"),
        2.0
    );
    assert_eq!(
        value("serving_kafka_messages_committed_total{endpoint=\"observed\"}"),
        7.0
    );
    assert!(value("serving_kafka_transactions_committed_total{endpoint=\"observed\"}") >= 1.0);
    assert_eq!(
        value("serving_kafka_transactions_aborted_total{endpoint=\"observed\"}"),
        0.0
    );
    assert!(value("serving_kafka_rebalances_total{endpoint=\"observed\"}") >= 1.0);
    for partition in 0..2 {
        let lag = value(&format!(
            "serving_kafka_consumer_lag{{endpoint=\"observed\",topic=\"{input}\",partition=\"{partition}\"}}"
        ));
        assert_eq!(lag, 0.0, "caught up");
    }
    assert_eq!(value("serving_kafka_workers{endpoint=\"observed\"}"), 1.0);
    // The endpoint's own request metrics, as on the web service.
    let requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("serving_requests_total{endpoint=\"observed\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(requests, 7.0, "{metrics}");
    assert!(metrics.contains("serving_request_duration_seconds_bucket{endpoint=\"observed\""));

    let status: Value = client
        .get(server.url("/api/v1/admin/endpoints/observed"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kafka = &status["transport"]["kafka"];
    assert_eq!(kafka["delivery_mode"], "exactly_once", "{status}");
    assert_eq!(kafka["dead_lettered"], 2, "{status}");
    assert_eq!(kafka["messages_committed"], 7, "{status}");
    assert!(
        kafka["transactions_committed"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(kafka["consumer_lag"][format!("{input}/0")], 0, "{status}");

    running.stop().await;
    log.flush().await.unwrap();
    let page = log.query(&PredictionQuery::new("observed")).await.unwrap();
    let mut sources: Vec<String> = page
        .records
        .iter()
        .map(|r| r.params["source"].as_str().unwrap().to_owned())
        .collect();
    sources.sort();
    let mut expected: Vec<String> = Vec::new();
    for r in read_committed(&brokers, &out, 5, Duration::ZERO, Duration::from_secs(10))
        .await
        .iter()
        .chain(&read_committed(&brokers, &dlq, 2, Duration::ZERO, Duration::from_secs(10)).await)
    {
        expected.push(r.headers[SOURCE_HEADER].clone());
    }
    expected.sort();
    assert_eq!(
        sources, expected,
        "one record per message, its source as a param"
    );
    server.stop().await;
}

/// The example's serving logic, run as the example runs it. It holds its own copy of the iris
/// model's module, as `support` does.
#[path = "../examples/kafka_stream.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod kafka_example;

/// A prediction log with room for 600 waiting records takes a backlog of 20,000 messages
/// without dropping one: the stream waits for the log before each burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_slows_the_stream_down_rather_than_lose_prediction_records() {
    use serving::http::Observability;
    use serving::prediction_log::PredictionLogBuilder;
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("in"), unique("out"));
    create_topics(
        &brokers,
        &[(&input, 2), (&out, 1), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = PredictionLogBuilder::new()
        .with_dir(dir.path())
        .with_setting("queue_capacity", "600")
        .unwrap()
        .build()
        .unwrap();
    let observability = Observability::new().with_prediction_log(log.clone());
    let endpoint = observability
        .instrument(ModelEndpoint::builder(
            "logged",
            predictor_fn(|x: f64| -> Result<f64> { Ok(x + 1.0) }),
        ))
        .build()
        .unwrap();
    let stream = KafkaStream::new(
        endpoint,
        config(&brokers, &[&input], &out, &unique("group")),
    )
    .unwrap();
    let running = start(stream).await;
    const MESSAGES: usize = 20_000;
    let producer = producer(&brokers);
    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(2_000) {
        futures::future::join_all(batch.iter().map(|i| {
            let (key, value) = (format!("k{i}"), i.to_string());
            let producer = &producer;
            let input = &input;
            async move { produce(producer, input, &key, &value, "t").await }
        }))
        .await;
    }
    read_committed(
        &brokers,
        &out,
        MESSAGES,
        Duration::from_millis(500),
        Duration::from_secs(120),
    )
    .await;
    running.stop().await;
    log.flush().await.unwrap();
    let stats = log.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(stats.written, MESSAGES as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_predicts_iris_rows_and_rolls_over_through_the_admin_api() {
    let _broker = BROKER.read().await;
    let brokers = brokers();
    let (input, out) = (unique("iris-in"), unique("iris-out"));
    create_topics(
        &brokers,
        &[(&input, 2), (&out, 1), (&format!("{out}.dlq"), 1)],
    )
    .await;
    let settings = kafka_example::StreamSettings {
        brokers: brokers.clone(),
        input_topics: vec![input.clone()],
        output_topic: out.clone(),
        group: unique("group"),
        delivery: DeliveryMode::ExactlyOnce,
        admin_token: Some("example-admin".into()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let started = kafka_example::start(
        settings,
        serving::http::Observability::new(),
        listener,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    let client = crate::support::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.ok() == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            let body = client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            panic!(
                "the example never got ready: {body}; stream finished: {}",
                started.done.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = producer(&brokers);
    produce(&producer, &input, "a", "[5.1, 3.5, 1.4, 0.2]", "t").await;
    produce(
        &producer,
        &input,
        "b",
        r#"{"input_params": [6.7, 3.0, 5.2, 2.3]}"#,
        "t",
    )
    .await;
    let outputs = read_committed(
        &brokers,
        &out,
        2,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    let by_key: HashMap<&str, &Read> = outputs
        .iter()
        .map(|o| (o.key.as_deref().unwrap(), o))
        .collect();
    assert_eq!(by_key["a"].value, json!({"prediction": "setosa"}));
    assert_eq!(by_key["b"].value, json!({"prediction": "virginica"}));
    assert_eq!(version_of(by_key["a"]), "1");

    // A rollover over the admin API while the stream runs.
    let update = client
        .post(format!("{base}/api/v1/admin/endpoints/iris/update"))
        .bearer_auth("example-admin")
        .json(&json!({"version": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 201, "{}", update.text().await.unwrap());
    produce(&producer, &input, "c", "[5.1, 3.5, 1.4, 0.2]", "t").await;
    let outputs = read_committed(
        &brokers,
        &out,
        3,
        Duration::from_millis(300),
        Duration::from_secs(60),
    )
    .await;
    let c = outputs
        .iter()
        .find(|o| o.key.as_deref() == Some("c"))
        .unwrap();
    assert_eq!(c.value, json!({"prediction": "setosa"}));
    assert_eq!(
        version_of(c),
        "2",
        "the new version answers after the rollover"
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("serving_kafka_delivery_mode{endpoint=\"iris\",mode=\"exactly_once\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        client
            .get(format!("{base}/dashboard"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(60), started.done)
        .await
        .expect("the example stops")
        .unwrap()
        .unwrap();
}

/// The transport suite's harness over a running Kafka stream: each submission is a message on
/// a one-partition input topic (its request id as the `serving-request-id` header, its routing
/// key as the message key, an undecodable one as a value that is not JSON), each delivery an
/// output or a dead letter read back with `read_committed`.
struct KafkaHarness {
    brokers: String,
    input: String,
    producer: FutureProducer,
    outputs: Collector,
    letters: Collector,
    seen: (usize, usize),
    running: Option<Running>,
}

impl KafkaHarness {
    async fn start(kit: &serving::conformance::transport::TransportKit) -> Self {
        let brokers = brokers();
        let (input, out) = (unique("in"), unique("out"));
        let dlq = format!("{out}.dlq");
        create_topics(&brokers, &[(&input, 1), (&out, 1), (&dlq, 1)]).await;
        let mut config = config(&brokers, &[&input], &out, &unique("group"));
        config.input_format = serving::kafka::InputFormat::Json;
        let running = start(KafkaStream::new(kit.endpoint(), config).unwrap()).await;
        KafkaHarness {
            producer: producer(&brokers),
            outputs: Collector::start(&brokers, &out),
            letters: Collector::start(&brokers, &dlq),
            brokers,
            input,
            seen: (0, 0),
            running: Some(running),
        }
    }

    fn produce(&self, items: Vec<serving::conformance::transport::Submission>) {
        use serving::conformance::transport::Payload;
        for submission in items {
            let value = match &submission.payload {
                Payload::Json(value) => value.to_string(),
                _ => "not json {".to_owned(),
            };
            let mut headers = OwnedHeaders::new();
            if let Some(id) = &submission.request_id {
                headers = headers.insert(Header {
                    key: "serving-request-id",
                    value: Some(id),
                });
            }
            let mut record = FutureRecord::to(&self.input)
                .payload(&value)
                .headers(headers);
            if let Some(key) = &submission.routing_key {
                record = record.key(key);
            }
            drop(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
        }
        self.producer.flush(Duration::from_secs(10)).unwrap();
    }

    fn unseen(&self) -> usize {
        self.outputs.snapshot().len() - self.seen.0 + self.letters.snapshot().len() - self.seen.1
    }

    /// What came out since the last call: predictions, then dead letters.
    async fn delivered(
        &mut self,
        settle: Duration,
    ) -> Vec<serving::conformance::transport::Delivered> {
        use serving::conformance::transport::Delivered;
        tokio::time::sleep(settle).await;
        let (outputs, letters) = (self.outputs.snapshot(), self.letters.snapshot());
        let delivered = outputs[self.seen.0..]
            .iter()
            .map(|r| {
                Delivered::new(
                    r.headers.get("serving-request-id").cloned(),
                    Some(r.value.clone()),
                )
            })
            .chain(
                letters[self.seen.1..]
                    .iter()
                    .map(|r| Delivered::new(r.headers.get("serving-request-id").cloned(), None)),
            )
            .collect();
        self.seen = (outputs.len(), letters.len());
        delivered
    }
}

#[async_trait::async_trait]
impl serving::conformance::transport::TransportHarness for KafkaHarness {
    fn order(&self) -> serving::runner::OutputOrder {
        // One input partition: its order is the input order.
        serving::runner::OutputOrder::Input
    }

    async fn submit(
        &mut self,
        items: Vec<serving::conformance::transport::Submission>,
    ) -> Vec<serving::conformance::transport::Delivered> {
        let count = items.len();
        self.produce(items);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.unseen() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} delivered",
                self.unseen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.delivered(Duration::from_millis(300)).await
    }

    async fn submit_then_shut_down(
        &mut self,
        items: Vec<serving::conformance::transport::Submission>,
        busy: futures::future::BoxFuture<'static, ()>,
    ) -> Vec<serving::conformance::transport::Delivered> {
        self.produce(items);
        busy.await;
        self.running.take().expect("running").stop().await;
        // What it committed before it stopped is readable now.
        self.delivered(Duration::from_secs(1)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_stream_passes_the_transport_suite() {
    use serving::conformance::transport::{self, TransportKit};
    let _broker = BROKER.read().await;
    let kit = TransportKit::new();
    let mut kafka = KafkaHarness::start(&kit).await;
    let _ = &kafka.brokers;
    let patience = Duration::from_secs(120);
    // The kit's endpoint runs two at once and queues 256: the stream takes the messages as
    // they arrive and they wait in that queue, so their latency counts the wait.
    tokio::time::timeout(patience, transport::records(&mut kafka, &kit))
        .await
        .expect("records");
    eprintln!("transport suite: records passed");
    tokio::time::timeout(patience, transport::refusals(&mut kafka, &kit))
        .await
        .expect("refusals");
    eprintln!("transport suite: refusals passed");
    tokio::time::timeout(patience, transport::order(&mut kafka, &kit))
        .await
        .expect("order");
    eprintln!("transport suite: order passed");
    tokio::time::timeout(patience, transport::drain(&mut kafka, &kit))
        .await
        .expect("drain");
}
