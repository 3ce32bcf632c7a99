//! Canary rollouts: a candidate version ([`Canary`]) runs as a second Deployment beside the
//! stable one and takes a share of the traffic, which is raised, promoted or rolled back.
//!
//! A web service or batch endpoint splits its requests by weight on a Gateway API `HTTPRoute`
//! over the stable Service and the canary's own Service. A Kafka stream has no route: the
//! canary's consumers join the stable's consumer group, so the split is by partitions, and the
//! canary's replicas are proportional to its weight with stable and canary together within
//! the partition cap.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serving_core::{AutoscaleBounds, EndpointKind, Error, Result};

use crate::config::ServingEndpointSpec;
use crate::deployer::{Deployer, EndpointStatus, Plan, image_of};
use crate::error::K8sError;
use crate::manifests::route::{
    GATEWAY_API, HttpBackendRef, HttpRoute, HttpRouteRule, HttpRouteSpec, ParentReference,
};
use crate::manifests::{
    ENDPOINT_LABEL, Manifests, PredictionToken, SERVICE_PORT, TRACK_LABEL, config_map_name, labels,
    secret_name,
};

/// The label of a canary's objects that names the endpoint it is the candidate of.
pub const CANARY_OF_LABEL: &str = "serving.dev/canary-of";
/// The canary Deployment's annotation with the stable [`ServingEndpointSpec`] (JSON), so that
/// raising the share, promoting and rolling back need only the endpoint's name.
pub const STABLE_SPEC_ANNOTATION: &str = "serving.dev/stable-spec";
/// The canary Deployment's annotation with its [`Canary`] (JSON).
pub const CANARY_ANNOTATION: &str = "serving.dev/canary";

/// Why a canary needs `HTTPRoute`, for the error when the cluster lacks it.
const WHY_ROUTES: &str = "a web service's or batch endpoint's canary splits its traffic on one: install the Gateway API CRDs";

/// A candidate version running beside the stable one and taking `weight` percent of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The candidate's container image; the stable image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The candidate's model version (its `EndpointSpec.model.version`); the stable one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Percent of traffic (0-100) the candidate takes.
    pub weight: u8,
}

impl Canary {
    /// A candidate taking `weight` percent, of the stable image and model version until
    /// [`with_image`](Self::with_image) or [`with_model_version`](Self::with_model_version).
    pub fn new(weight: u8) -> Self {
        Canary {
            image: None,
            model_version: None,
            weight,
        }
    }

    /// With the candidate's image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// With the candidate's model version.
    pub fn with_model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = Some(version.into());
        self
    }

    /// Checks the weight (0-100) and that the candidate names an image or a model version.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] (`canary.weight`) or [`Error::InvalidSpec`] naming what is
    /// wrong with the candidate of `endpoint`.
    pub fn validate(&self, endpoint: &str) -> Result<()> {
        check_weight(self.weight)?;
        let invalid = |reason: &str| {
            Err(Error::InvalidSpec {
                reason: format!("endpoint `{endpoint}`: the canary {reason}"),
            })
        };
        if self.image.is_none() && self.model_version.is_none() {
            return invalid("names neither an image nor a model version, so it is the stable one");
        }
        if self
            .model_version
            .as_ref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return invalid("model version is empty");
        }
        if self.image.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return invalid("image is empty");
        }
        Ok(())
    }

    /// The candidate's spec: the stable one with this image and model version.
    pub fn candidate(&self, stable: &ServingEndpointSpec) -> ServingEndpointSpec {
        let mut candidate = stable.clone();
        if let Some(image) = &self.image {
            candidate.image = image.clone();
        }
        if let Some(version) = &self.model_version {
            candidate.endpoint.model.version = version.clone();
        }
        candidate
    }
}

fn check_weight(weight: u8) -> Result<()> {
    if weight > 100 {
        return Err(Error::InvalidSetting {
            key: "canary.weight".to_owned(),
            value: weight.to_string(),
            reason: "a share of the traffic is a percentage, 0 to 100".to_owned(),
        });
    }
    Ok(())
}

/// A canary as it runs: its version, share and pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CanaryStatus {
    /// The candidate's container image.
    pub image: String,
    /// The candidate's model version.
    pub model_version: String,
    /// Percent of the traffic it takes (for a stream: what it was asked to take; the
    /// partitions its consumers get follow from its replicas).
    pub weight: u8,
    /// The replicas asked for.
    pub replicas: u32,
    /// Its pods that pass their readiness probe.
    pub ready_replicas: u32,
}

