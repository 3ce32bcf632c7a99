//! [`Operator`]: the controller that reconciles [`ServingEndpoint`] resources into their
//! objects, on [`kube::runtime::Controller`].
//!
//! Each resource is applied with [`Deployer::apply`] (server-side apply, owned by the
//! resource), its status patched with the replicas, versions, URL and conditions, and a
//! finalizer deletes its objects with [`Deployer::delete`] before it goes. A change to the
//! resource or to any object it owns (a Deployment's pods becoming ready, an edit made by
//! hand) reconciles it again, so drift is put back within moments.

mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller, Error as ControllerError};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serving_core::{Error, Result};

use crate::crd::{FINALIZER, ServingEndpoint, ServingEndpointStatus, VersionStatus};
use crate::deployer::{Deployer, PartitionCounter};
use crate::error::K8sError;
use crate::manifests::FIELD_MANAGER;

pub use status::{READY, RECONCILED, reason};

/// The shortest and longest wait before a failed reconcile is retried; the wait doubles with
/// each failure of the same resource in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a ready resource is reconciled anyway (a change the watches missed).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a resource whose pods are not all ready is looked at again (its Deployment's
/// changes also wake it).
const NOT_READY_RECHECK: Duration = Duration::from_secs(10);

/// The operator: watches [`ServingEndpoint`] resources (in every namespace, or one) and the
/// objects they own, and makes the cluster match them.
///
/// # RBAC
/// Its identity needs, in the namespaces it serves: `get`, `list`, `watch`, `patch` and
/// `update` on `servingendpoints` and `servingendpoints/status` (group `serving.dev`; the
/// finalizer and the status), and `get`, `list`, `watch`, `create`, `patch` and `delete` on
/// `deployments`, `deployments/scale`, `services`, `horizontalpodautoscalers`, `configmaps`,
/// `secrets` and `poddisruptionbudgets`; [`install_crd`](crate::install_crd) also needs
/// `get` and `patch` on `customresourcedefinitions`. A refusal is reported on the resource
/// as the reason [`FORBIDDEN`](reason::FORBIDDEN).
///
/// ```no_run
/// # async fn run() -> serving_core::Result<()> {
/// let client = serving_k8s::client_from_kubeconfig("kubeconfig".as_ref()).await?;
/// serving_k8s::install_crd(&client).await?;
/// serving_k8s::Operator::new(client)
///     .run(async { tokio::signal::ctrl_c().await.ok(); })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Operator {
    client: Client,
    namespace: Option<String>,
    partition_counter: Option<PartitionCounter>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What one reconcile failed with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(#[source] Error);

struct Context {
    client: Client,
    partition_counter: Option<PartitionCounter>,
    /// Failures in a row, per resource (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    fn key(endpoint: &ServingEndpoint) -> String {
        format!(
            "{}/{}",
            endpoint.namespace().unwrap_or_default(),
            endpoint.name_any()
        )
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The wait before the next try: doubled for each failure in a row, capped.
    fn backoff(&self, endpoint: &ServingEndpoint) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(Self::key(endpoint)).or_insert(0);
        *count = count.saturating_add(1);
        backoff_after(*count)
    }
}

/// The wait after `failures` failures in a row.
fn backoff_after(failures: u32) -> Duration {
    let doubled = BACKOFF_MIN.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(BACKOFF_MAX)
}

impl Operator {
    /// An operator of the resources in every namespace.
    pub fn new(client: Client) -> Self {
        Operator {
            client,
            namespace: None,
            partition_counter: None,
        }
    }

    /// Only the resources (and owned objects) of `namespace`: an operator per team, or a test
    /// that must not touch other tests' resources.
    pub fn namespaced(client: Client, namespace: impl Into<String>) -> Self {
        Operator {
            client,
            namespace: Some(namespace.into()),
            partition_counter: None,
        }
    }

