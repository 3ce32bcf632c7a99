//! [`KubeAutoscaler`]: the [`Autoscaler`] trait on a Deployment's scale subresource.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serving_core::{AutoscaleBounds, Autoscaler, Error, Result};

use crate::error::{K8sError, is_not_found};
use crate::manifests::{BOUNDS_ANNOTATION, FIELD_MANAGER};

/// Reads and sets an endpoint's replicas through its Deployment's `scale` subresource, in one
/// namespace. The bounds it is given are narrowed to those the endpoint was deployed with
/// (the Deployment's [`BOUNDS_ANNOTATION`]), so a Kafka stream never gets more consumers than
/// its input has partitions, whatever the caller asks.
#[derive(Clone)]
pub struct KubeAutoscaler {
    deployments: Api<Deployment>,
    namespace: String,
}

impl std::fmt::Debug for KubeAutoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAutoscaler")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The bounds a Deployment built by [`Manifests`](crate::Manifests) was deployed with.
pub(crate) fn deployed_bounds(deployment: &Deployment) -> Option<AutoscaleBounds> {
    let (min, max) = deployment
        .annotations()
        .get(BOUNDS_ANNOTATION)?
        .split_once("..")?;
    Some(AutoscaleBounds {
        min_replicas: min.parse().ok()?,
        max_replicas: max.parse().ok()?,
    })
}

impl KubeAutoscaler {
    /// Scales the endpoints of `namespace` through `client`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        KubeAutoscaler {
            deployments: Api::namespaced(client, &namespace),
            namespace,
        }
    }

    fn object(endpoint: &str) -> String {
        format!("Deployment/{endpoint}")
    }

    fn action(&self, endpoint: &str) -> String {
        format!(
            "scale endpoint `{endpoint}` in namespace `{}`",
            self.namespace
        )
    }

    async fn deployment(&self, endpoint: &str) -> Result<Deployment, K8sError> {
        self.deployments
            .get_opt(endpoint)
            .await
            .map_err(|e| K8sError::from_kube(e, "read", &Self::object(endpoint), &self.namespace))?
            .ok_or_else(|| K8sError::NotDeployed {
                endpoint: endpoint.to_owned(),
                namespace: self.namespace.clone(),
            })
    }

    /// The bounds `endpoint` was deployed with.
    ///
    /// # Errors
    /// [`Error::EndpointNotFound`] when it is not deployed (or not by `serving`).
    pub async fn bounds_of(&self, endpoint: &str) -> Result<AutoscaleBounds> {
        let deployment = self
            .deployment(endpoint)
            .await
            .map_err(|e| e.into_core(self.action(endpoint)))?;
        deployed_bounds(&deployment).ok_or_else(|| Error::EndpointNotFound {
            endpoint: endpoint.to_owned(),
        })
    }

    /// The replicas asked for now.
    pub(crate) async fn current(&self, endpoint: &str) -> Result<u32, K8sError> {
        let scale = self.deployments.get_scale(endpoint).await.map_err(|e| {
            if is_not_found(&e) {
                K8sError::NotDeployed {
                    endpoint: endpoint.to_owned(),
                    namespace: self.namespace.clone(),
                }
            } else {
                K8sError::from_kube(e, "read", &Self::object(endpoint), &self.namespace)
            }
        })?;
        Ok(scale
            .spec
            .and_then(|spec| spec.replicas)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0))
    }

    /// Writes `replicas` to the scale subresource, as an update by [`FIELD_MANAGER`] (an
    /// update, not an apply, so the HPA and later scales may take it over).
    pub(crate) async fn set_replicas(
        &self,
        endpoint: &str,
        replicas: u32,
    ) -> Result<u32, K8sError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let scale = self
            .deployments
            .patch_scale(endpoint, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| {
                K8sError::from_kube(e, "scale", &Self::object(endpoint), &self.namespace)
            })?;
        Ok(scale
            .spec
            .and_then(|spec| spec.replicas)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(replicas))
    }
}

#[async_trait]
impl Autoscaler for KubeAutoscaler {
    /// Brings `desired` within `bounds` narrowed to the deployed bounds, and writes it to the
    /// Deployment's scale.
    ///
    /// # Errors
    /// Bounds that do not validate; [`Error::EndpointNotFound`] for an endpoint not deployed;
    /// [`Error::Action`] when the API server refuses.
    async fn scale(&self, endpoint: &str, bounds: AutoscaleBounds, desired: u32) -> Result<u32> {
        bounds.validate()?;
        let action = self.action(endpoint);
        let deployment = self
            .deployment(endpoint)
            .await
            .map_err(|e| e.into_core(action.clone()))?;
        let cap = deployed_bounds(&deployment).map_or(bounds.max_replicas, |deployed| {
            deployed.max_replicas.min(bounds.max_replicas)
        });
        let within = AutoscaleBounds {
            min_replicas: bounds.min_replicas.min(cap),
            max_replicas: cap,
        };
        let applied = within.clamp(desired);
        self.set_replicas(endpoint, applied)
            .await
            .map_err(|e| e.into_core(action))
    }

    /// Zero for an endpoint that is not deployed, as the contract says.
    async fn replicas(&self, endpoint: &str) -> Result<u32> {
        match self.current(endpoint).await {
            Err(K8sError::NotDeployed { .. }) => Ok(0),
            other => other.map_err(|e| e.into_core(self.action(endpoint))),
        }
    }
}
