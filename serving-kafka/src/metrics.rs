//! [`KafkaMetrics`]: what a stream adds to `/metrics` and to the admin status beside the
//! endpoint's own request metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use serde_json::{Value, json};

use crate::config::DeliveryMode;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModeLabels {
    endpoint: String,
    mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabels {
    endpoint: String,
    topic: String,
    partition: String,
}

/// A stream's counters, exported to Prometheus and read into the admin status.
///
/// | Metric | Type | Labels |
/// |---|---|---|
/// | `serving_kafka_delivery_mode` | gauge, 1 for the active mode | `endpoint`, `mode` |
/// | `serving_kafka_messages_committed_total` | counter: outputs (predictions and dead letters) committed | `endpoint` |
/// | `serving_kafka_dead_lettered_total` | counter: dead letters committed | `endpoint` |
/// | `serving_kafka_transactions_committed_total` | counter (offset commits at least once) | `endpoint` |
/// | `serving_kafka_transactions_aborted_total` | counter | `endpoint` |
/// | `serving_kafka_rebalances_total` | counter: assignments received | `endpoint` |
/// | `serving_kafka_consumer_lag` | gauge: messages behind the partition's end | `endpoint`, `topic`, `partition` |
/// | `serving_kafka_workers` | gauge: consumer workers running | `endpoint` |
#[derive(Debug)]
pub struct KafkaMetrics {
    endpoint: String,
    mode: DeliveryMode,
    messages: Counter,
    dead_lettered: Counter,
    committed: Counter,
    aborted: Counter,
    rebalances: Counter,
    workers: Gauge,
    lag: Family<PartitionLabels, Gauge>,
    lag_by_partition: Mutex<BTreeMap<String, i64>>,
    assigned: AtomicI64,
    registry: Mutex<Option<Registry>>,
}

impl KafkaMetrics {
    /// The counters of the stream of `endpoint` in `mode`, all at zero.
    pub fn new(endpoint: &str, mode: DeliveryMode) -> Arc<Self> {
        let labels = EndpointLabels {
            endpoint: endpoint.to_owned(),
        };
        let per_endpoint = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<EndpointLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family.get_or_create(&labels).clone()
        };
        let mut registry = Registry::default();
        let modes = Family::<ModeLabels, Gauge>::default();
        registry.register(
            "serving_kafka_delivery_mode",
            "The stream's delivery mode: 1 for the active one",
            modes.clone(),
        );
        modes
            .get_or_create(&ModeLabels {
                endpoint: endpoint.to_owned(),
                mode: mode.as_str().to_owned(),
            })
            .set(1);
        let messages = per_endpoint(
            &mut registry,
            "serving_kafka_messages_committed",
            "Input messages whose output (prediction or dead letter) was committed",
        );
        let dead_lettered = per_endpoint(
            &mut registry,
            "serving_kafka_dead_lettered",
            "Input messages committed to the dead-letter topic",
        );
        let committed = per_endpoint(
            &mut registry,
            "serving_kafka_transactions_committed",
            "Transactions committed (offset commits, at least once)",
        );
        let aborted = per_endpoint(
            &mut registry,
            "serving_kafka_transactions_aborted",
            "Transactions aborted, each followed by a rewind to the last commit",
        );
        let rebalances = per_endpoint(
            &mut registry,
            "serving_kafka_rebalances",
            "Partition assignments the consumer received",
        );
        let workers_family = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "serving_kafka_workers",
            "Consumer workers running in this process",
            workers_family.clone(),
        );
        let workers = workers_family.get_or_create(&labels).clone();
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "serving_kafka_consumer_lag",
            "Messages between the consumer's position and the partition's end",
            lag.clone(),
        );
        Arc::new(KafkaMetrics {
            endpoint: endpoint.to_owned(),
            mode,
            messages,
            dead_lettered,
            committed,
            aborted,
            rebalances,
            workers,
            lag,
            lag_by_partition: Mutex::default(),
            assigned: AtomicI64::new(0),
            registry: Mutex::new(Some(registry)),
        })
    }

    /// The Prometheus registry of these metrics, once (for
    /// [`PrometheusMetrics::add_registry`](serving_core::PrometheusMetrics::add_registry)).
    pub fn take_registry(&self) -> Option<Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(crate) fn committed(&self, messages: u64, dead_lettered: u64) {
        self.messages.inc_by(messages);
        self.dead_lettered.inc_by(dead_lettered);
        self.committed.inc();
    }

    pub(crate) fn aborted(&self) {
        self.aborted.inc();
    }

    pub(crate) fn set_workers(&self, workers: u32) {
        self.workers.set(i64::from(workers));
    }

    /// Replaces the lag of every partition with `lags` (`(topic, partition, lag)`).
    pub(crate) fn set_lag(&self, lags: &[(String, i32, i64)]) {
        let mut known = self
            .lag_by_partition
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.clear();
        self.lag.clear();
        for (topic, partition, lag) in lags {
            self.lag
                .get_or_create(&PartitionLabels {
                    endpoint: self.endpoint.clone(),
                    topic: topic.clone(),
                    partition: partition.to_string(),
                })
                .set(*lag);
            known.insert(format!("{topic}/{partition}"), *lag);
        }
    }

    /// The total lag over the partitions assigned.
    pub fn total_lag(&self) -> i64 {
        self.lag_by_partition
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Messages whose output was committed.
    pub fn messages_committed(&self) -> u64 {
        self.messages.get()
    }

    /// Dead letters committed.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.get()
    }

    /// Transactions (or offset commits) that succeeded.
    pub fn transactions_committed(&self) -> u64 {
        self.committed.get()
    }

    /// Transactions aborted.
    pub fn transactions_aborted(&self) -> u64 {
        self.aborted.get()
    }

    /// Assignments received.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.get()
    }

    /// Consumer workers running.
    pub fn workers(&self) -> i64 {
        self.workers.get()
    }

    /// What the admin status shows under `kafka`.
    pub fn status(&self) -> Value {
        json!({
            "delivery_mode": self.mode.as_str(),
            "messages_committed": self.messages_committed(),
            "dead_lettered": self.dead_lettered(),
            "transactions_committed": self.transactions_committed(),
            "transactions_aborted": self.transactions_aborted(),
            "rebalances": self.rebalances(),
            "assigned_partitions": self.assigned.load(Ordering::Relaxed),
            "workers": self.workers(),
            "consumer_lag": *self.lag_by_partition.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// The consumer's context: counts rebalances, and marks a revocation under the commit lock.
pub(crate) struct StreamContext {
    pub(crate) metrics: Arc<KafkaMetrics>,
    /// Held while a transaction commits; `true` once partitions were revoked since the last
    /// rewind. A revocation waits for a commit in progress, and a commit after it aborts, so
    /// that offsets of a partition are never committed once another member may own it.
    pub(crate) revoked: Arc<Mutex<bool>>,
}

impl ClientContext for StreamContext {}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance
            && partitions.count() > 0
        {
            *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = true;
            tracing::info!(
                endpoint = %self.metrics.endpoint,
                partitions = partitions.count(),
                "kafka partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.metrics.rebalances.inc();
            self.metrics
                .assigned
                .store(partitions.count() as i64, Ordering::Relaxed);
            tracing::info!(
                endpoint = %self.metrics.endpoint,
                partitions = partitions.count(),
                "kafka partitions assigned"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_render_and_show_in_the_status() {
        let metrics = KafkaMetrics::new("scorer", DeliveryMode::ExactlyOnce);
        metrics.committed(10, 2);
        metrics.committed(5, 0);
        metrics.aborted();
        metrics.set_lag(&[("in".into(), 0, 7), ("in".into(), 1, 3)]);
        metrics.set_workers(2);
        let mut text = String::new();
        let registry = metrics.take_registry().unwrap();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "serving_kafka_delivery_mode{endpoint=\"scorer\",mode=\"exactly_once\"} 1",
            "serving_kafka_messages_committed_total{endpoint=\"scorer\"} 15",
            "serving_kafka_dead_lettered_total{endpoint=\"scorer\"} 2",
            "serving_kafka_transactions_committed_total{endpoint=\"scorer\"} 2",
            "serving_kafka_transactions_aborted_total{endpoint=\"scorer\"} 1",
            "serving_kafka_consumer_lag{endpoint=\"scorer\",topic=\"in\",partition=\"1\"} 3",
            "serving_kafka_workers{endpoint=\"scorer\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(metrics.take_registry().is_none(), "handed out once");
        let status = metrics.status();
        assert_eq!(status["delivery_mode"], "exactly_once");
        assert_eq!(status["dead_lettered"], 2);
        assert_eq!(status["consumer_lag"]["in/0"], 7);
        assert_eq!(metrics.total_lag(), 10);
    }
}
