//! What a [`Lifecycle`](super::Lifecycle) reports: its events, status and canary evaluations.

use std::time::SystemTime;

use serde::Serialize;

use super::CanaryPolicy;
use super::{CanaryDecision, RequestStats, RuleOutcome, ShadowComparison};
use crate::config::spec::ModelRef;
use crate::control::autoscale::AutoscaleBounds;

/// What happened to an endpoint's versions, and who did it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LifecycleEvent {
    /// When.
    #[serde(with = "epoch_secs")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub at: SystemTime,
    /// What.
    pub action: LifecycleAction,
    /// The version it concerns.
    pub version: String,
    /// The traffic share it set, when it set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Whether the automated canary decided it.
    pub automatic: bool,
    /// Why, or what else changed.
    pub detail: String,
}

/// The kinds of [`LifecycleEvent`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LifecycleAction {
    /// The endpoint started with this version.
    Deployed,
    /// A new version replaced the stable one for all traffic at once.
    Switched,
    /// A new version started as candidate with a share of traffic.
    CanaryStarted,
    /// The candidate's share changed.
    CanaryShare,
    /// The candidate became stable.
    Promoted,
    /// The candidate was dropped, or the stable version reverted.
    RolledBack,
    /// A version started receiving mirrored traffic.
    ShadowStarted,
    /// The shadow's share changed.
    ShadowShare,
    /// Mirroring stopped.
    ShadowStopped,
    /// The automated canary policy changed.
    PolicyChanged,
    /// The replica bounds changed.
    Autoscaled,
}

/// One evaluation of the automated canary's rules.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryEvaluation {
    /// When it ran.
    #[serde(with = "epoch_secs")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub at: SystemTime,
    /// The candidate evaluated.
    pub version: String,
    /// Each rule's result.
    pub outcomes: Vec<RuleOutcome>,
    /// What was decided.
    #[serde(flatten)]
    pub decision: CanaryDecision,
}

/// A version and the traffic it answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionTraffic {
    /// The version.
    pub version: String,
    /// Its share of traffic, in percent.
    pub percent: u8,
    /// Requests it answered since the endpoint started.
    pub requests_total: u64,
    /// Server-side failures among them.
    pub errors_total: u64,
    /// Its recent requests (the last 10,000).
    pub recent: RequestStats,
}

/// The shadow version and how it compares.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowStatus {
    /// Its share of mirrored traffic, in percent.
    pub percent: u8,
    /// Its requests.
    pub traffic: VersionTraffic,
    /// Its answers compared with those returned.
    pub comparison: ShadowComparison,
}

/// The automated canary's state for the current candidate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryStatus {
    /// The candidate watched.
    pub version: String,
    /// When the watch started.
    #[serde(with = "epoch_secs")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub since: SystemTime,
    /// The last evaluation, if one ran.
    pub last_evaluation: Option<CanaryEvaluation>,
}

/// Everything about an endpoint's versions at one moment.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LifecycleStatus {
    /// The endpoint.
    pub endpoint: String,
    /// The stable version's model.
    pub model: ModelRef,
    /// The stable version.
    pub stable: VersionTraffic,
    /// The candidate, when a rollout is in progress.
    pub candidate: Option<VersionTraffic>,
    /// The shadow, when one mirrors traffic.
    pub shadow: Option<ShadowStatus>,
    /// The automated canary's rules, when set.
    pub canary_policy: Option<CanaryPolicy>,
    /// The automated canary's state, while it watches a candidate.
    pub canary: Option<CanaryStatus>,
    /// Replica bounds.
    pub autoscale: AutoscaleBounds,
    /// Replicas applied by the autoscaler.
    pub replicas: u32,
    /// The most recent lifecycle events, newest last (at most 20).
    pub recent_events: Vec<LifecycleEvent>,
    /// What the transports serving the endpoint report, by transport (a Kafka stream's
    /// delivery mode and counters under `kafka`); see [`Lifecycle::attach_status`](super::Lifecycle::attach_status).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub transport: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Serializes a `SystemTime` as seconds since the Unix epoch, like the original product's
/// `event_time`.
pub(crate) mod epoch_secs {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::Serializer;

    /// Seconds since the epoch, with fractions.
    pub(crate) fn serialize<S: Serializer>(
        at: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        serializer.serialize_f64(secs)
    }
}