/// The name of the canary Deployment (and its Service) of `endpoint`: `<endpoint>-canary`.
pub fn canary_name(endpoint: &str) -> String {
    format!("{endpoint}-canary")
}

/// A web service's or batch endpoint's canary replicas: its weight's share of the stable's
/// `stable_replicas`, rounded up, at least 1 and at most the bounds' maximum.
pub(crate) fn canary_replicas(stable_replicas: u32, bounds: AutoscaleBounds, weight: u8) -> u32 {
    let share = (stable_replicas.max(1) * u32::from(weight)).div_ceil(100);
    share.clamp(1, bounds.max_replicas.max(1))
}

/// A stream's consumers split between stable and canary: `total` consumers (at least 2, at
/// most the partition `cap`), the canary's share of them by `weight` (at least 1), the
/// stable keeping at least 1. Returns `(stable, canary)`.
///
/// # Errors
/// When `cap` is below 2: one partition cannot be split between two consumers.
pub(crate) fn stream_split(total: u32, cap: u32, weight: u8) -> Result<(u32, u32), String> {
    if cap < 2 {
        return Err(format!(
            "a Kafka stream's canary needs at least 2 partitions (and max_replicas of 2) to share; this one is capped at {cap}"
        ));
    }
    let total = total.clamp(2, cap);
    let canary = (total * u32::from(weight))
        .div_ceil(100)
        .clamp(1, total - 1);
    Ok((total - canary, canary))
}

/// The objects of a canary, what [`Deployer::canary`] applies beside the route. They carry
/// the candidate's labels with [`ENDPOINT_LABEL`] `<endpoint>-canary`, so that the stable's
/// Service, PodDisruptionBudget and Deployment never select its pods, [`TRACK_LABEL`]
/// `canary` and [`CANARY_OF_LABEL`] `<endpoint>`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CanaryManifests {
    /// `<endpoint>-canary`: the candidate's pods, at a fixed count (no autoscaler), with the
    /// stable spec and the [`Canary`] in its annotations.
    pub deployment: Deployment,
    /// `<endpoint>-canary-spec`: the candidate's endpoint spec, under the endpoint's name.
    pub config_map: ConfigMap,
    /// `<endpoint>-canary` for a web service or batch endpoint; a stream has none.
    pub service: Option<Service>,
}

impl CanaryManifests {
    /// The canary of `stable` running `replicas` pods in `namespace` with the stable's token.
    ///
    /// # Errors
    /// What [`ServingEndpointSpec::validate`] finds in the candidate's spec.
    pub fn build(
        stable: &ServingEndpointSpec,
        canary: &Canary,
        namespace: &str,
        token: &PredictionToken,
        owner: Option<&OwnerReference>,
        replicas: u32,
    ) -> Result<Self> {
        let name = stable.name();
        let candidate = canary.candidate(stable);
        // Built under the endpoint's own name: its spec (and with it its routes, its consumer
        // group and its metrics) is the endpoint's, and its token Secret the stable's.
        let manifests = Manifests::build(&candidate, namespace, token, owner)?;
        let own = canary_name(name);
        let mut labels = labels(&candidate);
        labels.insert(ENDPOINT_LABEL.to_owned(), own.clone());
        labels.insert(TRACK_LABEL.to_owned(), "canary".to_owned());
        labels.insert(CANARY_OF_LABEL.to_owned(), name.to_owned());
        let selector = BTreeMap::from([(ENDPOINT_LABEL.to_owned(), own.clone())]);
        let relabel = |meta: &mut ObjectMeta, object_name: String| {
            meta.name = Some(object_name);
            meta.labels = Some(labels.clone());
        };

        let mut config_map = manifests.config_map;
        relabel(&mut config_map.metadata, config_map_name(&own));

        let mut deployment = manifests.deployment;
        relabel(&mut deployment.metadata, own.clone());
        deployment
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .extend([
                (STABLE_SPEC_ANNOTATION.to_owned(), to_json(stable)),
                (CANARY_ANNOTATION.to_owned(), to_json(canary)),
            ]);
        // No autoscaler: its replicas follow its weight.
        deployment.spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
        deployment.spec.selector.match_labels = Some(selector.clone());
        if let Some(template) = deployment.spec.template.metadata.as_mut() {
            template.labels = Some(labels.clone());
        }
        for volume in deployment
            .spec
            .template
            .spec
            .iter_mut()
            .flat_map(|pod| pod.volumes.iter_mut().flatten())
        {
            if let Some(source) = volume.config_map.as_mut() {
                source.name = config_map_name(&own);
            }
        }

        let service = manifests.service.map(|mut service| {
            relabel(&mut service.metadata, own.clone());
            if let Some(spec) = service.spec.as_mut() {
                spec.selector = Some(selector.clone());
            }
            service
        });
        Ok(CanaryManifests {
            deployment,
            config_map,
            service,
        })
    }
}

