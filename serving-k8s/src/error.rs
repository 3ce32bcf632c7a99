//! The backend's own errors, with precise messages, converted into [`serving_core::Error`].

use serving_core::Error;

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub(crate) enum K8sError {
    #[error("namespace `{namespace}` does not exist")]
    NamespaceNotFound { namespace: String },
    #[error("the API server refused to {verb} {object} in namespace `{namespace}`: {message}")]
    Refused {
        verb: &'static str,
        object: String,
        namespace: String,
        message: String,
    },
    #[error("endpoint `{endpoint}` is not deployed in namespace `{namespace}`")]
    NotDeployed { endpoint: String, namespace: String },
    #[error("no canary of endpoint `{endpoint}` runs in namespace `{namespace}`: start one first")]
    NoCanary { endpoint: String, namespace: String },
    #[error("the cluster does not serve {kind} ({group_version}): {why}")]
    MissingApi {
        kind: &'static str,
        group_version: &'static str,
        why: &'static str,
    },
    #[error("the API server rejected {object}: {message}")]
    Invalid { object: String, message: String },
    #[error("{verb} {object} failed: {source}")]
    Api {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl K8sError {
    /// Classifies a failed request on `object` (`Deployment/name`).
    pub(crate) fn from_kube(
        error: kube::Error,
        verb: &'static str,
        object: &str,
        namespace: &str,
    ) -> Self {
        if let kube::Error::Api(status) = &error {
            let is_namespace = status
                .details
                .as_ref()
                .is_some_and(|details| details.kind == "namespaces");
            match status.code {
                404 if is_namespace => {
                    return K8sError::NamespaceNotFound {
                        namespace: namespace.to_owned(),
                    };
                }
                401 | 403 => {
                    return K8sError::Refused {
                        verb,
                        object: object.to_owned(),
                        namespace: namespace.to_owned(),
                        message: status.message.clone(),
                    };
                }
                400 | 422 => {
                    return K8sError::Invalid {
                        object: object.to_owned(),
                        message: status.message.clone(),
                    };
                }
                _ => {}
            }
        }
        K8sError::Api {
            verb,
            object: object.to_owned(),
            source: error,
        }
    }

    /// Into the shared error, for an operation on `endpoint`.
    pub(crate) fn into_core(self, action: impl Into<String>) -> Error {
        match self {
            K8sError::NotDeployed { endpoint, .. } => Error::EndpointNotFound { endpoint },
            // The action names the namespace.
            K8sError::NoCanary { endpoint, .. } => Error::Conflict {
                reason: format!(
                    "cannot {}: no canary runs; start one with `Deployer::canary`",
                    action.into()
                ),
                endpoint,
            },
            other => Error::Action {
                action: action.into(),
                source: Box::new(other),
            },
        }
    }
}

/// Whether a failed request was a 404 of the object itself (not of its namespace).
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 404
            && status.details.as_ref().is_none_or(|details| details.kind != "namespaces"))
}

/// Whether a failed request was a server-side apply conflict with another field manager.
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The messages of a conflict's causes (`conflict with "kubectl" using apps/v1`) and fields.
pub(crate) fn conflict_causes(error: &kube::Error) -> Vec<(String, String)> {
    match error {
        kube::Error::Api(status) => status
            .details
            .iter()
            .flat_map(|details| &details.causes)
            .map(|cause| (cause.message.clone(), cause.field.clone()))
            .collect(),
        _ => Vec::new(),
    }
}
