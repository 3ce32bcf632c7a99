//! [`Canary`]: a candidate version run beside the stable one, with a share of the traffic.
//!
//! In this branch only the type lives here, so the `ServingEndpoint` custom resource can carry
//! it; the rollouts themselves (`Deployer::canary`, `set_canary_weight`, `promote`,
//! `rollback`) are built beside it.

use serde::{Deserialize, Serialize};

/// A canary: the candidate's image and/or model version, and the share of the traffic it
/// takes (`weight`, in percent, 0 to 100); the stable version takes the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The candidate's container image; the stable image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The candidate's model version; the stable version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The candidate's share of the traffic, in percent (0 to 100).
    pub weight: u8,
}
