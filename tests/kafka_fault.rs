//! The Kafka stream's fault test against the real broker (`$SERVING_TEST_KAFKA`): 100,000 keyed
//! messages produced while the model is rolled over twice through the admin REST API, the
//! stream process is SIGKILLed and started again, and the broker restarts. Then the output
//! topic, read with `read_committed`, must hold every input exactly once (exactly-once mode),
//! or at least once (at-least-once mode, duplicates counted), each output from a registered
//! version, versions monotone per partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serving::http::{Token, WebService};
use serving::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use serving::kafka::rdkafka::message::{Headers as _, Message as _};
use serving::kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serving::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serving::kafka::{DeliveryMode, KafkaStream, KafkaStreamConfig, MODEL_VERSION_HEADER};
use serving::{EndpointSpec, ModelEndpoint, ModelRef, ModelRegistry, Result, predictor_fn};

use crate::kafka::{BROKER, brokers, create_topics, unique};

/// Inputs produced per mode.
const COUNT: usize = 100_000;
/// Partitions of the input and the output topic.
const PARTITIONS: i32 = 3;
/// The versions the child's registry holds.
const VERSIONS: [&str; 3] = ["1", "2", "3"];
const ADMIN_TOKEN: &str = "fault-admin-token-0123456789abcdef";
const CHILD_ENV: &str = "SERVING_KAFKA_FAULT_CHILD";

/// Version `k` of the model: echoes its input with its own number, so the output's version
/// header can be checked against the code that answered.
fn version(k: u32) -> impl serving::Predictor {
    predictor_fn(move |x: f64| -> Result<Value> { Ok(json!({"i": x, "k": k})) })
}

/// Run by `exactly_once_and_at_least_once_across_rollovers_a_sigkill_and_a_broker_restart` in
/// a child process: the stream and the admin API until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the fault test"]
async fn fault_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let [brokers, input, out, group, delivery, port, stable] = parts[..] else {
        panic!("{CHILD_ENV}: {spec}");
    };
    let registry = Arc::new(ModelRegistry::new());
    for k in 1..=3u32 {
        registry.register("echo", k.to_string(), move || Ok(version(k)));
    }
    // The version the admin API's spec named last: a restarted process deploys that spec.
    let endpoint = Arc::new(
        ModelEndpoint::from_spec(
            EndpointSpec::new("fault", ModelRef::new("echo", stable)),
            &registry,
        )
        .unwrap()
        .build()
        .unwrap(),
    );
    let service = WebService::builder()
        .endpoint(Arc::clone(&endpoint))
        .admin_token(Token::new(ADMIN_TOKEN))
        .build()
        .unwrap();
    let router = WebService::with_fallbacks(service.admin_router());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let mut config = KafkaStreamConfig::new([brokers], [input], out);
    config.group_id = Some(group.to_owned());
    config.delivery = delivery.parse().unwrap();
    config.transaction_messages = 500;
    config.transaction_ms = 50;
    // A killed member's partitions go to its successor after 6 s, not the default 45 s.
    config
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config
        .properties
        .insert("heartbeat.interval.ms".into(), "1000".into());
    let stream = KafkaStream::new(endpoint, config).unwrap();
    stream.run(std::future::pending()).await.unwrap();
}

/// A child process serving the stream at version `stable`, its admin API on `port`.
struct Child {
    process: std::process::Child,
    port: u16,
}

impl Child {
    fn spawn(base: &str, stable: &str) -> Child {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kafka_fault::fault_child",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{base},{port},{stable}"))
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(std::env::temp_dir().join("serving-kafka-fault-child.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Child { process, port }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/api/v1/admin/endpoints/fault{path}",
            self.port
        )
    }

    /// Rolls the stream over to registered `version` through the admin API and returns the
    /// version its exported spec names then.
    async fn roll_over(&self, client: &reqwest::Client, version: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let response = loop {
            // The admin API of a just-started child may not listen yet.
            match client
                .post(self.url("/update"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"version": version}))
                .send()
                .await
            {
                Ok(response) => break response,
                Err(error) => {
                    assert!(Instant::now() < deadline, "admin API: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        let spec: Value = client
            .get(self.url("/spec"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        spec["model"]["version"].as_str().unwrap().to_owned()
    }

    fn kill(mut self) {
        self.process.kill().unwrap(); // SIGKILL
        self.process.wait().unwrap();
    }
}

/// One message read back.
#[derive(Debug)]
struct Read {
    partition: i32,
    value: Value,
    version: Option<String>,
}

/// Reads every partition of `topic` from the start with `read_committed` until `count`
/// messages came and `settle` passed without another (so extras would be seen), or `timeout`.
async fn read_committed(
    brokers: &str,
    topic: &str,
    partitions: i32,
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
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let mut read = Vec::with_capacity(count);
        let mut last = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last = Instant::now();
                    let payload = message.payload().unwrap_or_default();
                    let version = message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == MODEL_VERSION_HEADER)
                            .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into())
                    });
                    read.push(Read {
                        partition: message.partition(),
                        value: serde_json::from_slice(payload).unwrap_or(Value::Null),
                        version,
                    });
                }
                // A broker that just restarted may answer with a transient error.
                Some(Err(error)) => eprintln!("reading {topic}: {error}"),
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

/// How many of the inputs `0..COUNT` are missing from `values` and how many appear more than
/// once; values outside the range count as neither and fail the test.
fn lost_and_duplicated(values: impl IntoIterator<Item = f64>) -> (usize, usize) {
    let mut seen = vec![0usize; COUNT];
    for value in values {
        assert!(
            value >= 0.0 && value < COUNT as f64 && value.fract() == 0.0,
            "not an input: {value}"
        );
        seen[value as usize] += 1;
    }
    (
        seen.iter().filter(|n| **n == 0).count(),
        seen.iter().map(|n| n.saturating_sub(1)).sum(),
    )
}

