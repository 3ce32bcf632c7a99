//! [`Deployer`]: applies an endpoint's [`Manifests`] by server-side apply, scales, reads the
//! status of and deletes it.

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, ValidationDirective};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serving_core::{AutoscaleBounds, EndpointKind, EndpointSpec, Error, Result};

use crate::autoscaler::{KubeAutoscaler, deployed_bounds};
use crate::config::ServingEndpointSpec;
use crate::error::{K8sError, conflict_causes, is_conflict, is_not_found};
use crate::manifests::route::{GATEWAY_API, HttpRoute, ParentReference};
use crate::manifests::{FIELD_MANAGER, Manifests, PredictionToken, secret_name};
use crate::rollout::CanaryStatus;
use crate::scaling::{self, KEDA_API, LagScaling, ScaledObject};

/// The field manager that owns a Deployment's `replicas` from its creation, so that the
/// `serving` manager's applies (which leave `replicas` to the autoscaler) never reset it.
const REPLICAS_MANAGER: &str = "serving-replicas";

/// Deploys endpoints into one namespace of a cluster: the library API of the Kubernetes
/// backend, for platforms that embed it (the operator runs the same steps).
///
/// Every write is a server-side apply with the field manager [`FIELD_MANAGER`] and strict
/// field validation, tried first as a dry run for every object: bad input changes nothing.
#[derive(Clone)]
pub struct Deployer {
    pub(crate) client: Client,
    pub(crate) namespace: String,
    pub(crate) lag_scaling: LagScaling,
    pub(crate) gateway: Option<ParentReference>,
    pub(crate) rollout_timeout: Duration,
    pub(crate) partition_counter: Option<PartitionCounter>,
}

/// Reads a Kafka stream's input partition count from its brokers (for example
/// `serving::kafka_partition_counter()` with the `kafka` and `k8s` features), for a spec that
/// does not state [`partitions`](ServingEndpointSpec::partitions): `serving-k8s` itself has no
/// Kafka client.
pub type PartitionCounter =
    Arc<dyn Fn(EndpointSpec) -> Pin<Box<dyn Future<Output = Result<u32>> + Send>> + Send + Sync>;

/// How long [`Deployer::promote`] waits for the stable Deployment to roll by default.
pub const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

impl Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("namespace", &self.namespace)
            .field("lag_scaling", &self.lag_scaling)
            .field("gateway", &self.gateway)
            .field("rollout_timeout", &self.rollout_timeout)
            .field("partition_counter", &self.partition_counter.is_some())
            .finish_non_exhaustive()
    }
}

/// What an [`apply`](Deployer::apply) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// Whether the Deployment was created (the endpoint was new).
    pub created: bool,
    /// The objects (`Kind/name`) whose `resourceVersion` changed; empty when the cluster
    /// already matched the spec.
    pub changed: Vec<String>,
    /// Whether hand-made changes to fields that `serving` owns were put back.
    pub corrected_drift: bool,
    /// The Deployment's replicas after the apply.
    pub replicas: u32,
}

/// An endpoint's state on the cluster, from its Deployment (and its canary's, when one runs).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The replicas asked for.
    pub replicas: u32,
    /// Pods that pass their readiness probe.
    pub ready_replicas: u32,
    /// Pods of the current pod template.
    pub updated_replicas: u32,
    /// Whether the Deployment controller has seen the latest spec.
    pub observed: bool,
    /// The replica bounds that run.
    pub bounds: Option<AutoscaleBounds>,
    /// `name@version` of the model.
    pub model: Option<String>,
    /// The stable Deployment's container image.
    pub image: Option<String>,
    /// The candidate running beside it, with its share of the traffic.
    pub canary: Option<CanaryStatus>,
}

impl EndpointStatus {
    /// Whether every replica asked for is of the current template and ready.
    pub fn is_ready(&self) -> bool {
        self.observed
            && self.ready_replicas == self.replicas
            && self.updated_replicas == self.replicas
    }
}