/// An annotation's value: plain data types, which always serialize.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl HttpRoute {
    /// The route of `endpoint` in `namespace`, attached to `parent`: `100 - weight` percent
    /// of the requests to the stable Service and `weight` to the canary's; without a canary
    /// weight, everything to the stable one (the route after a promotion or a rollback).
    pub fn for_endpoint(
        endpoint: &ServingEndpointSpec,
        namespace: &str,
        owner: Option<&OwnerReference>,
        parent: ParentReference,
        canary_weight: Option<u8>,
    ) -> HttpRoute {
        route(endpoint, namespace, owner, parent, canary_weight)
    }
}

fn route(
    endpoint: &ServingEndpointSpec,
    namespace: &str,
    owner: Option<&OwnerReference>,
    parent: ParentReference,
    weight: Option<u8>,
) -> HttpRoute {
    let name = endpoint.name();
    let backend = |service: String, weight: u8| HttpBackendRef {
        name: service,
        port: Some(i32::from(SERVICE_PORT)),
        weight: Some(i32::from(weight)),
    };
    let mut backend_refs = vec![backend(name.to_owned(), 100 - weight.unwrap_or(0))];
    if let Some(weight) = weight {
        backend_refs.push(backend(canary_name(name), weight));
    }
    let mut route = HttpRoute::new(
        name,
        HttpRouteSpec {
            parent_refs: vec![parent],
            rules: vec![HttpRouteRule { backend_refs }],
        },
    );
    route.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(endpoint)),
        owner_references: owner.map(|owner| vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    route
}

/// A canary found on the cluster, read back from its Deployment.
struct Running {
    deployment: Deployment,
    stable: ServingEndpointSpec,
    canary: Canary,
    owner: Option<OwnerReference>,
}

impl Running {
    fn replicas(&self) -> u32 {
        u32::try_from(self.deployment.spec.replicas.unwrap_or(0)).unwrap_or(0)
    }

    fn is_stream(&self) -> bool {
        matches!(self.stable.endpoint.kind, EndpointKind::KafkaStream(_))
    }
}