/// Waits until the group holds committed offsets for every partition of `topic` (the child
/// committed its starting offsets: what is produced from then on is predicted).
async fn wait_for_committed_offsets(brokers: &str, group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for p in 0..PARTITIONS {
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
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the child never committed its starting offsets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn produced_at_least(produced: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while produced.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the feeder is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn restart_broker() {
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
}

/// What one mode's run counted.
#[derive(Debug)]
struct Counts {
    outputs: usize,
    lost: usize,
    duplicated: usize,
    per_version: BTreeMap<String, usize>,
}

async fn run_through_faults(brokers: &str, delivery: DeliveryMode) -> Counts {
    let (input, out) = (unique("fault-in"), unique("fault-out"));
    create_topics(
        brokers,
        &[
            (&input, PARTITIONS),
            (&out, PARTITIONS),
            (&format!("{out}.dlq"), 1),
        ],
    )
    .await;
    let group = unique("fault-group");
    let base = format!("{brokers},{input},{out},{group},{delivery}");
    let client = reqwest::Client::new();
    let mut child = Child::spawn(&base, "1");
    wait_for_committed_offsets(brokers, &group, &input).await;

    // Idempotent, so that the broker restart cannot duplicate an input.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let produced = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (producer, input, produced) = (producer.clone(), input.clone(), produced.clone());
        tokio::spawn(async move {
            // About 5,000 messages a second, so the faults fall in the middle of the stream.
            for i in 0..COUNT {
                let key = format!("k{}", i % 101);
                let value = i.to_string();
                let record = FutureRecord::to(&input).key(&key).payload(&value);
                drop(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                produced.store(i + 1, Ordering::Relaxed);
                if i % 500 == 499 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let p = producer.clone();
            // Generous: after the broker restart, on a loaded machine, the queue has taken
            // over two minutes to drain (seen once in the full suite).
            tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(600)))
                .await
                .unwrap()
                .unwrap();
        })
    };

    produced_at_least(&produced, COUNT * 15 / 100).await;
    assert_eq!(child.roll_over(&client, "2").await, "2");
    eprintln!("{delivery}: rolled over to 2");
    produced_at_least(&produced, COUNT * 35 / 100).await;
    child.kill();
    child = Child::spawn(&base, "2");
    eprintln!("{delivery}: killed with SIGKILL and started again at version 2");
    produced_at_least(&produced, COUNT * 55 / 100).await;
    restart_broker();
    eprintln!("{delivery}: broker restarted");
    produced_at_least(&produced, COUNT * 75 / 100).await;
    assert_eq!(child.roll_over(&client, "3").await, "3");
    eprintln!("{delivery}: rolled over to 3");
    feeder.await.unwrap();

    let outputs = read_committed(
        brokers,
        &out,
        PARTITIONS,
        COUNT,
        Duration::from_secs(3),
        Duration::from_secs(180),
    )
    .await;
    child.kill();
    // The inputs themselves are each there once, so the outputs' counts are the stream's.
    let inputs = read_committed(
        brokers,
        &input,
        PARTITIONS,
        COUNT,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    let (missing, doubled) = lost_and_duplicated(inputs.iter().map(|r| r.value.as_f64().unwrap()));
    assert_eq!((missing, doubled), (0, 0), "{delivery}: the inputs");
    let dead_letters = read_committed(
        brokers,
        &format!("{out}.dlq"),
        1,
        0,
        Duration::from_millis(300),
        Duration::from_secs(10),
    )
    .await;
    assert!(dead_letters.is_empty(), "{delivery}: {dead_letters:?}");

    let mut per_version = BTreeMap::new();
    let mut last_per_partition: HashMap<i32, u32> = HashMap::new();
    for output in &outputs {
        let version = output.version.as_deref().expect("a model version header");
        assert!(VERSIONS.contains(&version), "{delivery}: version {version}");
        assert_eq!(
            output.value["k"],
            json!(version.parse::<u32>().unwrap()),
            "{delivery}: the header names the version that answered: {output:?}"
        );
        *per_version.entry(version.to_owned()).or_insert(0) += 1;
        let number: u32 = version.parse().unwrap();
        let last = last_per_partition.entry(output.partition).or_insert(number);
        assert!(
            number >= *last,
            "{delivery}: version {number} after {last} on partition {}",
            output.partition
        );
        *last = number;
    }
    let (lost, duplicated) =
        lost_and_duplicated(outputs.iter().map(|o| o.value["i"].as_f64().unwrap()));
    Counts {
        outputs: outputs.len(),
        lost,
        duplicated,
        per_version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_and_at_least_once_across_rollovers_a_sigkill_and_a_broker_restart() {
    // Exclusive: the broker restarts under every other Kafka test.
    let _broker = BROKER.write().await;
    let brokers = brokers();
    for delivery in [DeliveryMode::ExactlyOnce, DeliveryMode::AtLeastOnce] {
        let started = Instant::now();
        let counts = run_through_faults(&brokers, delivery).await;
        eprintln!(
            "fault test, {delivery}: {COUNT} inputs, {} outputs, lost {}, duplicated {}, per version {:?}, {:.0} s",
            counts.outputs,
            counts.lost,
            counts.duplicated,
            counts.per_version,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(counts.lost, 0, "{delivery}: {counts:?}");
        if delivery == DeliveryMode::ExactlyOnce {
            assert_eq!(counts.duplicated, 0, "{delivery}: {counts:?}");
        }
        for version in VERSIONS {
            assert!(
                counts.per_version.get(version).is_some_and(|n| *n > 0),
                "{delivery}: no output from version {version}: {counts:?}"
            );
        }
    }
}
