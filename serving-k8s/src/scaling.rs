//! Lag-based scaling of Kafka streams: a KEDA [`ScaledObject`] when KEDA's CRD is installed in
//! the cluster, otherwise an autoscaling/v2 HPA on the [`LAG_METRIC`] external metric. Either
//! way the maximum is the spec's capped by the input partitions.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    ExternalMetricSource, MetricIdentifier, MetricSpec, MetricTarget,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Client, CustomResource};
use serde::{Deserialize, Serialize};
use serving_core::{EndpointKind, Error, Result};

use crate::config::ServingEndpointSpec;
use crate::error::K8sError;
use crate::manifests::labels;

/// The gauge of a stream's consumer lag that `serving-kafka` exports (per `endpoint`, `topic`
/// and `partition`), the external metric the HPA scales on (through a metrics adapter such
/// as prometheus-adapter).
pub const LAG_METRIC: &str = "serving_kafka_consumer_lag";

/// Messages behind per replica that call for one more, when the Kafka section sets no
/// `transaction_messages`: `serving-kafka`'s own default, so in-process and cluster scaling
/// agree.
pub const DEFAULT_LAG_THRESHOLD: u64 = 1000;

/// KEDA's API group and version, and the plural of its `ScaledObject`.
pub(crate) const KEDA_API: (&str, &str) = ("keda.sh/v1alpha1", "scaledobjects");

/// How a Kafka stream's replicas follow its consumer lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LagScaling {
    /// A KEDA `ScaledObject` when the cluster has KEDA's CRD (`scaledobjects.keda.sh`), an
    /// external-metric HPA otherwise; asked of the API server's discovery on every apply.
    #[default]
    Auto,
    /// Always a KEDA `ScaledObject` (KEDA creates the HPA).
    Keda,
    /// Always an autoscaling/v2 HPA on [`LAG_METRIC`].
    Hpa,
}

/// The spec of KEDA's `ScaledObject` (`keda.sh/v1alpha1`), the fields `serving` sets.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    derive = "PartialEq",
    schema = "disabled",
    doc = "KEDA's ScaledObject: scales a Deployment on event sources such as Kafka lag."
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    /// What it scales.
    pub scale_target_ref: ScaleTargetRef,
    /// Fewest replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    /// Most replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    /// The event sources, here one Kafka trigger per input topic.
    pub triggers: Vec<ScaleTrigger>,
}

/// The Deployment a [`ScaledObject`] scales.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// `apps/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Deployment's name.
    pub name: String,
}

/// One KEDA trigger: its scaler type (`kafka`) and the scaler's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleTrigger {
    /// The scaler (`kafka`).
    #[serde(rename = "type")]
    pub type_: String,
    /// The scaler's settings (`bootstrapServers`, `consumerGroup`, `topic`, `lagThreshold`).
    pub metadata: BTreeMap<String, String>,
}

/// What a stream's Kafka section says about where it consumes, read as written (the section
/// is `serving-kafka`'s; only the keys scaling needs are read here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaSource {
    pub(crate) brokers: Vec<String>,
    pub(crate) topics: Vec<String>,
    pub(crate) group: String,
    pub(crate) lag_threshold: u64,
}

