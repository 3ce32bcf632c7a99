//! The [`Autoscaler`] trait: how many replicas of an endpoint run.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sync::Locked;

/// The lower and upper bound of an endpoint's replicas ("Number of Pods"). A minimum of zero
/// lets a batch endpoint sleep between batches.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleBounds {
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_replicas: u32,
}

impl AutoscaleBounds {
    /// Bounds from `min` to `max`; `min` may not exceed `max`, and `max` may not be zero.
    pub fn new(min_replicas: u32, max_replicas: u32) -> Result<Self> {
        let bounds = AutoscaleBounds {
            min_replicas,
            max_replicas,
        };
        bounds.validate()?;
        Ok(bounds)
    }

    /// Checks `min <= max` and `max > 0`.
    pub fn validate(&self) -> Result<()> {
        if self.max_replicas == 0 || self.min_replicas > self.max_replicas {
            return Err(Error::InvalidSetting {
                key: "autoscale".into(),
                value: format!("{}..{}", self.min_replicas, self.max_replicas),
                reason:
                    "min_replicas must not exceed max_replicas, and max_replicas must be at least 1"
                        .into(),
            });
        }
        Ok(())
    }

    /// `replicas` brought within the bounds.
    pub fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.min_replicas, self.max_replicas)
    }
}

impl Default for AutoscaleBounds {
    fn default() -> Self {
        AutoscaleBounds {
            min_replicas: 1,
            max_replicas: 1,
        }
    }
}

/// Sets how many replicas of an endpoint run: an in-process count here, a Kubernetes
/// Deployment's scale in `serving-k8s`.
///
/// # Contract
/// - `scale` brings `desired` within `bounds`, applies it, and returns the count applied;
///   `replicas` then returns that count.
/// - `scale` is idempotent: applying the same count twice changes nothing.
/// - Bounds that do not validate are refused with an error and change nothing.
/// - An endpoint never scaled has `bounds.min_replicas`, or zero when unknown to `replicas`.
#[async_trait]
pub trait Autoscaler: Debug + Send + Sync + 'static {
    /// Scales `endpoint` to `desired` within `bounds`; returns the count applied.
    async fn scale(&self, endpoint: &str, bounds: AutoscaleBounds, desired: u32) -> Result<u32>;

    /// The count currently applied to `endpoint`.
    async fn replicas(&self, endpoint: &str) -> Result<u32>;
}

/// A type-erased autoscaler.
pub type DynAutoscaler = dyn Autoscaler;

/// Forwards to the pointee, every method included.
macro_rules! forward_autoscaler {
    ($pointer:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<A: Autoscaler + ?Sized> Autoscaler for $pointer<A> {
            async fn scale(
                &self,
                endpoint: &str,
                bounds: AutoscaleBounds,
                desired: u32,
            ) -> Result<u32> {
                (**self).scale(endpoint, bounds, desired).await
            }

            async fn replicas(&self, endpoint: &str) -> Result<u32> {
                (**self).replicas(endpoint).await
            }
        }
    };
}

forward_autoscaler!(Arc);
forward_autoscaler!(Box);

/// Keeps replica counts in memory: the embedded default, where one process is one replica and
/// the count is what a supervisor would run.
#[derive(Debug, Default)]
pub struct InMemoryAutoscaler {
    replicas: Mutex<HashMap<String, u32>>,
}

impl InMemoryAutoscaler {
    /// No endpoints scaled yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Autoscaler for InMemoryAutoscaler {
    async fn scale(&self, endpoint: &str, bounds: AutoscaleBounds, desired: u32) -> Result<u32> {
        bounds.validate()?;
        let applied = bounds.clamp(desired);
        self.replicas.locked().insert(endpoint.to_owned(), applied);
        Ok(applied)
    }

    async fn replicas(&self, endpoint: &str) -> Result<u32> {
        Ok(self.replicas.locked().get(endpoint).copied().unwrap_or(0))
    }
}
