//! [`ServingEndpoint`]: the custom resource that says what should run, reconciled by the
//! [`Operator`](crate::Operator) into the objects of [`Manifests`](crate::Manifests).
//!
//! The group is `serving.dev`, the domain of every label and annotation this crate writes
//! ([`ENDPOINT_LABEL`](crate::ENDPOINT_LABEL) is `serving.dev/endpoint`), so one name says
//! "managed by serving" on the resource and on what it owns. The version is `v1alpha1`: the
//! spec follows [`EndpointSpec`], which may still change.
//!
//! ```yaml
//! apiVersion: serving.dev/v1alpha1
//! kind: ServingEndpoint
//! metadata: {name: iris, namespace: models}
//! spec:
//!   image: registry.example/iris:1
//!   endpoint:
//!     name: iris
//!     model: {name: iris-knn, version: "1"}
//!     autoscale: {min_replicas: 1, max_replicas: 3}
//! ```

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serving_core::{EndpointSpec, Error, Result};

use crate::config::{DEFAULT_DRAIN_TIMEOUT_SECS, DEFAULT_PORT, PodResources, ServingEndpointSpec};
use crate::error::K8sError;
use crate::manifests::FIELD_MANAGER;
use crate::rollout::Canary;

/// The API group of [`ServingEndpoint`].
pub const GROUP: &str = "serving.dev";
/// The API version of [`ServingEndpoint`].
pub const VERSION: &str = "v1alpha1";
/// The finalizer the operator puts on every [`ServingEndpoint`]: its objects are deleted
/// before the resource goes.
pub const FINALIZER: &str = "serving.dev/cleanup";

/// What should run: the endpoint's spec, the container image of the user's binary, the pod's
/// settings and an optional canary (a [`ServingEndpointSpec`] plus a [`Canary`]).
// `endpoint` is kept as written and read into an `EndpointSpec` by `endpoint_spec` when the
// operator reconciles: a spec that the schema admits but serving refuses (a trigger whose
// interval is zero, an unknown key in a Kafka section) then becomes the condition
// `Ready=False` with reason `InvalidSpec` on that resource, instead of a value the
// controller's watch cannot read at all.
// clippy reads the printer columns' repeated `type_` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serving.dev",
    version = "v1alpha1",
    kind = "ServingEndpoint",
    plural = "servingendpoints",
    shortname = "sep",
    namespaced,
    status = "ServingEndpointStatus",
    doc = "An endpoint of serving on the cluster: its spec, image and canary; the operator reconciles it into a Deployment, Service, HPA, ConfigMap, Secret and PodDisruptionBudget.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".status.stable.modelVersion"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ServingEndpointResourceSpec {
    /// The endpoint's whole specification (serving's `EndpointSpec`, as in a spec file); its
    /// `name` is the resource's name.
    #[schemars(with = "EndpointSpec", transform = without_defaults)]
    pub endpoint: serde_json::Value,
    /// The container image of the user's binary that embeds serving (`registry/name:tag`).
    #[schemars(length(min = 1))]
    pub image: String,
    /// CPU and memory the pod requests and may use (Kubernetes quantities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PodResources>,
    /// A Kafka stream's input partitions, which cap its replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub partitions: Option<u32>,
    /// Seconds the pod's graceful shutdown waits for requests in flight.
    #[serde(default = "default_drain_timeout_secs")]
    #[schemars(range(min = 1))]
    pub drain_timeout_secs: u64,
    /// The port the pod's web server listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
    /// A candidate version beside the stable one, with its share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

fn default_drain_timeout_secs() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_SECS
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

/// Drops `default` from a schema and every schema inside it. serde's defaults apply when the
/// pod reads its spec; the API server would instead write them into every stored resource,
/// frozen as they were computed when the CRD was generated (the worker `threads` default is
/// the generating machine's core count).
fn without_defaults(schema: &mut schemars::Schema) {
    fn strip(value: &mut serde_json::Value) {
        let Some(object) = value.as_object_mut() else {
            return;
        };
        object.remove("default");
        for (key, child) in object.iter_mut() {
            match key.as_str() {
                // Maps of property names to schemas.
                "properties" | "patternProperties" => {
                    if let Some(properties) = child.as_object_mut() {
                        properties.values_mut().for_each(strip);
                    }
                }
                "items" | "additionalProperties" | "not" => strip(child),
                "anyOf" | "oneOf" | "allOf" => {
                    if let Some(schemas) = child.as_array_mut() {
                        schemas.iter_mut().for_each(strip);
                    }
                }
                _ => {}
            }
        }
    }
    let mut value = schema.clone().to_value();
    strip(&mut value);
    if let Ok(stripped) = schemars::Schema::try_from(value) {
        *schema = stripped;
    }
}

