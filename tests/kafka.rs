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
use serving::{Context, Error, ModelEndpoint, Result, predictor_fn};
use tokio::sync::oneshot;

/// Held shared by every Kafka test and exclusively by the one that restarts the broker.
pub(crate) static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The broker's address; the Kafka tests fail (never skip) without one.
fn brokers() -> String {
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
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
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

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: &str, trace: &str) {
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
struct Read {
    key: Option<String>,
    value: Value,
    headers: HashMap<String, String>,
}

/// Reads `topic` from the start with `read_committed` until `count` messages came and
/// `settle` passed without another one (so extra messages would be seen), or `timeout`.
async fn read_committed(
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
    let mut config = config(brokers, &[input], out, group);
    config.delivery = delivery.parse().unwrap();
    config.transaction_messages = 200;
    let predictor = predictor_fn(|x: f64| -> Result<f64> { Ok(x) });
    let endpoint = ModelEndpoint::builder("child", predictor).build().unwrap();
    let stream = KafkaStream::new(endpoint, config).unwrap();
    stream.run(std::future::pending()).await.unwrap();
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
