//! The status the operator reports: replicas, versions and weights, the URL, and the
//! conditions `Ready` and `Reconciled` with reasons, computed from what it saw.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serving_core::{EndpointKind, Error};

use crate::config::ServingEndpointSpec;
use crate::crd::{ServingEndpointStatus, VersionStatus};
use crate::deployer::{Applied, EndpointStatus};
use crate::error::K8sError;
use crate::manifests::SERVICE_PORT;
use crate::rollout::Canary;

/// The condition type: every replica asked for runs the current template and is ready.
pub const READY: &str = "Ready";
/// The condition type: the cluster matches the resource's spec.
pub const RECONCILED: &str = "Reconciled";

/// The reasons the operator gives in its conditions.
pub mod reason {
    /// `Ready=True`: every replica asked for is ready.
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// `Ready=True`: a batch endpoint at zero pods between batches.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// `Ready=False`: some replicas are starting or of an older template.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// `Reconciled=True`: every object was applied.
    pub const APPLIED: &str = "Applied";
    /// The spec does not parse or validate; nothing was changed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The namespace does not exist.
    pub const NAMESPACE_NOT_FOUND: &str = "NamespaceNotFound";
    /// The API server refused the operator (RBAC).
    pub const FORBIDDEN: &str = "Forbidden";
    /// Another field manager applied other values to fields serving owns.
    pub const FIELD_MANAGER_CONFLICT: &str = "FieldManagerConflict";
    /// The API server rejected an object.
    pub const REJECTED: &str = "Rejected";
    /// The API server could not be reached or failed.
    pub const API_ERROR: &str = "ApiError";
}

/// The reason of a failed reconcile.
pub(crate) fn reason_of(error: &Error) -> &'static str {
    match error {
        Error::InvalidSpec { .. } | Error::InvalidSetting { .. } => reason::INVALID_SPEC,
        Error::Conflict { .. } => reason::FIELD_MANAGER_CONFLICT,
        Error::Action { source, .. } => match source.downcast_ref::<K8sError>() {
            Some(K8sError::NamespaceNotFound { .. }) => reason::NAMESPACE_NOT_FOUND,
            Some(K8sError::Refused { .. }) => reason::FORBIDDEN,
            Some(K8sError::Invalid { .. }) => reason::REJECTED,
            _ => reason::API_ERROR,
        },
        _ => reason::API_ERROR,
    }
}

/// Sets the condition `type_` in `conditions`, keeping its `lastTransitionTime` when its
/// status does not change (so an unchanged status patches nothing and triggers no reconcile).
#[allow(clippy::too_many_arguments)]
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Where the endpoint answers inside the cluster; none for a Kafka stream (no Service).
pub(crate) fn url(spec: &ServingEndpointSpec, namespace: &str) -> Option<String> {
    match spec.endpoint.kind {
        EndpointKind::KafkaStream(_) => None,
        _ => Some(format!(
            "http://{}.{namespace}.svc:{SERVICE_PORT}",
            spec.name()
        )),
    }
}

/// The stable version and the canary with their weights. The canary's weight is what the
/// resource asks for; until the rollouts apply it, this records the desired split.
pub(crate) fn versions(
    spec: &ServingEndpointSpec,
    canary: Option<&Canary>,
) -> (VersionStatus, Option<VersionStatus>) {
    let weight = canary.map_or(0, |c| c.weight.min(100));
    let stable = VersionStatus {
        image: spec.image.clone(),
        model_version: spec.endpoint.model.version.clone(),
        weight: 100 - weight,
    };
    let canary = canary.map(|c| VersionStatus {
        image: c.image.clone().unwrap_or_else(|| spec.image.clone()),
        model_version: c
            .model_version
            .clone()
            .unwrap_or_else(|| spec.endpoint.model.version.clone()),
        weight,
    });
    (stable, canary)
}

