//! [`ServingEndpointSpec`]: what to run on the cluster, an endpoint spec plus its image.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serving_core::{AutoscaleBounds, EndpointKind, EndpointSpec, Error, Result};

/// The default port the pod's web server listens on.
pub const DEFAULT_PORT: u16 = 8080;

/// The default drain timeout: `serving-http`'s `drain_timeout` default.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;

/// Seconds Kubernetes waits beyond the drain before it kills a terminating pod, so a drain
/// that takes its whole timeout still ends cleanly.
pub const TERMINATION_MARGIN_SECS: u64 = 15;

/// One endpoint as it runs on Kubernetes: its [`EndpointSpec`], the container image of the
/// user's binary that embeds `serving`, and the pod's settings: what the
/// [`ServingEndpoint`](crate::ServingEndpoint) custom resource's `spec` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServingEndpointSpec {
    /// The endpoint's whole specification (mounted into the pod as YAML).
    pub endpoint: EndpointSpec,
    /// The container image (`registry/name:tag`).
    pub image: String,
    /// CPU and memory the pod requests and may use; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PodResources>,
    /// The input topics' partition count of a Kafka stream: more consumers than partitions
    /// would sit idle, so it caps `max_replicas`. Stated here when the controller cannot reach
    /// the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Seconds the pod's graceful shutdown waits for requests in flight
    /// (`SERVING_DRAIN_TIMEOUT`); the pod gets [`TERMINATION_MARGIN_SECS`] more to exit.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// The port the pod's web server listens on (`SERVING_ADDR`).
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_drain_timeout_secs() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_SECS
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// A container's resource requests and limits, as Kubernetes quantities (`cpu: 500m`,
/// `memory: 256Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PodResources {
    /// What the scheduler reserves for the pod.
    pub requests: BTreeMap<String, String>,
    /// The most the pod may use.
    pub limits: BTreeMap<String, String>,
}

impl ServingEndpointSpec {
    /// The endpoint `endpoint` in the image `image`, with the default port and drain.
    pub fn new(endpoint: EndpointSpec, image: impl Into<String>) -> Self {
        ServingEndpointSpec {
            endpoint,
            image: image.into(),
            resources: None,
            partitions: None,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
            port: DEFAULT_PORT,
        }
    }

    /// With resource requests and limits.
    pub fn with_resources(mut self, resources: PodResources) -> Self {
        self.resources = Some(resources);
        self
    }

    /// With the Kafka input's partition count, which caps `max_replicas`.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// With the pod's drain timeout.
    pub fn with_drain_timeout(mut self, drain: Duration) -> Self {
        self.drain_timeout_secs = drain.as_secs();
        self
    }

    /// The endpoint's name (every object's name).
    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// Checks the endpoint spec, the image, the port, the drain and the partition count.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] or [`Error::InvalidSetting`] naming what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.endpoint.validate()?;
        let invalid = |reason: String| {
            Err(Error::InvalidSpec {
                reason: format!("endpoint `{}`: {reason}", self.endpoint.name),
            })
        };
        if self.image.trim().is_empty() {
            return invalid("the container image is missing".into());
        }
        if self.image.chars().any(char::is_whitespace) {
            return invalid(format!("image `{}` contains whitespace", self.image));
        }
        if self.port == 0 {
            return invalid("the port must not be 0".into());
        }
        if self.drain_timeout_secs == 0 {
            return invalid("the drain timeout must be at least 1 second".into());
        }
        if self.partitions == Some(0) {
            return invalid("a Kafka input has at least 1 partition".into());
        }
        if self.partitions.is_some() && !matches!(self.endpoint.kind, EndpointKind::KafkaStream(_))
        {
            return invalid(format!(
                "partitions apply to Kafka streams, not to a {} endpoint",
                self.endpoint.kind.name()
            ));
        }
        Ok(())
    }

    /// The replica bounds that run: the spec's, with a Kafka stream's maximum (and minimum)
    /// capped by [`partitions`](Self::partitions), and a batch endpoint's minimum at zero,
    /// since it sits at zero pods until a batch arrives.
    pub fn bounds(&self) -> AutoscaleBounds {
        let mut bounds = self.endpoint.autoscale;
        if let (EndpointKind::KafkaStream(_), Some(partitions)) =
            (&self.endpoint.kind, self.partitions)
        {
            bounds.max_replicas = bounds.max_replicas.min(partitions);
            bounds.min_replicas = bounds.min_replicas.min(bounds.max_replicas);
        }
        if matches!(self.endpoint.kind, EndpointKind::Batch(_)) {
            bounds.min_replicas = 0;
        }
        bounds
    }

    /// The replicas a new Deployment starts with: the minimum of [`bounds`](Self::bounds)
    /// (zero for a batch endpoint).
    pub fn initial_replicas(&self) -> u32 {
        self.bounds().min_replicas
    }

    /// The seconds Kubernetes gives a terminating pod: the drain plus a margin.
    pub fn termination_grace_secs(&self) -> u64 {
        self.drain_timeout_secs + TERMINATION_MARGIN_SECS
    }
}