impl Deployer {
    /// Runs `canary` beside the stable version of `stable` (which must be deployed): a second
    /// Deployment `<name>-canary` with its own ConfigMap holding the candidate's spec, the
    /// stable's token Secret, and labels [`TRACK_LABEL`] `canary` / [`CANARY_OF_LABEL`].
    ///
    /// - A web service or batch endpoint: the canary's own Service and an `HTTPRoute` over
    ///   both Services with weights `100 - weight` / `weight`, attached to the Gateway of
    ///   [`with_gateway`](Self::with_gateway) or else to the stable Service (GAMMA). The
    ///   canary runs its weight's share of the stable's replicas, at least 1.
    /// - A Kafka stream: the canary's consumers join the stable's consumer group, so they take
    ///   a share of the partitions: of the consumers running (at least 2, at most the
    ///   partition cap), the canary gets its weight's share (at least 1) and the stable the
    ///   rest; the stable's maximum becomes the cap minus the canary's, so the two together
    ///   never outnumber the partitions.
    ///
    /// Called again (by [`set_canary_weight`](Self::set_canary_weight) or a reconcile), it
    /// brings the same objects up to date. Every object is tried as a dry run first.
    ///
    /// # Errors
    /// Nothing is changed on any of them:
    /// - [`Error::InvalidSetting`] (`canary.weight`) for a weight above 100, and
    ///   [`Error::InvalidSpec`] for a canary naming neither image nor model version, a spec
    ///   that does not validate, or a stream capped below 2 partitions;
    /// - [`Error::EndpointNotFound`] when the stable endpoint is not deployed;
    /// - [`Error::Action`] when the cluster has no `HTTPRoute` (Gateway API CRDs not
    ///   installed) for a web service or batch endpoint, or refuses a write;
    /// - [`Error::Conflict`] when another field manager owns fields of the canary's objects.
    pub async fn canary(
        &self,
        stable: &ServingEndpointSpec,
        canary: &Canary,
        owner: Option<OwnerReference>,
    ) -> Result<CanaryStatus> {
        stable.validate()?;
        let name = stable.name();
        canary.validate(name)?;
        canary.candidate(stable).validate()?;
        let action = format!(
            "run a canary of endpoint `{name}` in namespace `{}`",
            self.namespace
        );
        let fail = |e: K8sError| e.into_core(action.clone());
        let deployments = self.api::<Deployment>();
        let read = |object: String| {
            let namespace = self.namespace.clone();
            move |e: kube::Error| K8sError::from_kube(e, "read", &object, &namespace)
        };
        if deployments
            .get_opt(name)
            .await
            .map_err(read(format!("Deployment/{name}")))
            .map_err(fail)?
            .is_none()
        {
            return Err(Error::EndpointNotFound {
                endpoint: name.to_owned(),
            });
        }
        let is_stream = matches!(stable.endpoint.kind, EndpointKind::KafkaStream(_));
        if !is_stream {
            self.require_routes().await.map_err(fail)?;
        }
        let token = self
            .api::<Secret>()
            .get_opt(&secret_name(name))
            .await
            .map_err(read(format!("Secret/{}", secret_name(name))))
            .map_err(fail)?
            .as_ref()
            .and_then(PredictionToken::from_secret)
            .ok_or_else(|| {
                fail(K8sError::Other(format!(
                    "the Secret `{}` with the endpoint's token is missing: apply the endpoint again first",
                    secret_name(name)
                )))
            })?;

        let autoscaler = self.autoscaler();
        let stable_now = autoscaler.current(name).await.map_err(fail)?;
        let canary_now = deployments
            .get_opt(&canary_name(name))
            .await
            .map_err(read(format!("Deployment/{}", canary_name(name))))
            .map_err(fail)?
            .and_then(|d| d.spec.replicas)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let (stable_target, replicas) = if is_stream {
            let cap = stable.bounds().max_replicas;
            let (stable_part, canary_part) =
                stream_split(stable_now + canary_now, cap, canary.weight).map_err(|reason| {
                    Error::InvalidSpec {
                        reason: format!("endpoint `{name}`: {reason}"),
                    }
                })?;
            (Some(stable_part), canary_part)
        } else {
            (
                None,
                canary_replicas(stable_now, stable.bounds(), canary.weight),
            )
        };
        let objects = CanaryManifests::build(
            stable,
            canary,
            &self.namespace,
            &token,
            owner.as_ref(),
            replicas,
        )?;
        let route = (!is_stream).then(|| {
            route(
                stable,
                &self.namespace,
                owner.as_ref(),
                self.parent(name),
                Some(canary.weight),
            )
        });

        let mut plan = Plan::default();
        plan.check(self, &objects.config_map, stable).await?;
        plan.check(self, &objects.deployment, stable).await?;
        if let Some(service) = &objects.service {
            plan.check(self, service, stable).await?;
        }
        if let Some(route) = &route {
            plan.check(self, route, stable).await?;
        }

        // A stream makes room in its group first: the stable gives up the canary's share.
        if let Some(stable_part) = stable_target {
            self.apply_reserving(stable, owner.as_ref(), replicas)
                .await?;
            autoscaler
                .set_replicas(name, stable_part)
                .await
                .map_err(fail)?;
        }
        let mut changed = Vec::new();
        let mut forced = plan.forced.iter();
        let mut next_force = || forced.next().copied().unwrap_or(false);
        self.write(&objects.config_map, next_force(), &mut changed)
            .await
            .map_err(fail)?;
        self.write(&objects.deployment, next_force(), &mut changed)
            .await
            .map_err(fail)?;
        if let Some(service) = &objects.service {
            self.write(service, next_force(), &mut changed)
                .await
                .map_err(fail)?;
        }
        if let Some(route) = &route {
            self.write(route, next_force(), &mut changed)
                .await
                .map_err(fail)?;
        }
        tracing::info!(
            endpoint = name,
            namespace = %self.namespace,
            weight = canary.weight,
            replicas,
            ?changed,
            "canary applied"
        );
        self.canary_status(name)
            .await
            .map_err(fail)?
            .ok_or_else(|| {
                fail(K8sError::Other(
                    "the canary Deployment vanished as it was written".into(),
                ))
            })
    }

    /// Gives the running canary of `endpoint` `weight` percent of the traffic (and, for a
    /// stream, its share of the consumers).
    ///
    /// # Errors
    /// Nothing is changed: [`Error::InvalidSetting`] for a weight above 100;
    /// [`Error::Conflict`] when no canary runs; what [`canary`](Self::canary) returns.
    pub async fn set_canary_weight(&self, endpoint: &str, weight: u8) -> Result<CanaryStatus> {
        check_weight(weight)?;
        let running = self.running(endpoint, "change the weight of").await?;
        let canary = Canary {
            weight,
            ..running.canary
        };
        self.canary(&running.stable, &canary, running.owner).await
    }

