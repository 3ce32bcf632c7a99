//! The Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) that splits an endpoint's
//! traffic between its stable and canary Services by weight. k8s-openapi has no type for it:
//! these are the fields `serving` sets, typed.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The Gateway API's group and version, and the plural of `HTTPRoute`.
pub(crate) const GATEWAY_API: (&str, &str) = ("gateway.networking.k8s.io/v1", "httproutes");

/// The spec of an `HTTPRoute`: what it attaches to and where it sends requests.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    derive = "PartialEq",
    namespaced,
    schema = "disabled",
    doc = "A Gateway API HTTPRoute: here, the weighted split of an endpoint's traffic."
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateway, or (GAMMA, service-mesh routing) the Service, the route attaches to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// The rules; `serving` writes one, matching every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// What a route attaches to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// The API group: `gateway.networking.k8s.io` for a Gateway, `""` for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` or `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its namespace; the route's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// A listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port of the Service (or Gateway listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentReference {
    /// A Gateway named `name`, in `namespace` (the route's when `None`).
    pub fn gateway(name: impl Into<String>, namespace: Option<String>) -> Self {
        ParentReference {
            group: Some("gateway.networking.k8s.io".to_owned()),
            kind: Some("Gateway".to_owned()),
            namespace,
            name: name.into(),
            section_name: None,
            port: None,
        }
    }

    /// The Service `name` on `port`: mesh (GAMMA) routing of the calls made to it.
    pub fn service(name: impl Into<String>, port: i32) -> Self {
        ParentReference {
            group: Some(String::new()),
            kind: Some("Service".to_owned()),
            namespace: None,
            name: name.into(),
            section_name: None,
            port: Some(port),
        }
    }
}

/// One rule of a route: its weighted backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Where matching requests go, split by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
}

/// A Service a rule sends a share of its requests to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// The Service's name.
    pub name: String,
    /// Its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Its share, relative to the rule's other backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

impl HttpRoute {
    /// The weight of the backend `service` (0 when the route does not send it anything).
    pub fn weight_of(&self, service: &str) -> u32 {
        self.spec
            .rules
            .iter()
            .flat_map(|rule| &rule.backend_refs)
            .filter(|backend| backend.name == service)
            .map(|backend| u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0))
            .sum()
    }
}