#[cfg(test)]
mod tests {
    use serving_core::{BackendSection, ModelRef};

    use super::*;

    fn kafka(max: u32) -> ServingEndpointSpec {
        let mut endpoint = EndpointSpec::new("stream", ModelRef::new("m", "1"));
        endpoint.kind = EndpointKind::KafkaStream(BackendSection::new());
        endpoint.autoscale = AutoscaleBounds::new(2, max).unwrap();
        ServingEndpointSpec::new(endpoint, "registry.test/m:1")
    }

    #[test]
    fn partitions_cap_a_streams_bounds() {
        assert_eq!(kafka(8).bounds(), AutoscaleBounds::new(2, 8).unwrap());
        assert_eq!(
            kafka(8).with_partitions(3).bounds(),
            AutoscaleBounds::new(2, 3).unwrap()
        );
        assert_eq!(
            kafka(8).with_partitions(1).bounds(),
            AutoscaleBounds::new(1, 1).unwrap(),
            "the minimum follows the cap"
        );
        assert_eq!(kafka(2).with_partitions(6).bounds().max_replicas, 2);
    }

    #[test]
    fn a_batch_endpoint_starts_at_zero() {
        let mut endpoint = EndpointSpec::new("nightly", ModelRef::new("m", "1"));
        endpoint.kind = EndpointKind::Batch(BackendSection::new());
        endpoint.autoscale = AutoscaleBounds::new(1, 2).unwrap();
        let spec = ServingEndpointSpec::new(endpoint, "registry.test/m:1");
        assert_eq!(spec.bounds(), AutoscaleBounds::new(0, 2).unwrap());
        assert_eq!(spec.initial_replicas(), 0);
    }

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        let spec = kafka(4);
        assert!(spec.validate().is_ok());
        let no_image = ServingEndpointSpec {
            image: " ".into(),
            ..spec.clone()
        };
        let error = no_image.validate().unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid endpoint spec: endpoint `stream`: the container image is missing"
        );
        let zero = spec.clone().with_partitions(0).validate().unwrap_err();
        assert!(zero.to_string().contains("at least 1 partition"), "{zero}");
        let mut inverted = spec.clone();
        inverted.endpoint.autoscale = AutoscaleBounds {
            min_replicas: 5,
            max_replicas: 2,
        };
        assert!(matches!(
            inverted.validate(),
            Err(Error::InvalidSetting { ref key, .. }) if key == "autoscale"
        ));
        let mut web = spec.with_partitions(2);
        web.endpoint.kind = EndpointKind::WebService;
        let error = web.validate().unwrap_err().to_string();
        assert!(error.contains("not to a web_service endpoint"), "{error}");
    }

    #[test]
    fn round_trips_with_defaults() {
        let spec = kafka(4).with_partitions(2);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<ServingEndpointSpec>(&json).unwrap(),
            spec
        );
        let minimal: ServingEndpointSpec = serde_json::from_str(
            r#"{"endpoint":{"name":"a","model":{"name":"m","version":"1"}},"image":"i:1"}"#,
        )
        .unwrap();
        assert_eq!(minimal.port, DEFAULT_PORT);
        assert_eq!(minimal.termination_grace_secs(), 45);
    }
}