    /// Makes the canary of `endpoint` the stable version: the stable Deployment is rolled to
    /// the candidate's image and spec (`maxUnavailable: 0`, so it never loses a ready pod) and
    /// waited for, up to [`with_rollout_timeout`](Self::with_rollout_timeout); then the route
    /// sends everything to the stable Service, and the canary's objects are removed. A
    /// stream's stable gets back the whole partition cap and the consumers both ran.
    ///
    /// # Errors
    /// [`Error::Conflict`] when no canary runs (nothing changed); [`Error::Timeout`] when the
    /// stable does not become ready in time (the canary and its share are left as they were,
    /// so it can still be rolled back); [`Error::Action`] when the API server refuses.
    pub async fn promote(&self, endpoint: &str) -> Result<EndpointStatus> {
        let running = self.running(endpoint, "promote").await?;
        let candidate = running.canary.candidate(&running.stable);
        let reserved = if running.is_stream() {
            running.replicas()
        } else {
            0
        };
        self.apply_reserving(&candidate, running.owner.as_ref(), reserved)
            .await?;
        self.wait_rolled(endpoint).await?;
        self.retire(&running, &candidate).await?;
        self.status(endpoint).await
    }

    /// Ends the canary of `endpoint`: the route sends everything to the stable Service, then
    /// the canary's objects are removed. The stable Deployment is not touched (a stream's gets
    /// back the whole partition cap and the consumers both ran).
    ///
    /// # Errors
    /// [`Error::Conflict`] when no canary runs (nothing changed); [`Error::Action`] when the
    /// API server refuses.
    pub async fn rollback(&self, endpoint: &str) -> Result<EndpointStatus> {
        let running = self.running(endpoint, "roll back").await?;
        self.retire(&running, &running.stable).await?;
        self.status(endpoint).await
    }

    /// The canary's share to zero, its objects removed, the stable (now running `stable`)
    /// serving everything.
    async fn retire(&self, running: &Running, stable: &ServingEndpointSpec) -> Result<()> {
        let name = stable.name();
        let action = format!(
            "retire the canary of endpoint `{name}` in namespace `{}`",
            self.namespace
        );
        let fail = |e: K8sError| e.into_core(action.clone());
        let owner = running.owner.as_ref();
        let mut changed = Vec::new();
        if !running.is_stream() {
            // Traffic off the canary before its pods go.
            let drained = route(stable, &self.namespace, owner, self.parent(name), Some(0));
            self.write(&drained, true, &mut changed)
                .await
                .map_err(fail)?;
        }
        let autoscaler = self.autoscaler();
        let consumers = autoscaler.current(name).await.map_err(fail)? + running.replicas();
        let mut removed = Vec::new();
        self.remove_canary(name, &mut removed).await.map_err(fail)?;
        if running.is_stream() {
            self.apply_reserving(stable, owner, 0).await?;
            autoscaler
                .set_replicas(name, stable.bounds().clamp(consumers))
                .await
                .map_err(fail)?;
        } else {
            let settled = route(stable, &self.namespace, owner, self.parent(name), None);
            self.write(&settled, true, &mut changed)
                .await
                .map_err(fail)?;
        }
        tracing::info!(endpoint = name, namespace = %self.namespace, ?removed, "canary retired");
        Ok(())
    }