/// The status after a successful apply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reconciled(
    previous: &ServingEndpointStatus,
    generation: Option<i64>,
    namespace: &str,
    spec: &ServingEndpointSpec,
    canary: Option<VersionStatus>,
    stable: VersionStatus,
    applied: &Applied,
    deployed: &EndpointStatus,
    now: &Time,
) -> ServingEndpointStatus {
    let mut conditions = previous.conditions.clone();
    let (ready, ready_reason, ready_message) = if !deployed.is_ready() {
        (
            false,
            reason::REPLICAS_NOT_READY,
            format!(
                "{} of {} replicas ready, {} of the current template",
                deployed.ready_replicas, deployed.replicas, deployed.updated_replicas
            ),
        )
    } else if deployed.replicas == 0 {
        (
            true,
            reason::SCALED_TO_ZERO,
            "no pods until a batch arrives".to_owned(),
        )
    } else {
        (
            true,
            reason::ALL_REPLICAS_READY,
            format!(
                "{} of {} replicas ready",
                deployed.ready_replicas, deployed.replicas
            ),
        )
    };
    set_condition(
        &mut conditions,
        &previous.conditions,
        READY,
        ready,
        ready_reason,
        ready_message,
        generation,
        now,
    );
    // The message says what this generation's apply did, so it is stable across the
    // reconciles that follow (which change nothing) only once nothing changes.
    let message = if applied.changed.is_empty() {
        "the cluster matches the spec".to_owned()
    } else {
        format!(
            "applied {}{}",
            applied.changed.join(", "),
            if applied.corrected_drift {
                " (changes made by hand were put back)"
            } else {
                ""
            }
        )
    };
    let keep_message = previous
        .condition(RECONCILED)
        .filter(|c| {
            c.status == "True"
                && applied.changed.is_empty()
                && previous.observed_generation == generation
        })
        .map(|c| c.message.clone());
    set_condition(
        &mut conditions,
        &previous.conditions,
        RECONCILED,
        true,
        reason::APPLIED,
        keep_message.unwrap_or(message),
        generation,
        now,
    );
    ServingEndpointStatus {
        observed_generation: generation,
        replicas: deployed.replicas,
        ready_replicas: deployed.ready_replicas,
        url: url(spec, namespace),
        stable: Some(stable),
        canary,
        conditions,
    }
}