    /// With what reads a stream's partitions from its brokers when its resource does not
    /// state them ([`Deployer::with_partition_counter`]).
    pub fn with_partition_counter(mut self, counter: PartitionCounter) -> Self {
        self.partition_counter = Some(counter);
        self
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// Runs the controller until `shutdown` completes; the reconciles under way finish first.
    /// Install the CRD before ([`install_crd`](crate::install_crd)).
    ///
    /// # Errors
    /// [`Error::Action`] when the `ServingEndpoint` CRD is not installed or cannot be listed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let endpoints = self.api::<ServingEndpoint>();
        // Fails early and clearly instead of a watch that retries forever.
        endpoints
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .map_err(|e| {
                K8sError::from_kube(
                    e,
                    "list",
                    "ServingEndpoints",
                    self.namespace.as_deref().unwrap_or("(all)"),
                )
                .into_core("start the operator (is the CRD installed? see install_crd)")
            })?;
        // Only the objects serving manages: not every Secret of the cluster.
        let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=serving");
        let context = Arc::new(Context {
            client: self.client.clone(),
            partition_counter: self.partition_counter.clone(),
            failures: Mutex::new(HashMap::new()),
        });
        // The controller wants a `Sync` trigger; a signal future need not be one.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(());
        });
        tracing::info!(namespace = ?self.namespace, "operator started");
        Controller::new(endpoints, watcher::Config::default())
            .owns(self.api::<Deployment>(), owned.clone())
            .owns(self.api::<Service>(), owned.clone())
            .owns(self.api::<HorizontalPodAutoscaler>(), owned.clone())
            .owns(self.api::<ConfigMap>(), owned.clone())
            .owns(self.api::<Secret>(), owned.clone())
            .owns(self.api::<PodDisruptionBudget>(), owned)
            .graceful_shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(reconcile, error_policy, context)
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                    // A retry that fired after the resource was deleted: nothing to do.
                    Err(ControllerError::ObjectNotFound(object)) => {
                        tracing::debug!(%object, "gone before its retry");
                    }
                    Err(error) => tracing::warn!(%error, "reconcile failed"),
                }
            })
            .await;
        tracing::info!("operator stopped");
        Ok(())
    }
}

async fn reconcile(
    endpoint: Arc<ServingEndpoint>,
    context: Arc<Context>,
) -> std::result::Result<Action, kube::runtime::finalizer::Error<ReconcileError>> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let api: Api<ServingEndpoint> = Api::namespaced(context.client.clone(), &namespace);
    let mut deployer = Deployer::new(context.client.clone(), namespace);
    if let Some(counter) = &context.partition_counter {
        deployer = deployer.with_partition_counter(Arc::clone(counter));
    }
    let key = Context::key(&endpoint);
    let (resources, steps) = (&api, &deployer);
    let action = finalizer(&api, FINALIZER, endpoint, |event| async move {
        match event {
            Event::Apply(endpoint) => apply(resources, steps, &endpoint).await,
            Event::Cleanup(endpoint) => cleanup(steps, &endpoint).await,
        }
    })
    .await?;
    context.succeeded(&key);
    Ok(action)
}