/// What the operator last saw: replicas, versions and weights, the URL, and the conditions
/// `Ready` and `Reconciled` with their reasons.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingEndpointStatus {
    /// The resource's `metadata.generation` this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The replicas asked for (the autoscaler's, within the bounds).
    #[serde(default)]
    pub replicas: u32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Where the endpoint answers inside the cluster, `http://<name>.<namespace>.svc:80`;
    /// none for a Kafka stream, which has no Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The stable version and its share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<VersionStatus>,
    /// The canary, when one runs, and its share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<VersionStatus>,
    /// `Ready` (every replica asked for is ready) and `Reconciled` (the cluster matches the
    /// spec), each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ServingEndpointStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|condition| condition.type_ == type_)
    }
}

/// One version of an endpoint: its image, its model version and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// The container image.
    pub image: String,
    /// The model's version.
    pub model_version: String,
    /// Its share of the traffic, in percent.
    pub weight: u8,
}

impl ServingEndpointResourceSpec {
    /// The resource's spec for `endpoint`, without a canary.
    pub fn new(endpoint: &ServingEndpointSpec) -> Self {
        ServingEndpointResourceSpec {
            endpoint: serde_json::to_value(&endpoint.endpoint)
                .expect("an endpoint spec always serializes"),
            image: endpoint.image.clone(),
            resources: endpoint.resources.clone(),
            partitions: endpoint.partitions,
            drain_timeout_secs: endpoint.drain_timeout_secs,
            port: endpoint.port,
            canary: None,
        }
    }

    /// With a canary.
    pub fn with_canary(mut self, canary: Canary) -> Self {
        self.canary = Some(canary);
        self
    }

    /// The [`ServingEndpointSpec`] it describes, checked, for the resource named `name`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] / [`Error::InvalidSetting`] naming what is wrong: the endpoint
    /// does not parse or validate, its name is not the resource's, the image or bounds are
    /// wrong, or the canary's weight is above 100 or it names neither an image nor a version.
    pub fn endpoint_spec(&self, name: &str) -> Result<ServingEndpointSpec> {
        let endpoint: EndpointSpec =
            serde_json::from_value(self.endpoint.clone()).map_err(|e| Error::InvalidSpec {
                reason: format!("spec.endpoint: {e}"),
            })?;
        if endpoint.name != name {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "spec.endpoint.name `{}` must be the resource's name `{name}` (every object is named after it)",
                    endpoint.name
                ),
            });
        }
        let spec = ServingEndpointSpec {
            endpoint,
            image: self.image.clone(),
            resources: self.resources.clone(),
            partitions: self.partitions,
            drain_timeout_secs: self.drain_timeout_secs,
            port: self.port,
        };
        spec.validate()?;
        if let Some(canary) = &self.canary {
            let invalid = |reason: String| Err(Error::InvalidSpec { reason });
            if canary.weight > 100 {
                return invalid(format!(
                    "spec.canary.weight {} is a percentage: 0 to 100",
                    canary.weight
                ));
            }
            if canary.image.is_none() && canary.model_version.is_none() {
                return invalid("spec.canary names neither an image nor a model_version".into());
            }
            if canary
                .image
                .as_deref()
                .is_some_and(|image| image.trim().is_empty() || image.contains(char::is_whitespace))
            {
                return invalid("spec.canary.image must be an image name without spaces".into());
            }
        }
        Ok(spec)
    }
}

impl ServingEndpoint {
    /// The resource for `endpoint`, named after it (`metadata.name` is the endpoint's name).
    pub fn for_endpoint(endpoint: &ServingEndpointSpec) -> Self {
        ServingEndpoint::new(endpoint.name(), ServingEndpointResourceSpec::new(endpoint))
    }
}

/// Installs (or updates) the `ServingEndpoint` CRD by server-side apply with the field
/// manager [`FIELD_MANAGER`], then waits until the API server serves it (`Established`).
/// Idempotent: every operator may call it at start-up.
///
/// # Errors
/// [`Error::Action`] when the API server refuses (RBAC: it needs `customresourcedefinitions`
/// `get` and `patch`) or rejects the CRD; [`Error::Timeout`] when it is not established
/// within 30 seconds.
pub async fn install_crd(client: &Client) -> Result<CustomResourceDefinition> {
    let crd = ServingEndpoint::crd();
    let name = crd.name_any();
    let object = format!("CustomResourceDefinition/{name}");
    let action = format!("install the CRD `{name}`");
    let fail = |e: kube::Error| K8sError::from_kube(e, "apply", &object, "").into_core(&action);
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Forced: the CRD is this crate's, whoever applied an older one.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&crd))
        .await
        .map_err(fail)?;
    let timeout = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        let current = api.get(&name).await.map_err(fail)?;
        let established = current
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(current);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout { after: timeout });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests;