impl KafkaSource {
    /// The source of a Kafka stream; `None` for the other kinds.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] when the section names no broker or no input topic.
    pub(crate) fn of(endpoint: &ServingEndpointSpec) -> Result<Option<Self>> {
        let EndpointKind::KafkaStream(section) = &endpoint.endpoint.kind else {
            return Ok(None);
        };
        // A list, or a comma-separated string as KEY-VALUE pairs write it.
        let list = |keys: &[&str]| -> Vec<String> {
            let value = keys.iter().find_map(|key| section.get(key));
            match value {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(|item| item.as_str())
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Some(serde_json::Value::String(text)) => text
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let brokers = list(&["brokers", "bootstrap.servers"]);
        let topics = list(&["input_topics"]);
        let invalid = |what: &str| Error::InvalidSpec {
            reason: format!(
                "endpoint `{}`: lag-based scaling needs the Kafka section's {what}",
                endpoint.name()
            ),
        };
        if brokers.is_empty() {
            return Err(invalid("brokers"));
        }
        if topics.is_empty() {
            return Err(invalid("input_topics"));
        }
        let group = ["group_id", "group.id"]
            .iter()
            .find_map(|key| section.get(key).and_then(|v| v.as_str()))
            .map_or_else(|| format!("serving-{}", endpoint.name()), str::to_owned);
        Ok(Some(KafkaSource {
            brokers,
            topics,
            group,
            lag_threshold: lag_threshold(endpoint),
        }))
    }
}

/// Messages behind per replica: the section's `transaction_messages` (the batch one worker
/// takes at a time) or [`DEFAULT_LAG_THRESHOLD`].
pub(crate) fn lag_threshold(endpoint: &ServingEndpointSpec) -> u64 {
    endpoint
        .endpoint
        .kind
        .section()
        .and_then(|section| section.get("transaction_messages"))
        .and_then(|value| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_LAG_THRESHOLD)
}

/// The HPA metric of a stream: the total [`LAG_METRIC`] of its partitions divided by the
/// replicas, one replica per [`lag_threshold`] messages behind.
pub(crate) fn lag_metric(endpoint: &ServingEndpointSpec) -> MetricSpec {
    MetricSpec {
        type_: "External".to_owned(),
        external: Some(ExternalMetricSource {
            metric: MetricIdentifier {
                name: LAG_METRIC.to_owned(),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "endpoint".to_owned(),
                        endpoint.name().to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
            },
            target: MetricTarget {
                type_: "AverageValue".to_owned(),
                average_value: Some(Quantity(lag_threshold(endpoint).to_string())),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// The KEDA `ScaledObject` of a Kafka stream (named after the endpoint, scaling its
/// Deployment within [`ServingEndpointSpec::bounds`]): one `kafka` trigger per input topic, on
/// the stream's consumer group. `None` for the other kinds.
///
/// # Errors
/// [`Error::InvalidSpec`] when the Kafka section names no broker or no input topic.
pub fn scaled_object(
    endpoint: &ServingEndpointSpec,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> Result<Option<ScaledObject>> {
    let Some(source) = KafkaSource::of(endpoint)? else {
        return Ok(None);
    };
    let bounds = endpoint.bounds();
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let triggers = source
        .topics
        .iter()
        .map(|topic| ScaleTrigger {
            type_: "kafka".to_owned(),
            metadata: BTreeMap::from([
                ("bootstrapServers".to_owned(), source.brokers.join(",")),
                ("consumerGroup".to_owned(), source.group.clone()),
                ("topic".to_owned(), topic.clone()),
                ("lagThreshold".to_owned(), source.lag_threshold.to_string()),
            ]),
        })
        .collect();
    let mut object = ScaledObject::new(
        endpoint.name(),
        ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".to_owned()),
                kind: Some("Deployment".to_owned()),
                name: endpoint.name().to_owned(),
            },
            min_replica_count: Some(count(bounds.min_replicas)),
            max_replica_count: Some(count(bounds.max_replicas)),
            triggers,
        },
    );
    object.metadata = ObjectMeta {
        name: Some(endpoint.name().to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(endpoint)),
        owner_references: owner.map(|owner| vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    Ok(Some(object))
}

/// Whether the API server serves `plural` in `group_version` (`keda.sh/v1alpha1`,
/// `scaledobjects`), from its discovery.
pub(crate) async fn serves(
    client: &Client,
    group_version: &str,
    plural: &str,
    namespace: &str,
) -> Result<bool, K8sError> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(K8sError::from_kube(
            e,
            "discover",
            &format!("{plural}.{group_version}"),
            namespace,
        )),
    }
}

#[cfg(test)]
mod tests {
    use serving_core::{AutoscaleBounds, BackendSection, EndpointSpec, ModelRef};

    use super::*;

    fn stream(section: serde_json::Value) -> ServingEndpointSpec {
        let mut spec = EndpointSpec::new("scorer", ModelRef::new("m", "1"));
        spec.kind = EndpointKind::KafkaStream(BackendSection::from_config(&section).unwrap());
        spec.autoscale = AutoscaleBounds::new(1, 10).unwrap();
        ServingEndpointSpec::new(spec, "registry.test/m:1").with_partitions(4)
    }

    #[test]
    fn a_scaled_object_has_a_kafka_trigger_per_topic_within_the_partitions() {
        let spec = stream(serde_json::json!({
            "brokers": ["k1:9092", "k2:9092"], "input_topics": "a, b", "output_topic": "out",
            "transaction_messages": 250,
        }));
        let object = scaled_object(&spec, "ml", None).unwrap().unwrap();
        assert_eq!(object.spec.scale_target_ref.name, "scorer");
        assert_eq!(
            (object.spec.min_replica_count, object.spec.max_replica_count),
            (Some(1), Some(4)),
            "the maximum is capped by the 4 partitions"
        );
        assert_eq!(object.spec.triggers.len(), 2);
        let trigger = &object.spec.triggers[1].metadata;
        assert_eq!(trigger["bootstrapServers"], "k1:9092,k2:9092");
        assert_eq!(trigger["consumerGroup"], "serving-scorer");
        assert_eq!(trigger["topic"], "b");
        assert_eq!(trigger["lagThreshold"], "250");
        let json = serde_json::to_value(&object).unwrap();
        assert_eq!(json["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(json["kind"], "ScaledObject");
        assert_eq!(json["spec"]["triggers"][0]["type"], "kafka");
        assert_eq!(json["spec"]["scaleTargetRef"]["kind"], "Deployment");
    }

    #[test]
    fn the_group_is_the_sections_and_the_threshold_defaults() {
        let spec = stream(serde_json::json!({
            "bootstrap.servers": "k:9092", "input_topics": ["in"], "group.id": "fraud",
        }));
        let source = KafkaSource::of(&spec).unwrap().unwrap();
        assert_eq!(source.group, "fraud");
        assert_eq!(source.lag_threshold, DEFAULT_LAG_THRESHOLD);
        let metric = lag_metric(&spec);
        let external = metric.external.unwrap();
        assert_eq!(external.metric.name, LAG_METRIC);
        assert_eq!(
            external.target.average_value,
            Some(Quantity("1000".to_owned()))
        );
    }

    #[test]
    fn a_section_without_brokers_or_topics_is_refused_by_name() {
        let error = scaled_object(
            &stream(serde_json::json!({"input_topics": ["in"]})),
            "ml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("needs the Kafka section's brokers"),
            "{error}"
        );
        let error = KafkaSource::of(&stream(serde_json::json!({"brokers": ["k:1"]})))
            .unwrap_err()
            .to_string();
        assert!(error.contains("input_topics"), "{error}");
        let mut web = stream(serde_json::json!({}));
        web.endpoint.kind = EndpointKind::WebService;
        web.partitions = None;
        assert_eq!(scaled_object(&web, "ml", None).unwrap(), None);
    }
}