fn error_policy(
    endpoint: Arc<ServingEndpoint>,
    error: &kube::runtime::finalizer::Error<ReconcileError>,
    context: Arc<Context>,
) -> Action {
    let wait = context.backoff(&endpoint);
    tracing::warn!(
        endpoint = %Context::key(&endpoint),
        %error,
        retry_in_ms = wait.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(wait)
}

/// Makes the cluster match the resource and reports it in the status.
async fn apply(
    api: &Api<ServingEndpoint>,
    deployer: &Deployer,
    endpoint: &ServingEndpoint,
) -> std::result::Result<Action, ReconcileError> {
    let name = endpoint.name_any();
    let generation = endpoint.metadata.generation;
    let previous = endpoint.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let spec = match endpoint.spec.endpoint_spec(&name) {
        Ok(spec) => spec,
        Err(error) => {
            // Nothing is changed; a new spec (a new generation) is the only way forward.
            tracing::info!(endpoint = %name, %error, "invalid spec");
            patch_status(
                api,
                endpoint,
                &status::failed(&previous, generation, &error, &now),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let owner = endpoint.controller_owner_ref(&()).ok_or_else(|| {
        ReconcileError(Error::InvalidSpec {
            reason: format!("resource `{name}` has no uid yet"),
        })
    })?;
    // The objects, then the canary; a failure of either is reported the same way.
    let steps = async {
        let applied = deployer.apply(&spec, Some(&owner)).await?;
        let versions = reconcile_canary(deployer, &spec, endpoint, &owner).await?;
        Ok::<_, Error>((applied, versions))
    };
    let (applied, (stable, canary)) = match steps.await {
        Ok(done) => done,
        Err(error) => {
            let failed = status::failed(&previous, generation, &error, &now);
            patch_status(api, endpoint, &failed).await?;
            if status::reason_of(&error) == reason::INVALID_SPEC {
                return Ok(Action::await_change());
            }
            return Err(ReconcileError(error));
        }
    };
    let deployed = deployer.status(&name).await.map_err(ReconcileError)?;
    let status = status::reconciled(
        &previous,
        generation,
        deployer.namespace(),
        &spec,
        canary,
        stable,
        &applied,
        &deployed,
        &now,
    );
    let ready = deployed.is_ready();
    patch_status(api, endpoint, &status).await?;
    Ok(Action::requeue(if ready {
        RESYNC
    } else {
        NOT_READY_RECHECK
    }))
}

/// The canary's step of a reconcile: the resource's candidate run beside the stable version
/// at its weight ([`Deployer::canary`], which writes nothing when nothing changed), or, once
/// the resource names none, a canary still running retired ([`Deployer::rollback`]: the stable
/// serves everything). Promoting is the user's edit: the candidate's image or version made the
/// stable one and the canary removed, which the apply before this step has rolled out.
async fn reconcile_canary(
    deployer: &Deployer,
    spec: &crate::config::ServingEndpointSpec,
    endpoint: &ServingEndpoint,
    owner: &OwnerReference,
) -> Result<(VersionStatus, Option<VersionStatus>)> {
    let desired = endpoint.spec.canary.as_ref();
    match desired {
        Some(canary) => {
            deployer.canary(spec, canary, Some(owner.clone())).await?;
        }
        None => {
            if deployer.status(spec.name()).await?.canary.is_some() {
                deployer.rollback(spec.name()).await?;
            }
        }
    }
    Ok(status::versions(spec, desired))
}

/// Deletes every object of the resource before the finalizer lets it go.
async fn cleanup(
    deployer: &Deployer,
    endpoint: &ServingEndpoint,
) -> std::result::Result<Action, ReconcileError> {
    let name = endpoint.name_any();
    let deleted = deployer.delete(&name).await.map_err(ReconcileError)?;
    tracing::info!(endpoint = %name, namespace = deployer.namespace(), ?deleted, "endpoint deleted");
    Ok(Action::await_change())
}

/// Patches the status subresource when it differs from the resource's.
async fn patch_status(
    api: &Api<ServingEndpoint>,
    endpoint: &ServingEndpoint,
    status: &ServingEndpointStatus,
) -> std::result::Result<(), ReconcileError> {
    if endpoint.status.as_ref() == Some(status) {
        return Ok(());
    }
    let name = endpoint.name_any();
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        // A merge patch keeps what it leaves out: a field that went away is sent as null.
        for key in ["observedGeneration", "url", "stable", "canary"] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": value });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            ReconcileError(
                K8sError::from_kube(
                    e,
                    "patch the status of",
                    &format!("ServingEndpoint/{name}"),
                    &endpoint.namespace().unwrap_or_default(),
                )
                .into_core(format!("report the status of `{name}`")),
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_per_failure_up_to_its_cap() {
        let waits: Vec<u64> = (1..=12)
            .map(|n| backoff_after(n).as_millis() as u64)
            .collect();
        assert_eq!(&waits[..5], [500, 1000, 2000, 4000, 8000]);
        assert_eq!(waits[11], 300_000);
        assert_eq!(backoff_after(u32::MAX), BACKOFF_MAX);
    }
}
