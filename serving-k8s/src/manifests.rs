//! [`Manifests`]: the typed Kubernetes objects of one endpoint, built from its
//! [`ServingEndpointSpec`] (never from YAML templates).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretKeySelector, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serving_core::{EndpointKind, Result};

use crate::config::ServingEndpointSpec;

/// The label every object of an endpoint carries, and the pods' selector.
pub const ENDPOINT_LABEL: &str = "serving.dev/endpoint";
/// The label that tells an endpoint's stable objects (`stable`) from those of a candidate
/// running beside them (`canary`, see [`Canary`](crate::Canary)).
pub const TRACK_LABEL: &str = "serving.dev/track";
/// The annotation of a Deployment that holds the replica bounds that run (`min..max`), read
/// by [`KubeAutoscaler`](crate::KubeAutoscaler).
pub const BOUNDS_ANNOTATION: &str = "serving.dev/replica-bounds";
/// The pod template's annotation with a digest of the spec, so a changed spec rolls the pods.
pub const SPEC_DIGEST_ANNOTATION: &str = "serving.dev/spec-digest";
/// The field manager of every write (server-side apply and scale).
pub const FIELD_MANAGER: &str = "serving";
/// Where the pod finds its spec (`SERVING_SPEC`).
pub const SPEC_PATH: &str = "/etc/serving/spec.yaml";
/// The key of the spec in the ConfigMap.
pub const SPEC_KEY: &str = "spec.yaml";
/// The key of the token in the Secret.
pub const TOKEN_KEY: &str = "token";
/// The variable that carries the token when the spec names none (`auth.token_env`).
pub const DEFAULT_TOKEN_ENV: &str = "SERVING_TOKEN";
/// The container's name.
pub const CONTAINER: &str = "serving";
/// The port of an endpoint's Service (it forwards to the pod's named port `http`), which
/// canary routes and the operator's URL name too.
pub const SERVICE_PORT: u16 = 80;

const SPEC_DIR: &str = "/etc/serving";
const SPEC_VOLUME: &str = "spec";
const PORT_NAME: &str = "http";

/// The token callers present to predict. Its `Debug` never shows it, so it is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PredictionToken(String);

impl PredictionToken {
    /// A new random token: 32 bytes from the OS, Base64 (URL-safe, unpadded).
    ///
    /// # Errors
    /// [`serving_core::Error::Action`] when the OS has no randomness to give.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| serving_core::Error::Action {
            action: "generate a prediction token".into(),
            source: e.to_string().into(),
        })?;
        Ok(PredictionToken(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// A token given by the user.
    pub fn new(token: impl Into<String>) -> Self {
        PredictionToken(token.into())
    }

    /// The token held by a Secret built by [`Manifests`], if it holds one.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let bytes = secret.data.as_ref()?.get(TOKEN_KEY)?;
        let text = String::from_utf8(bytes.0.clone()).ok()?;
        (!text.is_empty()).then_some(PredictionToken(text))
    }

    /// The token itself, for the caller that must present it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PredictionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PredictionToken(<redacted>)")
    }
}

/// The objects of one endpoint: what [`Deployer::apply`](crate::Deployer::apply) applies.
///
/// Every object carries [`labels`] and, when an owner is given, its owner reference, so that
/// deleting the owner removes them all.
#[derive(Clone)]
#[non_exhaustive]
pub struct Manifests {
    /// The pods: readiness on `/readyz`, liveness on `/healthz`, a termination grace longer
    /// than the drain, rolling updates with `maxUnavailable: 0`. Its `replicas` is left out:
    /// the autoscaler owns it (see [`Manifests::initial_replicas`]).
    pub deployment: Deployment,
    /// The web service's and the batch endpoint's Service; a Kafka stream has none.
    pub service: Option<Service>,
    /// The autoscaling/v2 HorizontalPodAutoscaler within the bounds: on CPU, and for a Kafka
    /// stream on its consumer lag ([`LAG_METRIC`](crate::LAG_METRIC)); none for a batch
    /// endpoint, which [`KubeAutoscaler`](crate::KubeAutoscaler) scales from zero. A stream
    /// applied where KEDA runs gets a [`ScaledObject`](crate::ScaledObject) instead.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// The endpoint spec as YAML, mounted at [`SPEC_PATH`].
    pub config_map: ConfigMap,
    /// The prediction token, as the container's token variable.
    pub secret: Secret,
    /// At most one pod down at a time for voluntary disruptions.
    pub disruption_budget: PodDisruptionBudget,
    /// Replicas of a new Deployment.
    pub initial_replicas: i32,
}