/// The status after a failed reconcile: both conditions false with the failure's reason; the
/// replicas, versions and URL stay as last seen.
pub(crate) fn failed(
    previous: &ServingEndpointStatus,
    generation: Option<i64>,
    error: &Error,
    now: &Time,
) -> ServingEndpointStatus {
    let reason = reason_of(error);
    let message = error.to_string();
    let mut conditions = previous.conditions.clone();
    for type_ in [READY, RECONCILED] {
        set_condition(
            &mut conditions,
            &previous.conditions,
            type_,
            false,
            reason,
            message.clone(),
            generation,
            now,
        );
    }
    ServingEndpointStatus {
        observed_generation: generation,
        conditions,
        ..previous.clone()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use serving_core::{AutoscaleBounds, BackendSection, EndpointSpec, ModelRef};

    use super::*;

    fn spec() -> ServingEndpointSpec {
        let mut endpoint = EndpointSpec::new("iris", ModelRef::new("iris-knn", "1"));
        endpoint.autoscale = AutoscaleBounds::new(1, 3).unwrap();
        ServingEndpointSpec::new(endpoint, "registry.test/iris:1")
    }

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn deployed(replicas: u32, ready: u32) -> EndpointStatus {
        EndpointStatus {
            replicas,
            ready_replicas: ready,
            updated_replicas: ready,
            observed: true,
            bounds: None,
            model: None,
            image: None,
            canary: None,
        }
    }

    fn applied(changed: &[&str]) -> Applied {
        Applied {
            created: false,
            changed: changed.iter().map(|s| (*s).to_owned()).collect(),
            corrected_drift: false,
            replicas: 1,
        }
    }

    #[test]
    fn a_ready_endpoint_reports_replicas_versions_url_and_conditions() {
        let spec = spec();
        let (stable, canary) = versions(&spec, None);
        let status = reconciled(
            &ServingEndpointStatus::default(),
            Some(3),
            "models",
            &spec,
            canary,
            stable,
            &applied(&["Deployment/iris"]),
            &deployed(2, 2),
            &time(100),
        );
        assert_eq!((status.replicas, status.ready_replicas), (2, 2));
        assert_eq!(status.url.as_deref(), Some("http://iris.models.svc:80"));
        assert_eq!(status.observed_generation, Some(3));
        let stable = status.stable.as_ref().unwrap();
        assert_eq!(
            (
                stable.image.as_str(),
                stable.model_version.as_str(),
                stable.weight
            ),
            ("registry.test/iris:1", "1", 100)
        );
        let ready = status.condition(READY).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("True", reason::ALL_REPLICAS_READY, "2 of 2 replicas ready")
        );
        let reconciled = status.condition(RECONCILED).unwrap();
        assert_eq!(reconciled.message, "applied Deployment/iris");
        assert_eq!(reconciled.observed_generation, Some(3));
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_times_and_messages() {
        let spec = spec();
        let (stable, _) = versions(&spec, None);
        let first = reconciled(
            &ServingEndpointStatus::default(),
            Some(1),
            "ns",
            &spec,
            None,
            stable.clone(),
            &applied(&["ConfigMap/iris-spec"]),
            &deployed(1, 1),
            &time(100),
        );
        // The next reconcile changes nothing: the status is equal, so nothing is patched.
        let again = reconciled(
            &first,
            Some(1),
            "ns",
            &spec,
            None,
            stable.clone(),
            &applied(&[]),
            &deployed(1, 1),
            &time(200),
        );
        assert_eq!(again, first);
        // A pod goes down: Ready flips and its time moves; Reconciled keeps its own.
        let down = reconciled(
            &again,
            Some(1),
            "ns",
            &spec,
            None,
            stable,
            &applied(&[]),
            &deployed(1, 0),
            &time(300),
        );
        let ready = down.condition(READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reason::REPLICAS_NOT_READY);
        assert_eq!(ready.last_transition_time, time(300));
        assert_eq!(
            down.condition(RECONCILED).unwrap().last_transition_time,
            time(100)
        );
    }

    #[test]
    fn a_canary_takes_its_weight_from_the_stable_version() {
        let spec = spec();
        let canary = Canary {
            image: None,
            model_version: Some("2".into()),
            weight: 20,
        };
        let (stable, canary) = versions(&spec, Some(&canary));
        assert_eq!(stable.weight, 80);
        let canary = canary.unwrap();
        assert_eq!(
            (
                canary.image.as_str(),
                canary.model_version.as_str(),
                canary.weight
            ),
            ("registry.test/iris:1", "2", 20)
        );
    }

    #[test]
    fn a_batch_endpoint_at_zero_is_ready_and_a_stream_has_no_url() {
        let mut spec = spec();
        spec.endpoint.kind = EndpointKind::Batch(BackendSection::new());
        let (stable, _) = versions(&spec, None);
        let status = reconciled(
            &ServingEndpointStatus::default(),
            Some(1),
            "ns",
            &spec,
            None,
            stable,
            &applied(&[]),
            &deployed(0, 0),
            &time(1),
        );
        assert_eq!(
            status.condition(READY).unwrap().reason,
            reason::SCALED_TO_ZERO
        );
        spec.endpoint.kind = EndpointKind::KafkaStream(BackendSection::new());
        assert_eq!(url(&spec, "ns"), None);
    }

    #[test]
    fn failures_set_both_conditions_with_their_reason() {
        let cases = [
            (
                Error::InvalidSpec {
                    reason: "bad".into(),
                },
                reason::INVALID_SPEC,
            ),
            (
                Error::Conflict {
                    endpoint: "iris".into(),
                    reason: "x".into(),
                },
                reason::FIELD_MANAGER_CONFLICT,
            ),
            (
                K8sError::NamespaceNotFound {
                    namespace: "gone".into(),
                }
                .into_core("apply"),
                reason::NAMESPACE_NOT_FOUND,
            ),
            (
                K8sError::Refused {
                    verb: "apply",
                    object: "Deployment/iris".into(),
                    namespace: "ns".into(),
                    message: "forbidden".into(),
                }
                .into_core("apply"),
                reason::FORBIDDEN,
            ),
            (
                Error::Timeout {
                    after: std::time::Duration::from_secs(1),
                },
                reason::API_ERROR,
            ),
        ];
        for (error, expected) in cases {
            let status = failed(&ServingEndpointStatus::default(), Some(2), &error, &time(5));
            for type_ in [READY, RECONCILED] {
                let condition = status.condition(type_).unwrap();
                assert_eq!(condition.status, "False");
                assert_eq!(condition.reason, expected, "{error}");
                assert_eq!(condition.message, error.to_string());
            }
            assert_eq!(status.observed_generation, Some(2));
        }
    }
}