impl Deployer {
    /// A deployer of endpoints into `namespace` through `client`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Deployer {
            client,
            namespace: namespace.into(),
            lag_scaling: LagScaling::default(),
            gateway: None,
            rollout_timeout: DEFAULT_ROLLOUT_TIMEOUT,
            partition_counter: None,
        }
    }

    /// With what reads a Kafka stream's partition count from its brokers when its spec does
    /// not state it; without one, such a stream's maximum is capped by nothing but its bounds.
    pub fn with_partition_counter(mut self, counter: PartitionCounter) -> Self {
        self.partition_counter = Some(counter);
        self
    }

    /// With how Kafka streams scale on their lag ([`LagScaling::Auto`] by default).
    pub fn with_lag_scaling(mut self, lag_scaling: LagScaling) -> Self {
        self.lag_scaling = lag_scaling;
        self
    }

    /// With the Gateway that canary routes attach to. Without one, a route attaches to the
    /// endpoint's stable Service (GAMMA: a service mesh splits the calls made to it).
    pub fn with_gateway(mut self, gateway: ParentReference) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// With how long a promotion waits for the stable Deployment to roll
    /// ([`DEFAULT_ROLLOUT_TIMEOUT`] by default).
    pub fn with_rollout_timeout(mut self, timeout: Duration) -> Self {
        self.rollout_timeout = timeout;
        self
    }

    /// A deployer through the kubeconfig file at `path` (its current context).
    ///
    /// # Errors
    /// [`Error::Action`] when the file does not read or names no usable cluster.
    pub async fn from_kubeconfig(path: &Path, namespace: impl Into<String>) -> Result<Self> {
        Ok(Self::new(client_from_kubeconfig(path).await?, namespace))
    }

    /// The namespace it deploys into.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The client it talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The autoscaler of this namespace's endpoints.
    pub fn autoscaler(&self) -> KubeAutoscaler {
        KubeAutoscaler::new(self.client.clone(), self.namespace.clone())
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Makes the cluster match `endpoint`: its ConfigMap, Secret, Deployment, Service, HPA and
    /// PodDisruptionBudget, each carrying `owner` when given. Applying the same spec twice
    /// changes nothing; a changed spec patches only what changed; a field that `serving`
    /// owns and that was changed by hand (`kubectl edit`, `kubectl patch`) is put back.
    /// Replicas are the autoscaler's: a new Deployment starts at the minimum (zero for a
    /// batch endpoint) and an existing one is only brought back within the bounds.
    ///
    /// A Kafka stream scales on its lag by [`LagScaling`]: a KEDA `ScaledObject` in place of
    /// the HPA where KEDA's CRD is installed (the other one is removed on a switch). While a
    /// [canary](Self::canary) of it runs, the stable's maximum leaves the canary's consumers
    /// out of the partition cap.
    ///
    /// The Secret's token is kept when the Secret exists, and generated otherwise.
    ///
    /// # Errors
    /// Nothing is changed on any of them:
    /// - [`Error::InvalidSpec`] / [`Error::InvalidSetting`]: the spec does not validate
    ///   (an image missing, bounds with min > max, ...);
    /// - [`Error::Conflict`]: another field manager's apply owns a field with another value;
    /// - [`Error::Action`]: the namespace does not exist, the API server refused (RBAC) or
    ///   rejected an object, or could not be reached.
    pub async fn apply(
        &self,
        endpoint: &ServingEndpointSpec,
        owner: Option<&OwnerReference>,
    ) -> Result<Applied> {
        endpoint.validate()?;
        let counted = self.with_counted_partitions(endpoint).await?;
        let endpoint = counted.as_ref().unwrap_or(endpoint);
        let reserved = self.canary_consumers(endpoint).await?;
        self.apply_reserving(endpoint, owner, reserved).await
    }

    /// `endpoint` with its partitions read from the brokers, when it is a stream that does not
    /// state them and a [`PartitionCounter`] is set.
    async fn with_counted_partitions(
        &self,
        endpoint: &ServingEndpointSpec,
    ) -> Result<Option<ServingEndpointSpec>> {
        let Some(counter) = &self.partition_counter else {
            return Ok(None);
        };
        if endpoint.partitions.is_some()
            || !matches!(endpoint.endpoint.kind, EndpointKind::KafkaStream(_))
        {
            return Ok(None);
        }
        let partitions =
            counter(endpoint.endpoint.clone())
                .await
                .map_err(|error| Error::InvalidSpec {
                    reason: format!(
                        "endpoint `{}`: its input partitions could not be read from the brokers \
                     ({error}); state `partitions` in the spec",
                        endpoint.name()
                    ),
                })?;
        Ok(Some(endpoint.clone().with_partitions(partitions.max(1))))
    }

    /// [`apply`](Self::apply), with `reserved` of a Kafka stream's partitions left to its
    /// canary: the stable's maximum (HPA, ScaledObject, scale cap) is the partition cap minus
    /// them, so stable and canary consumers together never outnumber the partitions.
    pub(crate) async fn apply_reserving(
        &self,
        endpoint: &ServingEndpointSpec,
        owner: Option<&OwnerReference>,
        reserved: u32,
    ) -> Result<Applied> {
        endpoint.validate()?;
        let narrowed;
        let endpoint =
            if reserved > 0 && matches!(endpoint.endpoint.kind, EndpointKind::KafkaStream(_)) {
                let cap = endpoint.bounds().max_replicas;
                narrowed = endpoint
                    .clone()
                    .with_partitions(cap.saturating_sub(reserved).max(1));
                &narrowed
            } else {
                endpoint
            };
        let name = endpoint.name();
        let action = format!("apply endpoint `{name}` in namespace `{}`", self.namespace);
        let fail = |error: K8sError| error.into_core(action.clone());

        let secrets = self.api::<Secret>();
        let secret_object = format!("Secret/{}", secret_name(name));
        let existing = secrets
            .get_opt(&secret_name(name))
            .await
            .map_err(|e| K8sError::from_kube(e, "read", &secret_object, &self.namespace))
            .map_err(fail)?;
        let token = match existing.as_ref().and_then(PredictionToken::from_secret) {
            Some(token) => token,
            None => PredictionToken::generate()?,
        };
        let mut manifests = Manifests::build(endpoint, &self.namespace, &token, owner)?;
        // A stream where KEDA runs: a ScaledObject in place of the HPA (KEDA makes its own).
        let scaled_object = match self.uses_keda(endpoint).await.map_err(fail)? {
            true => {
                manifests.autoscaler = None;
                scaling::scaled_object(endpoint, &self.namespace, owner)?
            }
            false => None,
        };
        let deployments = self.api::<Deployment>();
        let current = deployments
            .get_opt(name)
            .await
            .map_err(|e| {
                K8sError::from_kube(e, "read", &format!("Deployment/{name}"), &self.namespace)
            })
            .map_err(fail)?;

        // The dry run: every object is checked (schema, RBAC, conflicts) before any is written.
        let mut plan = Plan::default();
        plan.check(self, &manifests.config_map, endpoint).await?;
        plan.check(self, &manifests.secret, endpoint).await?;
        plan.check(self, &manifests.deployment, endpoint).await?;
        if let Some(service) = &manifests.service {
            plan.check(self, service, endpoint).await?;
        }
        if let Some(autoscaler) = &manifests.autoscaler {
            plan.check(self, autoscaler, endpoint).await?;
        }
        if let Some(scaled_object) = &scaled_object {
            plan.check(self, scaled_object, endpoint).await?;
        }
        plan.check(self, &manifests.disruption_budget, endpoint)
            .await?;

        let mut changed = Vec::new();
        let mut forced = plan.forced.iter();
        let mut next_force = || forced.next().copied().unwrap_or(false);
        self.write(&manifests.config_map, next_force(), &mut changed)
            .await
            .map_err(fail)?;
        self.write(&manifests.secret, next_force(), &mut changed)
            .await
            .map_err(fail)?;
        let deployment_force = next_force();
        let created = current.is_none();
        if created {
            self.create_deployment(&manifests).await.map_err(fail)?;
        }
        self.write(&manifests.deployment, deployment_force, &mut changed)
            .await
            .map_err(fail)?;
        if let Some(service) = &manifests.service {
            self.write(service, next_force(), &mut changed)
                .await
                .map_err(fail)?;
        }
        if let Some(autoscaler) = &manifests.autoscaler {
            self.write(autoscaler, next_force(), &mut changed)
                .await
                .map_err(fail)?;
        }
        if let Some(scaled_object) = &scaled_object {
            self.write(scaled_object, next_force(), &mut changed)
                .await
                .map_err(fail)?;
        }
        self.write(&manifests.disruption_budget, next_force(), &mut changed)
            .await
            .map_err(fail)?;
        // A stream switched between KEDA and the HPA: the other one goes, so that two
        // autoscalers never fight over its replicas.
        if matches!(endpoint.endpoint.kind, EndpointKind::KafkaStream(_)) {
            let mut removed = Vec::new();
            if scaled_object.is_some() {
                self.remove::<HorizontalPodAutoscaler>(name, &mut removed)
                    .await
                    .map_err(fail)?;
            } else if self.keda_installed().await.map_err(fail)? {
                self.remove::<ScaledObject>(name, &mut removed)
                    .await
                    .map_err(fail)?;
            }
            changed.extend(removed);
        }
        if created
            && !changed
                .iter()
                .any(|object| object.starts_with("Deployment/"))
        {
            changed.push(format!("Deployment/{name}"));
        }

        // Replicas: only brought within the bounds (the autoscaler or HPA sets them inside).
        let autoscaler = self.autoscaler();
        let bounds = endpoint.bounds();
        let now = autoscaler.current(name).await.map_err(fail)?;
        let replicas = if bounds.clamp(now) == now {
            now
        } else {
            let applied = autoscaler
                .set_replicas(name, bounds.clamp(now))
                .await
                .map_err(fail)?;
            if !changed
                .iter()
                .any(|object| object.starts_with("Deployment/"))
            {
                changed.push(format!("Deployment/{name}"));
            }
            applied
        };
        Ok(Applied {
            created,
            changed,
            corrected_drift: plan.forced.iter().any(|&force| force),
            replicas,
        })
    }

    /// Creates a Deployment with its initial replicas, owned by [`REPLICAS_MANAGER`] so that
    /// `serving`'s applies, which leave `replicas` out, never reset it to Kubernetes' default.
    async fn create_deployment(&self, manifests: &Manifests) -> Result<(), K8sError> {
        let deployments = self.api::<Deployment>();
        let name = manifests
            .deployment
            .metadata
            .name
            .clone()
            .unwrap_or_default();
        let object = format!("Deployment/{name}");
        let mut initial = manifests.deployment.clone();
        initial.spec.replicas = Some(manifests.initial_replicas);
        let params = PatchParams::apply(REPLICAS_MANAGER);
        deployments
            .patch(&name, &params, &Patch::Apply(&initial))
            .await
            .map_err(|e| K8sError::from_kube(e, "create", &object, &self.namespace))?;
        // `serving` takes every field but replicas, then the replicas manager lets go of them.
        let mut owned = manifests.deployment.clone();
        owned.metadata.resource_version = None;
        deployments
            .patch(&name, &strict(FIELD_MANAGER, false), &Patch::Apply(&owned))
            .await
            .map_err(|e| K8sError::from_kube(e, "create", &object, &self.namespace))?;
        let replicas_only = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": name },
            "spec": { "replicas": manifests.initial_replicas },
        });
        deployments
            .patch(&name, &params, &Patch::Apply(&replicas_only))
            .await
            .map_err(|e| K8sError::from_kube(e, "create", &object, &self.namespace))?;
        Ok(())
    }

    /// Applies one object; records it in `changed` when what `serving` declares of it (its
    /// spec or data, labels, annotations, owners) differs afterwards. Not the bare
    /// `resourceVersion`, which controllers also move when they write the status.
    pub(crate) async fn write<K>(
        &self,
        object: &K,
        force: bool,
        changed: &mut Vec<String>,
    ) -> Result<(), K8sError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let label = object_label(object);
        let before = api
            .get_opt(&object.name_any())
            .await
            .map_err(|e| K8sError::from_kube(e, "read", &label, &self.namespace))?
            .map(|current| declared(&current));
        let after = api
            .patch(
                &object.name_any(),
                &strict(FIELD_MANAGER, force),
                &Patch::Apply(object),
            )
            .await
            .map_err(|e| K8sError::from_kube(e, "apply", &label, &self.namespace))?;
        if before != Some(declared(&after)) {
            changed.push(label);
        }
        Ok(())
    }

    /// Scales `endpoint` to `replicas`, brought within the bounds it was deployed with (a
    /// Kafka stream's capped by its partitions); returns the count applied.
    ///
    /// # Errors
    /// [`Error::EndpointNotFound`] when it is not deployed; [`Error::Action`] when the API
    /// server refuses.
    pub async fn scale(&self, endpoint: &str, replicas: u32) -> Result<u32> {
        let autoscaler = self.autoscaler();
        let bounds = autoscaler.bounds_of(endpoint).await?;
        serving_core::Autoscaler::scale(&autoscaler, endpoint, bounds, replicas).await
    }

    /// The Deployment of `endpoint`: [`Error::EndpointNotFound`] when it is not deployed, an
    /// [`Error::Action`] named `action` when the API server refuses.
    pub(crate) async fn deployment_of(&self, endpoint: &str, action: &str) -> Result<Deployment> {
        self.api::<Deployment>()
            .get_opt(endpoint)
            .await
            .map_err(|e| {
                K8sError::from_kube(
                    e,
                    "read",
                    &format!("Deployment/{endpoint}"),
                    &self.namespace,
                )
                .into_core(action.to_owned())
            })?
            .ok_or_else(|| Error::EndpointNotFound {
                endpoint: endpoint.to_owned(),
            })
    }

    /// The endpoint's replicas and readiness.
    ///
    /// # Errors
    /// [`Error::EndpointNotFound`] when it is not deployed; [`Error::Action`] when the API
    /// server refuses.
    pub async fn status(&self, endpoint: &str) -> Result<EndpointStatus> {
        let action = format!("read the status of endpoint `{endpoint}`");
        let deployment = self.deployment_of(endpoint, &action).await?;
        let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
        let status = deployment.status.clone().unwrap_or_default();
        let spec_replicas = deployment.spec.replicas;
        let canary = self
            .canary_status(endpoint)
            .await
            .map_err(|e| e.into_core(action.clone()))?;
        Ok(EndpointStatus {
            replicas: count(spec_replicas),
            ready_replicas: count(status.ready_replicas),
            updated_replicas: count(status.updated_replicas),
            observed: status.observed_generation.is_some()
                && status.observed_generation == deployment.metadata.generation,
            bounds: deployed_bounds(&deployment),
            model: deployment.annotations().get("serving.dev/model").cloned(),
            image: image_of(&deployment),
            canary,
        })
    }

    /// Waits until the endpoint runs `replicas` ready pods of its current template.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; what [`status`](Self::status) returns.
    pub async fn wait_ready(
        &self,
        endpoint: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<EndpointStatus> {
        let start = Instant::now();
        loop {
            let status = self.status(endpoint).await?;
            if status.replicas == replicas && status.is_ready() {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout { after: timeout });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes every object of `endpoint`, its canary's and its route and ScaledObject
    /// included; its pods go with the Deployments. Returns the objects (`Kind/name`) that
    /// existed.
    ///
    /// # Errors
    /// [`Error::Action`] when the API server refuses.
    pub async fn delete(&self, endpoint: &str) -> Result<Vec<String>> {
        let action = format!(
            "delete endpoint `{endpoint}` in namespace `{}`",
            self.namespace
        );
        let mut deleted = Vec::new();
        let names = [
            endpoint.to_owned(),
            crate::manifests::config_map_name(endpoint),
            secret_name(endpoint),
        ];
        let fail = |e: K8sError| e.into_core(action.clone());
        self.remove_canary(endpoint, &mut deleted)
            .await
            .map_err(fail)?;
        self.remove_optional::<HttpRoute>(&names[0], GATEWAY_API, &mut deleted)
            .await
            .map_err(fail)?;
        self.remove_optional::<ScaledObject>(&names[0], KEDA_API, &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<HorizontalPodAutoscaler>(&names[0], &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<PodDisruptionBudget>(&names[0], &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<Service>(&names[0], &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<Deployment>(&names[0], &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<ConfigMap>(&names[1], &mut deleted)
            .await
            .map_err(fail)?;
        self.remove::<Secret>(&names[2], &mut deleted)
            .await
            .map_err(fail)?;
        Ok(deleted)
    }

    /// [`remove`](Self::remove) of a custom resource, skipped when the cluster does not serve
    /// its kind (`api` = group/version and plural).
    pub(crate) async fn remove_optional<K>(
        &self,
        name: &str,
        api: (&str, &str),
        deleted: &mut Vec<String>,
    ) -> Result<(), K8sError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        if scaling::serves(&self.client, api.0, api.1, &self.namespace).await? {
            self.remove::<K>(name, deleted).await?;
        }
        Ok(())
    }

    /// Whether the cluster has KEDA's `ScaledObject` CRD.
    pub(crate) async fn keda_installed(&self) -> Result<bool, K8sError> {
        scaling::serves(&self.client, KEDA_API.0, KEDA_API.1, &self.namespace).await
    }

    /// Whether `endpoint` scales on its lag through KEDA: a Kafka stream, by
    /// [`LagScaling`].
    async fn uses_keda(&self, endpoint: &ServingEndpointSpec) -> Result<bool, K8sError> {
        if !matches!(endpoint.endpoint.kind, EndpointKind::KafkaStream(_)) {
            return Ok(false);
        }
        match self.lag_scaling {
            LagScaling::Keda => Ok(true),
            LagScaling::Hpa => Ok(false),
            LagScaling::Auto => self.keda_installed().await,
        }
    }

    pub(crate) async fn remove<K>(
        &self,
        name: &str,
        deleted: &mut Vec<String>,
    ) -> Result<(), K8sError>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let label = format!("{}/{name}", K::kind(&K::DynamicType::default()));
        match self
            .api::<K>()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => {
                deleted.push(label);
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(K8sError::from_kube(e, "delete", &label, &self.namespace)),
        }
    }
}

/// Which objects need `force` to take back fields changed by hand; filled by the dry run.
#[derive(Default)]
pub(crate) struct Plan {
    pub(crate) forced: Vec<bool>,
}

impl Plan {
    /// Applies `object` as a dry run. A conflict with changes made by hand (`Update`
    /// operations: `kubectl edit`, `patch`, `scale`) is drift, taken back by force; one with
    /// another manager's apply is the user's to settle and an error.
    pub(crate) async fn check<K>(
        &mut self,
        deployer: &Deployer,
        object: &K,
        endpoint: &ServingEndpointSpec,
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        let api = deployer.api::<K>();
        let label = object_label(object);
        let name = object.name_any();
        let action = format!(
            "apply endpoint `{}` in namespace `{}`",
            endpoint.name(),
            deployer.namespace
        );
        let namespace = deployer.namespace.clone();
        let fail = |e: kube::Error| {
            K8sError::from_kube(e, "apply", &label, &namespace).into_core(action.clone())
        };
        let mut params = strict(FIELD_MANAGER, false);
        params.dry_run = true;
        match api.patch(&name, &params, &Patch::Apply(object)).await {
            Ok(_) => {
                self.forced.push(false);
                Ok(())
            }
            Err(error) if is_conflict(&error) => {
                let current = api.get(&name).await.map_err(fail)?;
                let appliers: Vec<String> = current
                    .managed_fields()
                    .iter()
                    .filter(|entry| entry.operation.as_deref() == Some("Apply"))
                    .filter_map(|entry| entry.manager.clone())
                    .filter(|manager| manager != FIELD_MANAGER && manager != REPLICAS_MANAGER)
                    .collect();
                let causes = conflict_causes(&error);
                let rivals: Vec<&String> = appliers
                    .iter()
                    .filter(|manager| {
                        causes
                            .iter()
                            .any(|(message, _)| message.contains(&format!("\"{manager}\"")))
                    })
                    .collect();
                if !rivals.is_empty() {
                    let fields: Vec<&str> =
                        causes.iter().map(|(_, field)| field.as_str()).collect();
                    return Err(Error::Conflict {
                        endpoint: endpoint.name().to_owned(),
                        reason: format!(
                            "{label} in namespace `{}`: the field manager{} {} applied other values to {}; \
                             remove those fields from their apply (or delete them) and apply again",
                            deployer.namespace,
                            if rivals.len() == 1 { "" } else { "s" },
                            rivals
                                .iter()
                                .map(|m| format!("`{m}`"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            fields.join(", ")
                        ),
                    });
                }
                params.force = true;
                api.patch(&name, &params, &Patch::Apply(object))
                    .await
                    .map_err(fail)?;
                self.forced.push(true);
                Ok(())
            }
            Err(error) => Err(fail(error)),
        }
    }
}

/// An object without what the server and controllers write: status, versions, managed fields.
fn declared<K: Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        // A Deployment's replicas are the autoscaler's, not declared by `serving`.
        if map.get("kind").and_then(|kind| kind.as_str()) == Some("Deployment")
            && let Some(spec) = map.get_mut("spec").and_then(|s| s.as_object_mut())
        {
            spec.remove("replicas");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for key in [
                "resourceVersion",
                "managedFields",
                "generation",
                "creationTimestamp",
                "uid",
            ] {
                meta.remove(key);
            }
        }
    }
    value
}

/// Server-side apply by `manager` with strict field validation: an unknown or duplicate
/// field is an error, not silently dropped.
pub(crate) fn strict(manager: &str, force: bool) -> PatchParams {
    let mut params = PatchParams::apply(manager).validation(ValidationDirective::Strict);
    params.force = force;
    params
}

/// The container image of a Deployment built by [`Manifests`].
pub(crate) fn image_of(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|container| container.name == crate::manifests::CONTAINER)?
        .image
        .clone()
}

pub(crate) fn object_label<K: Resource>(object: &K) -> String
where
    K::DynamicType: Default,
{
    format!(
        "{}/{}",
        K::kind(&K::DynamicType::default()),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// A client through the kubeconfig file at `path` (its current context).
///
/// # Errors
/// [`Error::Action`] when the file does not read or names no usable cluster.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let action = format!("connect through the kubeconfig `{}`", path.display());
    let wrap = |message: String| K8sError::Other(message).into_core(action.clone());
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| wrap(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| wrap(e.to_string()))?;
    // rustls needs one process-wide crypto provider; when the build enables two (ring here,
    // aws-lc-rs from object_store's S3 client) it will not choose, so choose ring unless the
    // application already installed one (an `Err` here means it did).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(config).map_err(|e| wrap(e.to_string()))
}
