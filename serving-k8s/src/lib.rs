//! The Kubernetes backend of `serving`: each endpoint kind deployed to a cluster, built on
//! [`kube`] and [`k8s_openapi`].
//!
//! From a [`ServingEndpointSpec`] (an [`EndpointSpec`](serving_core::EndpointSpec) plus the
//! container image of the user's binary that embeds `serving`), [`Manifests`] builds typed
//! objects, never YAML templates: a Deployment (readiness on `/readyz`, liveness on
//! `/healthz`, a termination grace longer than the drain, rolling updates with
//! `maxUnavailable: 0`, Prometheus scrape annotations), a Service for the web service and batch
//! kinds, an autoscaling/v2 HorizontalPodAutoscaler within the spec's bounds (not for batch,
//! which sits at zero pods), a ConfigMap with the spec mounted at [`SPEC_PATH`], a Secret with
//! the prediction token, and a PodDisruptionBudget. Every object carries the endpoint's
//! [`labels`] and, when given, an owner reference.
//!
//! [`Deployer`] applies them by server-side apply with the field manager [`FIELD_MANAGER`]
//! (the same spec twice changes nothing; drift made by hand is put back), and scales, reads
//! the status of and deletes endpoints. [`KubeAutoscaler`] implements
//! [`serving_core::Autoscaler`] on a Deployment's scale subresource.
//!
//! A Kafka stream scales on its consumer lag: through a KEDA [`ScaledObject`] where KEDA's CRD
//! is installed, else an HPA on the [`LAG_METRIC`] external metric ([`LagScaling`]). A batch
//! endpoint runs a batch with [`Deployer::run_batch`]: 0 → 1 pod, the run, back to 0.
//!
//! A new image or model version rolls out with `maxUnavailable: 0`. A [`Canary`] runs a
//! candidate beside the stable version ([`Deployer::canary`]) with a share of the traffic: by
//! weight on a Gateway API [`HttpRoute`] for web services and batch endpoints, by partitions
//! in the consumer group for streams; [`Deployer::set_canary_weight`], [`Deployer::promote`]
//! and [`Deployer::rollback`] move it on.
//!
//! The [`ServingEndpoint`] custom resource says what should run (its CRD generated from the
//! Rust types, installed by [`install_crd`]); the [`Operator`], a controller on
//! `kube::runtime`, reconciles each into the objects above with the same [`Deployer`] steps,
//! reports the status (ready replicas, versions and weights, URL, conditions `Ready` and
//! `Reconciled` with [`reason`]s), retries with backoff and cleans up through the finalizer
//! [`FINALIZER`]. `examples/k8s_operator.rs` runs it against `$KUBECONFIG`.
//!
//! ```no_run
//! # async fn run() -> serving_core::Result<()> {
//! use serving_core::{EndpointSpec, ModelRef};
//! use serving_k8s::{Deployer, ServingEndpointSpec};
//!
//! let endpoint = ServingEndpointSpec::new(
//!     EndpointSpec::new("iris", ModelRef::new("iris-tree", "1")),
//!     "registry.example/iris:1",
//! );
//! let deployer = Deployer::from_kubeconfig("kubeconfig".as_ref(), "default").await?;
//! let applied = deployer.apply(&endpoint, None).await?;
//! println!("changed: {:?}", applied.changed);
//! deployer.scale("iris", 1).await?;
//! # Ok(())
//! # }
//! ```

mod autoscaler;
mod batch;
mod config;
mod crd;
mod deployer;
mod error;
mod manifests;
mod operator;
mod rollout;
mod scaling;

pub use autoscaler::KubeAutoscaler;
pub use batch::{BatchOnCluster, TOKEN_HEADER, submit_batch};
pub use config::{
    DEFAULT_DRAIN_TIMEOUT_SECS, DEFAULT_PORT, PodResources, ServingEndpointSpec,
    TERMINATION_MARGIN_SECS,
};
pub use crd::{
    FINALIZER, GROUP, ServingEndpoint, ServingEndpointResourceSpec, ServingEndpointStatus, VERSION,
    VersionStatus, install_crd,
};
pub use deployer::{
    Applied, DEFAULT_ROLLOUT_TIMEOUT, Deployer, EndpointStatus, PartitionCounter,
    client_from_kubeconfig,
};
pub use manifests::route::{
    HttpBackendRef, HttpRoute, HttpRouteRule, HttpRouteSpec, ParentReference,
};
pub use manifests::{
    BOUNDS_ANNOTATION, CONTAINER, DEFAULT_TOKEN_ENV, ENDPOINT_LABEL, FIELD_MANAGER, Manifests,
    PredictionToken, SERVICE_PORT, SPEC_DIGEST_ANNOTATION, SPEC_KEY, SPEC_PATH, TOKEN_KEY,
    TRACK_LABEL, config_map_name, labels, secret_name,
};
pub use operator::{Operator, READY, RECONCILED, ReconcileError, reason};
pub use rollout::{
    CANARY_ANNOTATION, CANARY_OF_LABEL, Canary, CanaryManifests, CanaryStatus,
    STABLE_SPEC_ANNOTATION, canary_name,
};
pub use scaling::{
    DEFAULT_LAG_THRESHOLD, LAG_METRIC, LagScaling, ScaleTargetRef, ScaleTrigger, ScaledObject,
    ScaledObjectSpec, scaled_object,
};
pub use {k8s_openapi, kube};