impl fmt::Debug for Manifests {
    // The Secret's data is the token: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifests")
            .field("deployment", &self.deployment)
            .field("service", &self.service)
            .field("autoscaler", &self.autoscaler)
            .field("config_map", &self.config_map)
            .field("secret", &self.secret.metadata.name)
            .field("disruption_budget", &self.disruption_budget)
            .field("initial_replicas", &self.initial_replicas)
            .finish()
    }
}

/// The labels of every object of `endpoint`: its name, kind and model, who manages it, and
/// its [`TRACK_LABEL`] (`stable`).
pub fn labels(endpoint: &ServingEndpointSpec) -> BTreeMap<String, String> {
    let spec = &endpoint.endpoint;
    let mut labels = BTreeMap::from([
        (ENDPOINT_LABEL.to_owned(), spec.name.clone()),
        ("app.kubernetes.io/name".to_owned(), spec.name.clone()),
        (
            "app.kubernetes.io/component".to_owned(),
            spec.kind.name().replace('_', "-"),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "serving".to_owned(),
        ),
        (TRACK_LABEL.to_owned(), "stable".to_owned()),
    ]);
    // Only when it is a valid label value; the annotation always has it.
    if is_label_value(&spec.model.version) {
        labels.insert(
            "app.kubernetes.io/version".to_owned(),
            spec.model.version.clone(),
        );
    }
    labels
}