    /// Waits until the stable Deployment runs its current template on every replica, ready,
    /// and no pod of an older one is left.
    async fn wait_rolled(&self, endpoint: &str) -> Result<()> {
        let start = Instant::now();
        let action = format!(
            "promote endpoint `{endpoint}` in namespace `{}`",
            self.namespace
        );
        loop {
            let deployment = self.api::<Deployment>().get(endpoint).await.map_err(|e| {
                K8sError::from_kube(
                    e,
                    "read",
                    &format!("Deployment/{endpoint}"),
                    &self.namespace,
                )
                .into_core(action.clone())
            })?;
            let status = deployment.status.unwrap_or_default();
            let wanted = deployment.spec.replicas.unwrap_or(0);
            let rolled = status.observed_generation.is_some()
                && status.observed_generation == deployment.metadata.generation
                && [
                    status.replicas,
                    status.updated_replicas,
                    status.ready_replicas,
                ]
                .iter()
                .all(|n| n.unwrap_or(0) == wanted);
            if rolled {
                return Ok(());
            }
            if start.elapsed() >= self.rollout_timeout {
                return Err(Error::Timeout {
                    after: self.rollout_timeout,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// What an endpoint's route attaches to.
    fn parent(&self, endpoint: &str) -> ParentReference {
        self.gateway
            .clone()
            .unwrap_or_else(|| ParentReference::service(endpoint, i32::from(SERVICE_PORT)))
    }

    /// An error when the cluster does not serve `HTTPRoute`.
    async fn require_routes(&self) -> Result<(), K8sError> {
        let (group_version, plural) = GATEWAY_API;
        if crate::scaling::serves(&self.client, group_version, plural, &self.namespace).await? {
            Ok(())
        } else {
            Err(K8sError::MissingApi {
                kind: "HTTPRoute",
                group_version,
                why: WHY_ROUTES,
            })
        }
    }

    /// The canary of `endpoint`, read back from its Deployment.
    async fn running(&self, endpoint: &str, verb: &str) -> Result<Running> {
        let action = format!(
            "{verb} the canary of endpoint `{endpoint}` in namespace `{}`",
            self.namespace
        );
        let object = format!("Deployment/{}", canary_name(endpoint));
        let deployment = self
            .api::<Deployment>()
            .get_opt(&canary_name(endpoint))
            .await
            .map_err(|e| {
                K8sError::from_kube(e, "read", &object, &self.namespace).into_core(action.clone())
            })?
            .ok_or_else(|| {
                K8sError::NoCanary {
                    endpoint: endpoint.to_owned(),
                    namespace: self.namespace.clone(),
                }
                .into_core(action.clone())
            })?;
        let annotation = |key: &str| {
            deployment.annotations().get(key).cloned().ok_or_else(|| {
                K8sError::Other(format!("{object} has no annotation `{key}`"))
                    .into_core(action.clone())
            })
        };
        let stable = serde_json::from_str(&annotation(STABLE_SPEC_ANNOTATION)?).map_err(|e| {
            K8sError::Other(format!("{object}: {STABLE_SPEC_ANNOTATION}: {e}"))
                .into_core(action.clone())
        })?;
        let canary = serde_json::from_str(&annotation(CANARY_ANNOTATION)?).map_err(|e| {
            K8sError::Other(format!("{object}: {CANARY_ANNOTATION}: {e}")).into_core(action.clone())
        })?;
        let owner = deployment.owner_references().first().cloned();
        Ok(Running {
            deployment,
            stable,
            canary,
            owner,
        })
    }

    /// The canary of `endpoint` as it runs, if one does.
    pub(crate) async fn canary_status(
        &self,
        endpoint: &str,
    ) -> Result<Option<CanaryStatus>, K8sError> {
        let object = format!("Deployment/{}", canary_name(endpoint));
        let Some(deployment) = self
            .api::<Deployment>()
            .get_opt(&canary_name(endpoint))
            .await
            .map_err(|e| K8sError::from_kube(e, "read", &object, &self.namespace))?
        else {
            return Ok(None);
        };
        let canary: Option<Canary> = deployment
            .annotations()
            .get(CANARY_ANNOTATION)
            .and_then(|json| serde_json::from_str(json).ok());
        let stable: Option<ServingEndpointSpec> = deployment
            .annotations()
            .get(STABLE_SPEC_ANNOTATION)
            .and_then(|json| serde_json::from_str(json).ok());
        let model_version = match (&canary, &stable) {
            (Some(canary), Some(stable)) => canary.candidate(stable).endpoint.model.version,
            _ => String::new(),
        };
        let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
        Ok(Some(CanaryStatus {
            image: image_of(&deployment).unwrap_or_default(),
            model_version,
            weight: canary.map_or(0, |c| c.weight),
            replicas: count(deployment.spec.replicas),
            ready_replicas: count(deployment.status.as_ref().and_then(|s| s.ready_replicas)),
        }))
    }

    /// The consumers a stream's canary runs (0 for the other kinds, or without a canary),
    /// which [`apply`](Self::apply) leaves out of the stable's partition cap.
    pub(crate) async fn canary_consumers(&self, endpoint: &ServingEndpointSpec) -> Result<u32> {
        if !matches!(endpoint.endpoint.kind, EndpointKind::KafkaStream(_)) {
            return Ok(0);
        }
        let name = canary_name(endpoint.name());
        let deployment = self.api::<Deployment>().get_opt(&name).await.map_err(|e| {
            K8sError::from_kube(e, "read", &format!("Deployment/{name}"), &self.namespace)
                .into_core(format!("apply endpoint `{}`", endpoint.name()))
        })?;
        Ok(deployment
            .and_then(|d| d.spec.replicas)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0))
    }

    /// Deletes the canary's Deployment, Service and ConfigMap, those that exist.
    pub(crate) async fn remove_canary(
        &self,
        endpoint: &str,
        deleted: &mut Vec<String>,
    ) -> Result<(), K8sError> {
        let own = canary_name(endpoint);
        self.remove::<Service>(&own, deleted).await?;
        self.remove::<Deployment>(&own, deleted).await?;
        self.remove::<ConfigMap>(&config_map_name(&own), deleted)
            .await
    }
}

#[cfg(test)]
mod tests {
    use serving_core::{BackendSection, EndpointSpec, ModelRef};

    use super::*;

    fn web() -> ServingEndpointSpec {
        let mut spec = EndpointSpec::new("iris", ModelRef::new("iris-tree", "1"));
        spec.autoscale = AutoscaleBounds::new(1, 4).unwrap();
        ServingEndpointSpec::new(spec, "registry.test/iris:1")
    }

    #[test]
    fn the_canary_has_the_documented_shape() {
        let canary: Canary =
            serde_json::from_str(r#"{"image":"registry.test/iris:2","weight":10}"#).unwrap();
        assert_eq!(canary, Canary::new(10).with_image("registry.test/iris:2"));
        assert_eq!(
            serde_json::to_value(Canary::new(5).with_model_version("2")).unwrap(),
            serde_json::json!({"model_version": "2", "weight": 5})
        );
        let unknown = serde_json::from_str::<Canary>(r#"{"weight":1,"wieght":2}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let too_big = serde_json::from_str::<Canary>(r#"{"weight":300}"#);
        assert!(too_big.is_err(), "a u8 refuses 300");
    }

    #[test]
    fn bad_canaries_are_refused_with_what_is_wrong() {
        let error = Canary::new(101).with_image("i:2").validate("iris");
        assert!(
            matches!(error, Err(Error::InvalidSetting { ref key, ref value, .. }) if key == "canary.weight" && value == "101"),
            "{error:?}"
        );
        let same = Canary::new(10).validate("iris").unwrap_err().to_string();
        assert!(
            same.contains("neither an image nor a model version"),
            "{same}"
        );
        let empty = Canary::new(10).with_model_version(" ").validate("iris");
        assert!(
            empty
                .unwrap_err()
                .to_string()
                .contains("model version is empty")
        );
        assert!(Canary::new(100).with_image("i:2").validate("iris").is_ok());
    }

    #[test]
    fn a_cluster_without_routes_is_a_clear_error() {
        let error = K8sError::MissingApi {
            kind: "HTTPRoute",
            group_version: GATEWAY_API.0,
            why: WHY_ROUTES,
        }
        .into_core("run a canary of endpoint `iris` in namespace `ml`")
        .to_string();
        assert_eq!(
            error,
            "run a canary of endpoint `iris` in namespace `ml` failed: the cluster does not serve \
             HTTPRoute (gateway.networking.k8s.io/v1): a web service's or batch endpoint's canary \
             splits its traffic on one: install the Gateway API CRDs"
        );
    }

    #[test]
    fn the_candidate_is_the_stable_spec_with_its_image_and_version() {
        let stable = web();
        let candidate = Canary::new(10).with_model_version("2").candidate(&stable);
        assert_eq!(
            candidate.image, stable.image,
            "the stable image when absent"
        );
        assert_eq!(candidate.endpoint.model.version, "2");
        assert_eq!(candidate.name(), "iris", "the endpoint's own name");
    }

    #[test]
    fn web_canary_replicas_follow_the_weight_at_least_one() {
        let bounds = AutoscaleBounds::new(1, 4).unwrap();
        assert_eq!(canary_replicas(4, bounds, 0), 1);
        assert_eq!(canary_replicas(4, bounds, 10), 1);
        assert_eq!(canary_replicas(4, bounds, 50), 2);
        assert_eq!(canary_replicas(4, bounds, 100), 4);
        assert_eq!(canary_replicas(10, bounds, 100), 4, "within the maximum");
        assert_eq!(canary_replicas(0, bounds, 30), 1, "a stable at zero");
    }

    #[test]
    fn a_streams_split_stays_within_the_partition_cap() {
        for cap in 2..=8 {
            for total in 0..=10 {
                for weight in [0, 1, 10, 25, 50, 75, 90, 100] {
                    let (stable, canary) = stream_split(total, cap, weight).unwrap();
                    assert!(stable >= 1 && canary >= 1, "{total} {cap} {weight}");
                    assert!(stable + canary <= cap, "{total} {cap} {weight}");
                }
            }
        }
        assert_eq!(stream_split(4, 4, 25), Ok((3, 1)));
        assert_eq!(stream_split(4, 4, 50), Ok((2, 2)));
        assert_eq!(stream_split(1, 6, 50), Ok((1, 1)), "at least two consumers");
        let error = stream_split(1, 1, 50).unwrap_err();
        assert!(error.contains("at least 2 partitions"), "{error}");
    }

    #[test]
    fn canary_objects_select_only_the_canarys_pods() {
        let stable = web();
        let canary = Canary::new(20).with_image("registry.test/iris:2");
        let token = PredictionToken::new("t");
        let objects = CanaryManifests::build(&stable, &canary, "ml", &token, None, 2).unwrap();
        let deployment = &objects.deployment;
        assert_eq!(deployment.metadata.name.as_deref(), Some("iris-canary"));
        assert_eq!(deployment.spec.replicas, Some(2));
        let selector = deployment.spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(selector[ENDPOINT_LABEL], "iris-canary");
        let template = deployment.spec.template.metadata.as_ref().unwrap();
        let pod_labels = template.labels.as_ref().unwrap();
        assert_eq!(pod_labels[TRACK_LABEL], "canary");
        assert_eq!(pod_labels[CANARY_OF_LABEL], "iris");
        assert_eq!(
            image_of(deployment).as_deref(),
            Some("registry.test/iris:2")
        );
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        let volume = pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap();
        assert_eq!(volume.name, "iris-canary-spec");
        let token_ref = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|env| {
                env.value_from
                    .as_ref()
                    .and_then(|from| from.secret_key_ref.as_ref())
            });
        assert_eq!(token_ref.unwrap().name, "iris-token", "the stable's token");
        assert_eq!(
            objects.config_map.metadata.name.as_deref(),
            Some("iris-canary-spec")
        );
        let spec_yaml = &objects.config_map.data.as_ref().unwrap()[crate::SPEC_KEY];
        assert_eq!(
            EndpointSpec::from_yaml(spec_yaml).unwrap(),
            canary.candidate(&stable).endpoint
        );
        let service = objects.service.as_ref().unwrap();
        assert_eq!(
            service.spec.as_ref().unwrap().selector.as_ref().unwrap()[ENDPOINT_LABEL],
            "iris-canary"
        );
        let annotations = deployment.metadata.annotations.as_ref().unwrap();
        let stored: ServingEndpointSpec =
            serde_json::from_str(&annotations[STABLE_SPEC_ANNOTATION]).unwrap();
        assert_eq!(stored, stable);
        let stored: Canary = serde_json::from_str(&annotations[CANARY_ANNOTATION]).unwrap();
        assert_eq!(stored, canary);
    }

    #[test]
    fn a_streams_canary_has_no_service_and_joins_the_group() {
        let mut stable = web();
        let section = serde_json::json!({"brokers": ["k:9092"], "input_topics": ["in"], "output_topic": "out"});
        stable.endpoint.kind =
            EndpointKind::KafkaStream(BackendSection::from_config(&section).unwrap());
        let objects = CanaryManifests::build(
            &stable,
            &Canary::new(50).with_model_version("2"),
            "ml",
            &PredictionToken::new("t"),
            None,
            1,
        )
        .unwrap();
        assert!(objects.service.is_none());
        let yaml = &objects.config_map.data.as_ref().unwrap()[crate::SPEC_KEY];
        let spec = EndpointSpec::from_yaml(yaml).unwrap();
        assert_eq!(
            spec.name, "iris",
            "so its default group is serving-iris, the stable's"
        );
    }

    #[test]
    fn the_route_splits_by_weight_and_settles_on_the_stable() {
        let stable = web();
        let split = route(
            &stable,
            "ml",
            None,
            ParentReference::service("iris", 80),
            Some(30),
        );
        assert_eq!(split.weight_of("iris"), 70);
        assert_eq!(split.weight_of("iris-canary"), 30);
        let json = serde_json::to_value(&split).unwrap();
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(json["spec"]["parentRefs"][0]["kind"], "Service");
        assert_eq!(json["spec"]["rules"][0]["backendRefs"][1]["port"], 80);
        let settled = route(
            &stable,
            "ml",
            None,
            ParentReference::gateway("public", None),
            None,
        );
        assert_eq!(settled.spec.rules[0].backend_refs.len(), 1);
        assert_eq!(settled.weight_of("iris"), 100);
        assert_eq!(settled.spec.parent_refs[0].kind.as_deref(), Some("Gateway"));
    }
}