fn is_label_value(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    value.len() <= 63
        && edge(value.chars().next())
        && edge(value.chars().last())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn selector(endpoint: &ServingEndpointSpec) -> BTreeMap<String, String> {
    BTreeMap::from([(ENDPOINT_LABEL.to_owned(), endpoint.name().to_owned())])
}

/// FNV-1a: stable across Rust releases (unlike `DefaultHasher`), so the digest and with it the
/// pod template only change when the spec does.
fn digest(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The name of the ConfigMap of `endpoint`.
pub fn config_map_name(endpoint: &str) -> String {
    format!("{endpoint}-spec")
}

/// The name of the Secret of `endpoint`.
pub fn secret_name(endpoint: &str) -> String {
    format!("{endpoint}-token")
}

impl Manifests {
    /// The objects of `endpoint` in `namespace`, holding `token`, owned by `owner` if given.
    ///
    /// # Errors
    /// What [`ServingEndpointSpec::validate`] finds.
    pub fn build(
        endpoint: &ServingEndpointSpec,
        namespace: &str,
        token: &PredictionToken,
        owner: Option<&OwnerReference>,
    ) -> Result<Self> {
        endpoint.validate()?;
        let spec = &endpoint.endpoint;
        let name = spec.name.as_str();
        let labels = labels(endpoint);
        let bounds = endpoint.bounds();
        let meta =
            |object_name: String, annotations: Option<BTreeMap<String, String>>| ObjectMeta {
                name: Some(object_name),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels.clone()),
                annotations,
                owner_references: owner.map(|owner| vec![owner.clone()]),
                ..ObjectMeta::default()
            };
        let spec_yaml = spec.to_yaml();
        let model = BTreeMap::from([(
            "serving.dev/model".to_owned(),
            format!("{}@{}", spec.model.name, spec.model.version),
        )]);

        let config_map = ConfigMap {
            metadata: meta(config_map_name(name), None),
            data: Some(BTreeMap::from([(SPEC_KEY.to_owned(), spec_yaml.clone())])),
            ..ConfigMap::default()
        };
        let secret = Secret {
            metadata: meta(secret_name(name), None),
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(
                TOKEN_KEY.to_owned(),
                ByteString(token.expose().as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };

        let probe = |path: &str, period: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String(PORT_NAME.to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(3),
            ..Probe::default()
        };
        let env = |name: &str, value: String| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        };
        let token_env = spec
            .auth
            .token_env
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_owned());
        let container = Container {
            name: CONTAINER.to_owned(),
            image: Some(endpoint.image.clone()),
            ports: Some(vec![ContainerPort {
                name: Some(PORT_NAME.to_owned()),
                container_port: i32::from(endpoint.port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            env: Some(vec![
                env("SERVING_ADDR", format!("0.0.0.0:{}", endpoint.port)),
                env("SERVING_SPEC", SPEC_PATH.to_owned()),
                env(
                    "SERVING_DRAIN_TIMEOUT",
                    endpoint.drain_timeout_secs.to_string(),
                ),
                EnvVar {
                    name: token_env,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret_name(name),
                            key: TOKEN_KEY.to_owned(),
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                },
            ]),
            readiness_probe: Some(probe("/readyz", 5)),
            liveness_probe: Some(probe("/healthz", 10)),
            resources: endpoint.resources.as_ref().map(|resources| {
                let quantities = |map: &BTreeMap<String, String>| {
                    (!map.is_empty()).then(|| {
                        map.iter()
                            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                            .collect()
                    })
                };
                ResourceRequirements {
                    requests: quantities(&resources.requests),
                    limits: quantities(&resources.limits),
                    ..ResourceRequirements::default()
                }
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: SPEC_VOLUME.to_owned(),
                mount_path: SPEC_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        let mut pod_annotations = model.clone();
        pod_annotations.extend([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), endpoint.port.to_string()),
            ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
            (SPEC_DIGEST_ANNOTATION.to_owned(), digest(&spec_yaml)),
        ]);
        let grace = i64::try_from(endpoint.termination_grace_secs()).unwrap_or(i64::MAX);
        let mut deployment_annotations = model.clone();
        deployment_annotations.insert(
            BOUNDS_ANNOTATION.to_owned(),
            format!("{}..{}", bounds.min_replicas, bounds.max_replicas),
        );
        let deployment = Deployment {
            metadata: meta(name.to_owned(), Some(deployment_annotations)),
            spec: DeploymentSpec {
                selector: LabelSelector {
                    match_labels: Some(selector(endpoint)),
                    ..LabelSelector::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_owned()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::Int(1)),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels.clone()),
                        annotations: Some(pod_annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        termination_grace_period_seconds: Some(grace),
                        // The pod never talks to the API server.
                        automount_service_account_token: Some(false),
                        volumes: Some(vec![Volume {
                            name: SPEC_VOLUME.to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: config_map_name(name),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        };

        let service = match spec.kind {
            EndpointKind::KafkaStream(_) => None,
            _ => Some(Service {
                metadata: meta(name.to_owned(), None),
                spec: Some(ServiceSpec {
                    selector: Some(selector(endpoint)),
                    ports: Some(vec![ServicePort {
                        name: Some(PORT_NAME.to_owned()),
                        port: i32::from(SERVICE_PORT),
                        target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    }]),
                    type_: Some("ClusterIP".to_owned()),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            }),
        };
        let autoscaler = match spec.kind {
            EndpointKind::Batch(_) => None,
            _ => Some(HorizontalPodAutoscaler {
                metadata: meta(name.to_owned(), None),
                spec: HorizontalPodAutoscalerSpec {
                    scale_target_ref: CrossVersionObjectReference {
                        api_version: Some("apps/v1".to_owned()),
                        kind: "Deployment".to_owned(),
                        name: name.to_owned(),
                    },
                    min_replicas: Some(replicas(bounds.min_replicas.max(1))),
                    max_replicas: replicas(bounds.max_replicas),
                    metrics: Some(vec![match spec.kind {
                        // A stream scales on how far behind it is, not on its CPU.
                        EndpointKind::KafkaStream(_) => crate::scaling::lag_metric(endpoint),
                        _ => MetricSpec {
                            type_: "Resource".to_owned(),
                            resource: Some(ResourceMetricSource {
                                name: "cpu".to_owned(),
                                target: MetricTarget {
                                    type_: "Utilization".to_owned(),
                                    average_utilization: Some(80),
                                    ..MetricTarget::default()
                                },
                            }),
                            ..MetricSpec::default()
                        },
                    }]),
                    ..HorizontalPodAutoscalerSpec::default()
                },
                ..HorizontalPodAutoscaler::default()
            }),
        };
        let disruption_budget = PodDisruptionBudget {
            metadata: meta(name.to_owned(), None),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector(endpoint)),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        Ok(Manifests {
            deployment,
            service,
            autoscaler,
            config_map,
            secret,
            disruption_budget,
            initial_replicas: replicas(endpoint.initial_replicas()),
        })
    }

    /// The `kind/name` of every object, in the order they are applied.
    pub fn object_names(&self) -> Vec<String> {
        let name = |kind: &str, meta: &ObjectMeta| {
            format!("{kind}/{}", meta.name.as_deref().unwrap_or_default())
        };
        let mut names = vec![
            name("ConfigMap", &self.config_map.metadata),
            name("Secret", &self.secret.metadata),
            name("Deployment", &self.deployment.metadata),
        ];
        if let Some(service) = &self.service {
            names.push(name("Service", &service.metadata));
        }
        if let Some(autoscaler) = &self.autoscaler {
            names.push(name("HorizontalPodAutoscaler", &autoscaler.metadata));
        }
        names.push(name(
            "PodDisruptionBudget",
            &self.disruption_budget.metadata,
        ));
        names
    }
}

fn replicas(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

pub mod route;
#[cfg(test)]
mod tests;
