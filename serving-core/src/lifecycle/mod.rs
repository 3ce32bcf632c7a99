//! Model lifecycle: versions, zero-downtime updates, canary rollouts, rollback, shadow traffic
//! and automated canary decisions, through a [`Lifecycle`] handle on each
//! [`ModelEndpoint`](crate::ModelEndpoint).
//!
//! Every request takes a snapshot of the routing table (an `ArcSwap`), so an update never
//! blocks a request and a request in flight finishes on the version it started with: no
//! request fails because the model changed under it.

mod canary;
mod deployment;
mod registry;
mod routing;
pub(crate) mod stats;
mod status;
mod versions;

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

pub use canary::{CanaryDecision, CanaryMetric, CanaryPolicy, CanaryRule, RuleOutcome, Verdict};
pub use registry::ModelRegistry;
pub(crate) use routing::{Routed, Served};
pub(crate) use stats::Mirrored;
pub use stats::{RequestStats, ShadowComparison, outputs_agree};
pub use status::{
    CanaryEvaluation, CanaryStatus, LifecycleAction, LifecycleEvent, LifecycleStatus, ShadowStatus,
    VersionTraffic,
};
pub use versions::{ModelUpdate, ModelVersion, VersionState};

use crate::config::spec::{EndpointSpec, ModelRef};
use crate::control::actions::{ActionSettings, TriggerSpec};
use crate::control::autoscale::{AutoscaleBounds, DynAutoscaler};
use crate::control::trigger::DynTrigger;
use crate::control::triggers::{TriggerStatus, Triggers};
use crate::error::{Error, Result};
use crate::model::predictor::DynPredictor;
use crate::observe::metrics::{DynMetricHistory, DynMetricSink};
use crate::sync::Locked;
use deployment::spawn_watch;
use routing::{RoutingTable, Share};
use stats::{ShadowTracker, VersionStats};

/// Requests kept per version for canary rules and status (the most recent ones).
const STATS_PER_VERSION: usize = 10_000;
/// Lifecycle events kept for the status API.
const EVENTS_KEPT: usize = 1_000;

/// The control surface of one endpoint's model versions: update, canary share, promote,
/// rollback, shadow, automated canary, autoscale bounds, status and history.
///
/// Cheap to clone: every clone controls the same endpoint. Operations are serialized; each
/// takes effect for requests that start after it returns.
///
/// ```
/// use serving_core::{predictor_fn, Endpoint, ModelEndpoint, ModelUpdate, PredictRequest, Result, json};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let endpoint = ModelEndpoint::builder("double", predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) }))
///     .build()?;
/// let lifecycle = endpoint.lifecycle().clone();
///
/// // Roll version 2 out to 20 % of traffic, raise it, promote it.
/// let v2 = lifecycle.update_model(
///     ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> { Ok(x + x) })).description("faster"),
///     Some(20),
/// )?;
/// assert_eq!(v2, "2");
/// lifecycle.set_canary(50)?;
/// lifecycle.promote()?;
/// let answer = endpoint.predict(PredictRequest::new(json!(2.0))).await?;
/// assert_eq!(&*answer.model_version, "2");
///
/// // Changed our mind: back to version 1 for everyone.
/// lifecycle.rollback()?;
/// assert_eq!(lifecycle.stable_version(), "1");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Deployment>,
}

struct Deployment {
    endpoint: Arc<str>,
    routing: ArcSwap<RoutingTable>,
    state: Mutex<State>,
    stats: VersionStats,
    shadows: ShadowTracker,
    metrics: Arc<DynMetricSink>,
    history: Arc<DynMetricHistory>,
    registry: Option<Arc<ModelRegistry>>,
    autoscaler: Arc<DynAutoscaler>,
    retain: usize,
    /// What transports attached to the status ([`Lifecycle::attach_status`]).
    transport_status: Mutex<Vec<(String, TransportStatus)>>,
    triggers: Triggers,
}

/// Reports a transport's part of the status.
type TransportStatus = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

struct State {
    versions: Vec<Entry>,
    /// Ids that were made stable, oldest first; the last is the stable version.
    stable_history: Vec<String>,
    candidate: Option<(String, u8)>,
    shadow: Option<(String, u8)>,
    autoscale: AutoscaleBounds,
    policy: Option<CanaryPolicy>,
    watch: Option<Watch>,
    generation: u64,
    events: VecDeque<LifecycleEvent>,
}

struct Entry {
    record: ModelVersion,
    served: Option<Arc<Served>>,
}

/// The automated canary's view of the current candidate.
struct Watch {
    candidate: String,
    generation: u64,
    started: Instant,
    started_at: SystemTime,
    held_since: Option<Instant>,
    last: Option<CanaryEvaluation>,
    /// Whether its timer task runs.
    spawned: bool,
}

/// A lifecycle's routing table at one moment ([`Lifecycle::snapshot`]).
#[derive(Debug, Clone)]
pub(crate) struct RoutingSnapshot {
    /// The lifecycle it was taken of, by address: a snapshot only routes on its own.
    owner: usize,
    table: Arc<RoutingTable>,
}

/// A [`Lifecycle`] that does not keep its endpoint alive.
#[derive(Clone)]
pub(crate) struct WeakLifecycle(Weak<Deployment>);

impl WeakLifecycle {
    /// The lifecycle, while the endpoint lives.
    pub(crate) fn upgrade(&self) -> Option<Lifecycle> {
        self.0.upgrade().map(|inner| Lifecycle { inner })
    }
}

/// What `Lifecycle::new` needs.
pub(crate) struct LifecycleParts {
    pub(crate) spec: EndpointSpec,
    pub(crate) predictor: Arc<DynPredictor>,
    pub(crate) description: String,
    pub(crate) metrics: Arc<DynMetricSink>,
    pub(crate) history: Arc<DynMetricHistory>,
    pub(crate) registry: Option<Arc<ModelRegistry>>,
    pub(crate) autoscaler: Arc<DynAutoscaler>,
    pub(crate) retain: usize,
    pub(crate) action_settings: ActionSettings,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.inner.routing.load();
        f.debug_struct("Lifecycle")
            .field("endpoint", &self.inner.endpoint)
            .field("stable", &table.stable.id)
            .field(
                "candidate",
                &table.candidate.as_ref().map(|c| (&c.served.id, c.percent)),
            )
            .field(
                "shadow",
                &table.shadow.as_ref().map(|s| (&s.served.id, s.percent)),
            )
            .finish()
    }
}

impl Lifecycle {
    pub(crate) fn new(parts: LifecycleParts) -> Self {
        let LifecycleParts {
            spec,
            predictor,
            description,
            metrics,
            history,
            registry,
            autoscaler,
            retain,
            action_settings,
        } = parts;
        let id: Arc<str> = Arc::from(spec.model.version.as_str());
        let served = Arc::new(Served {
            id: Arc::clone(&id),
            model: Arc::from(spec.model.name.as_str()),
            predictor,
        });
        let now = SystemTime::now();
        let mut state = State {
            versions: vec![Entry {
                record: ModelVersion {
                    id: id.to_string(),
                    created_at: now,
                    description,
                    state: VersionState::Stable,
                    loaded: true,
                    spec: spec.clone(),
                },
                served: Some(Arc::clone(&served)),
            }],
            stable_history: vec![id.to_string()],
            candidate: None,
            shadow: None,
            autoscale: spec.autoscale,
            policy: spec.canary.clone(),
            watch: None,
            generation: 0,
            events: VecDeque::new(),
        };
        state.event(LifecycleAction::Deployed, &id, None, false, String::new());
        Lifecycle {
            inner: Arc::new(Deployment {
                endpoint: Arc::from(spec.name.as_str()),
                routing: ArcSwap::from_pointee(RoutingTable {
                    stable: served,
                    candidate: None,
                    shadow: None,
                }),
                state: Mutex::new(state),
                stats: VersionStats::new(STATS_PER_VERSION),
                shadows: ShadowTracker::default(),
                metrics,
                history,
                registry,
                autoscaler,
                retain: retain.max(1),
                transport_status: Mutex::default(),
                triggers: Triggers::new(action_settings),
            }),
        }
    }

    // --- the request path -------------------------------------------------------------------

    /// The routing table now, for a transport that takes items in order (the runner) to route
    /// each item when it takes it: a version switch then falls between two items in input
    /// order, however the predictions that follow are scheduled.
    pub(crate) fn snapshot(&self) -> RoutingSnapshot {
        RoutingSnapshot {
            owner: Arc::as_ptr(&self.inner) as usize,
            table: self.inner.routing.load_full(),
        }
    }

    /// Where one request goes, from `snapshot` when it was taken of this lifecycle, else from
    /// a snapshot of the routing table now.
    pub(crate) fn route(
        &self,
        snapshot: Option<&RoutingSnapshot>,
        key: Option<&str>,
        version: Option<&str>,
    ) -> Result<Routed> {
        let owner = Arc::as_ptr(&self.inner) as usize;
        let routed = match snapshot.filter(|s| s.owner == owner) {
            Some(snapshot) => snapshot.table.route(key, version),
            None => self.inner.routing.load().route(key, version),
        };
        routed.ok_or_else(|| Error::VersionNotFound {
            endpoint: self.inner.endpoint.to_string(),
            version: version.unwrap_or_default().to_owned(),
        })
    }

    /// Counts one request that ended at `ended`, under the version that answered it (none
    /// when no version did).
    pub(crate) fn record(&self, event: &crate::RequestEvent, ended: std::time::Instant) {
        self.record_all(std::iter::once((event, ended)));
    }

    /// Counts requests as [`Lifecycle::record`] does, under one lock.
    pub(crate) fn record_all<'e>(
        &self,
        requests: impl IntoIterator<Item = (&'e crate::RequestEvent, std::time::Instant)>,
    ) {
        self.inner.stats.record_all(
            requests
                .into_iter()
                .filter(|(event, _)| !event.model_version.is_empty())
                .map(|(event, ended)| (&*event.model_version, event.outcome, event.latency, ended)),
        );
    }

    /// Compares one mirrored answer with the one returned.
    pub(crate) fn record_mirror(&self, version: &str, mirrored: &Mirrored<'_>) {
        self.inner.shadows.record(version, mirrored);
    }

    /// Counts a mirror skipped for lack of capacity.
    pub(crate) fn mirror_skipped(&self, version: &str) {
        self.inner.shadows.skipped(version);
    }

    // --- reading ------------------------------------------------------------------------------

    /// The endpoint's name.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The stable version's id.
    pub fn stable_version(&self) -> String {
        self.inner.routing.load().stable.id.to_string()
    }

    /// The candidate's id and share, while a rollout is in progress.
    pub fn candidate(&self) -> Option<(String, u8)> {
        self.inner.state.locked().candidate.clone()
    }

    /// The shadow's id and share, while one mirrors traffic.
    pub fn shadow(&self) -> Option<(String, u8)> {
        self.inner.state.locked().shadow.clone()
    }

    /// The versions a request can address now (stable, candidate, shadow).
    pub fn routable_versions(&self) -> Vec<String> {
        let table = self.inner.routing.load();
        std::iter::once(&table.stable)
            .chain(table.candidate.as_ref().map(|c| &c.served))
            .chain(table.shadow.as_ref().map(|s| &s.served))
            .map(|served| served.id.to_string())
            .collect()
    }

    /// Every version ever deployed, oldest first.
    pub fn versions(&self) -> Vec<ModelVersion> {
        self.inner
            .state
            .locked()
            .versions
            .iter()
            .map(|entry| ModelVersion {
                loaded: entry.served.is_some(),
                ..entry.record.clone()
            })
            .collect()
    }

    /// One version of the history.
    pub fn version(&self, id: &str) -> Option<ModelVersion> {
        self.versions().into_iter().find(|v| v.id == id)
    }

    /// Every lifecycle event kept (the last 1,000), oldest first.
    pub fn events(&self) -> Vec<LifecycleEvent> {
        self.inner.state.locked().events.iter().cloned().collect()
    }

    /// The recent requests of `version`.
    pub fn stats(&self, version: &str) -> RequestStats {
        self.inner.stats.window(version, None)
    }

    /// How `version`'s mirrored answers compare with those returned.
    pub fn shadow_comparison(&self, version: &str) -> ShadowComparison {
        self.inner.shadows.comparison(version)
    }

    /// The registry that builds registered versions, when the endpoint has one.
    pub fn registry(&self) -> Option<&Arc<ModelRegistry>> {
        self.inner.registry.as_ref()
    }

    /// The automated canary's rules, when set.
    pub fn canary_policy(&self) -> Option<CanaryPolicy> {
        self.inner.state.locked().policy.clone()
    }

    /// The replica bounds.
    pub fn autoscale(&self) -> AutoscaleBounds {
        self.inner.state.locked().autoscale
    }

    /// The replicas the autoscaler applied.
    pub async fn replicas(&self) -> Result<u32> {
        self.inner.autoscaler.replicas(&self.inner.endpoint).await
    }

    /// Everything about the endpoint's versions now.
    pub async fn status(&self) -> LifecycleStatus {
        let replicas = self.replicas().await.unwrap_or(0);
        // Reported before the state is locked: a report may read the lifecycle.
        let reports = self.inner.transport_status.locked().clone();
        let transport = reports
            .iter()
            .map(|(name, report)| (name.clone(), report()))
            .collect();
        let state = self.inner.state.locked();
        let traffic = |version: &str, percent: u8| {
            let (requests_total, errors_total) = self.inner.stats.totals(version);
            VersionTraffic {
                version: version.to_owned(),
                percent,
                requests_total,
                errors_total,
                recent: self.inner.stats.window(version, None),
            }
        };
        let candidate_percent = state.candidate.as_ref().map_or(0, |c| c.1);
        let stable = state.stable();
        LifecycleStatus {
            endpoint: self.inner.endpoint.to_string(),
            model: state.entry(stable).map_or_else(
                || ModelRef::new("", stable),
                |e| e.record.spec.model.clone(),
            ),
            stable: traffic(stable, 100 - candidate_percent),
            candidate: state
                .candidate
                .as_ref()
                .map(|(version, percent)| traffic(version, *percent)),
            shadow: state
                .shadow
                .as_ref()
                .map(|(version, percent)| ShadowStatus {
                    percent: *percent,
                    traffic: traffic(version, *percent),
                    comparison: self.inner.shadows.comparison(version),
                }),
            canary_policy: state.policy.clone(),
            canary: state.watch.as_ref().map(|watch| CanaryStatus {
                version: watch.candidate.clone(),
                since: watch.started_at,
                last_evaluation: watch.last.clone(),
            }),
            autoscale: state.autoscale,
            replicas,
            recent_events: state.events.iter().rev().take(20).rev().cloned().collect(),
            transport,
        }
    }

    /// Adds a transport's part to [`Lifecycle::status`] (and so to the admin API's status),
    /// under `name`: `report` is called on each status read. A second report under the same
    /// name replaces the first.
    pub fn attach_status(
        &self,
        name: impl Into<String>,
        report: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) {
        let name = name.into();
        let mut reports = self.inner.transport_status.locked();
        reports.retain(|(n, _)| *n != name);
        reports.push((name, Arc::new(report)));
    }

    /// The spec to deploy this endpoint again: the stable version's spec with the current
    /// replica bounds and canary policy. A candidate or shadow in progress is not part of it.
    pub fn export_spec(&self) -> EndpointSpec {
        let state = self.inner.state.locked();
        let mut spec = state
            .entry(state.stable())
            .expect("the stable version is in the history")
            .record
            .spec
            .clone();
        spec.autoscale = state.autoscale;
        spec.canary = state.policy.clone();
        spec.triggers = self.inner.triggers.specs();
        spec
    }

    // --- triggers -----------------------------------------------------------------------------

    /// Adds a trigger and starts polling it on its interval (when a Tokio runtime runs; see
    /// [`TriggerState::NotRunning`](crate::TriggerState::NotRunning)): an email, a webhook, or
    /// a [`CallbackTrigger`](crate::CallbackTrigger) that retrains and rolls out a canary
    /// through this lifecycle. Returns its id. Triggers added this way are not part of the
    /// exported spec (code is not a spec); [`Lifecycle::add_trigger_spec`]'s are.
    ///
    /// A callback that "retrains" when a logged metric drifts and rolls the new version out
    /// to a fifth of the traffic, with zero downtime (the stable version answers the rest):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use serving_core::{
    ///     log_metric, predictor_fn, CallbackTrigger, Comparison, ModelEndpoint, ModelUpdate,
    ///     Result, TriggerRule,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
    /// let model = predictor_fn(|x: f64| -> Result<f64> {
    ///     log_metric("drift", x);
    ///     Ok(x)
    /// });
    /// let endpoint = ModelEndpoint::builder("scorer", model).build()?;
    /// let lifecycle = endpoint.lifecycle().clone();
    /// let rule = TriggerRule::new("drift", "drift", Comparison::GreaterThan, 10.0, 60)
    ///     .with_min_events(100);
    /// let retrain = CallbackTrigger::new_async(rule, move |alert| {
    ///     let lifecycle = lifecycle.clone();
    ///     async move {
    ///         // Fit a new model here (on the feedback dataset, for example).
    ///         let shift = alert.last_value;
    ///         let retrained = predictor_fn(move |x: f64| -> Result<f64> { Ok(x - shift) });
    ///         lifecycle.update_model(ModelUpdate::new(retrained), Some(20))?;
    ///         Ok(())
    ///     }
    /// });
    /// let id = endpoint.lifecycle().add_trigger(Arc::new(retrain))?;
    /// assert_eq!(endpoint.lifecycle().triggers()[0].id, id);
    /// # Ok(()) }
    /// ```
    ///
    /// The closure holds the lifecycle, so the endpoint lives as long as the trigger does
    /// (until [`Lifecycle::remove_trigger`]).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the rule's field that is wrong.
    pub fn add_trigger(&self, trigger: Arc<DynTrigger>) -> Result<String> {
        self.inner.triggers.add(self, trigger, None)
    }

    /// Adds a trigger described by a spec (its action built with the endpoint's
    /// [`ActionSettings`]), kept in the exported spec. Returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming the field that is wrong, or the action that cannot be
    /// built (an email without an SMTP server).
    pub fn add_trigger_spec(&self, spec: TriggerSpec) -> Result<String> {
        let trigger = spec.build(&self.inner.triggers.settings())?;
        self.inner.triggers.add(self, trigger, Some(spec))
    }

    /// Stops and removes trigger `id`.
    ///
    /// # Errors
    /// [`Error::TriggerNotFound`] when the endpoint has no such trigger.
    pub fn remove_trigger(&self, id: &str) -> Result<()> {
        self.inner.triggers.remove(&self.inner.endpoint, id)
    }

    /// Every trigger with its state and recent alerts, in the order added.
    pub fn triggers(&self) -> Vec<TriggerStatus> {
        self.inner.triggers.statuses()
    }

    /// What the actions of triggers added from now on are configured with.
    pub fn set_action_settings(&self, settings: ActionSettings) {
        self.inner.triggers.set_settings(settings);
    }

    // --- changing -----------------------------------------------------------------------------

    /// Deploys a new version. With `canary_percent`, it becomes the candidate and answers that
    /// share of traffic beside the stable version; without, it replaces the stable version for
    /// all new requests at once while requests in flight finish on the old one.
    ///
    /// Refused with [`Error::Conflict`] while another candidate is in progress, and when the
    /// version id is taken. Returns the new version's id.
    pub fn update_model(&self, update: ModelUpdate, canary_percent: Option<u8>) -> Result<String> {
        let percent = canary_percent.map(|p| self.check_percent(p)).transpose()?;
        self.change(|state, this| {
            if let Some((candidate, _)) = &state.candidate {
                return Err(this.conflict(format!(
                    "version {candidate} is still a candidate; promote or roll it back first"
                )));
            }
            let id = this.add_version(state, update, VersionState::Candidate)?;
            match percent {
                Some(percent) => {
                    state.candidate = Some((id.clone(), percent));
                    state.start_watch();
                    state.event(LifecycleAction::CanaryStarted, &id, Some(percent), false, String::new());
                    tracing::info!(endpoint = %this.endpoint, model_version = %id, percent, "canary started");
                }
                None => {
                    let previous = state.stable().to_owned();
                    state.set_state(&previous, VersionState::Retired);
                    state.make_stable(&id);
                    state.event(
                        LifecycleAction::Switched,
                        &id,
                        Some(100),
                        false,
                        format!("replaces {previous}"),
                    );
                    tracing::info!(endpoint = %this.endpoint, model_version = %id, previous = %previous, "model switched");
                }
            }
            Ok(id)
        })
    }

    /// Sets the candidate's share of traffic, 0 to 100 percent.
    pub fn set_canary(&self, percent: u8) -> Result<()> {
        let percent = self.check_percent(percent)?;
        self.change(|state, this| {
            let Some((candidate, share)) = &mut state.candidate else {
                return Err(this.conflict("there is no candidate; start one with update_model".into()));
            };
            *share = percent;
            let candidate = candidate.clone();
            state.event(LifecycleAction::CanaryShare, &candidate, Some(percent), false, String::new());
            tracing::info!(endpoint = %this.endpoint, model_version = %candidate, percent, "canary share set");
            Ok(())
        })
    }

    /// Makes the candidate stable for all traffic; returns its id.
    pub fn promote(&self) -> Result<String> {
        self.change(|state, this| this.promote_locked(state, false, String::new()))
    }

    /// Rolls back: drops the candidate when there is one, else reverts the stable version to the
    /// one that was stable before it ("the previous model will then be used"). Returns the id
    /// of the version that is stable afterwards.
    pub fn rollback(&self) -> Result<String> {
        self.change(|state, this| {
            if state.candidate.is_some() {
                return this.drop_candidate(state, false, String::new());
            }
            if state.stable_history.len() < 2 {
                return Err(this.conflict(format!(
                    "version {} is the only version that was ever stable; nothing to roll back to",
                    state.stable()
                )));
            }
            let previous = state.stable_history[state.stable_history.len() - 2].clone();
            this.load(state, &previous)?;
            let current = state.stable_history.pop().expect("two entries");
            state.set_state(&current, VersionState::RolledBack);
            state.set_state(&previous, VersionState::Stable);
            state.event(LifecycleAction::RolledBack, &current, None, false, format!("{previous} is stable again"));
            tracing::warn!(endpoint = %this.endpoint, model_version = %current, stable = %previous, "rolled back");
            Ok(previous)
        })
    }

    /// Rolls back to a named version of the history: it becomes stable for all traffic and the
    /// candidate, if any, is dropped. A version no longer in memory is rebuilt from the
    /// endpoint's registry.
    pub fn rollback_to(&self, version: &str) -> Result<()> {
        self.change(|state, this| {
            if state.entry(version).is_none() {
                return Err(Error::VersionNotFound {
                    endpoint: this.endpoint.to_string(),
                    version: version.to_owned(),
                });
            }
            if state.candidate.as_ref().is_some_and(|(c, _)| c == version) {
                return Err(this.conflict(format!("version {version} is the candidate; promote it instead")));
            }
            if state.shadow.as_ref().is_some_and(|(s, _)| s == version) {
                return Err(this.conflict(format!("version {version} is the shadow; stop the shadow first")));
            }
            this.load(state, version)?;
            if state.candidate.is_some() {
                this.drop_candidate(state, false, format!("rollback to {version}"))?;
            }
            let current = state.stable().to_owned();
            if current != version {
                state.set_state(&current, VersionState::RolledBack);
                state.make_stable(version);
                state.event(LifecycleAction::RolledBack, &current, None, false, format!("{version} is stable again"));
                tracing::warn!(endpoint = %this.endpoint, model_version = %current, stable = %version, "rolled back");
            }
            Ok(())
        })
    }

    /// Deploys a new version as the shadow: `percent` of requests are mirrored to it, its
    /// answers recorded (prediction records, metrics, comparison) but never returned. Replaces
    /// any earlier shadow. Returns the new version's id.
    pub fn shadow_model(&self, update: ModelUpdate, percent: u8) -> Result<String> {
        let percent = self.check_percent(percent)?;
        self.change(|state, this| {
            if let Some((previous, _)) = state.shadow.take() {
                state.set_state(&previous, VersionState::ShadowEnded);
            }
            let id = this.add_version(state, update, VersionState::Shadow)?;
            state.shadow = Some((id.clone(), percent));
            state.event(LifecycleAction::ShadowStarted, &id, Some(percent), false, String::new());
            tracing::info!(endpoint = %this.endpoint, model_version = %id, percent, "shadow started");
            Ok(id)
        })
    }

    /// Sets the shadow's share of mirrored traffic.
    pub fn set_shadow(&self, percent: u8) -> Result<()> {
        let percent = self.check_percent(percent)?;
        self.change(|state, this| {
            let Some((shadow, share)) = &mut state.shadow else {
                return Err(this.conflict("there is no shadow; start one with shadow_model".into()));
            };
            *share = percent;
            let shadow = shadow.clone();
            state.event(
                LifecycleAction::ShadowShare,
                &shadow,
                Some(percent),
                false,
                String::new(),
            );
            Ok(())
        })
    }

    /// Stops mirroring; the shadow's comparison stays readable.
    pub fn stop_shadow(&self) -> Result<()> {
        self.change(|state, this| {
            let Some((shadow, _)) = state.shadow.take() else {
                return Err(this.conflict("there is no shadow".into()));
            };
            state.set_state(&shadow, VersionState::ShadowEnded);
            state.event(
                LifecycleAction::ShadowStopped,
                &shadow,
                None,
                false,
                String::new(),
            );
            Ok(())
        })
    }

    /// Sets or clears the automated canary's rules. A candidate in progress is watched under
    /// the new rules from now on.
    pub fn set_canary_policy(&self, policy: Option<CanaryPolicy>) -> Result<()> {
        if let Some(policy) = &policy {
            policy.validate()?;
        }
        self.change(|state, _| {
            let detail = policy.as_ref().map_or_else(
                || "automated canary off".to_owned(),
                |p| format!("{} rule(s), hold {} ms", p.rules.len(), p.hold_ms),
            );
            state.policy = policy;
            state.watch = None;
            if state.candidate.is_some() {
                state.start_watch();
            }
            let stable = state.stable().to_owned();
            state.event(LifecycleAction::PolicyChanged, &stable, None, false, detail);
            Ok(())
        })
    }

    /// Sets the replica bounds and scales within them; returns the replicas applied.
    pub async fn set_autoscale(&self, bounds: AutoscaleBounds) -> Result<u32> {
        bounds.validate()?;
        let current = self.replicas().await.unwrap_or(0);
        let applied = self
            .inner
            .autoscaler
            .scale(
                &self.inner.endpoint,
                bounds,
                current.max(bounds.min_replicas),
            )
            .await?;
        let mut state = self.inner.state.locked();
        state.autoscale = bounds;
        let stable = state.stable().to_owned();
        state.event(
            LifecycleAction::Autoscaled,
            &stable,
            None,
            false,
            format!(
                "replicas {}..{}, {applied} running",
                bounds.min_replicas, bounds.max_replicas
            ),
        );
        Ok(applied)
    }

    /// Evaluates the automated canary's rules now, acting on the result (promote or roll
    /// back) as the periodic evaluation would. `None` without a policy or a candidate.
    pub fn evaluate_canary(&self) -> Option<CanaryEvaluation> {
        self.evaluate(None)
    }

    // --- internals ----------------------------------------------------------------------------

    fn check_percent(&self, percent: u8) -> Result<u8> {
        if percent > 100 {
            return Err(Error::InvalidSetting {
                key: "percent".into(),
                value: percent.to_string(),
                reason: "a traffic share is 0 to 100 percent".into(),
            });
        }
        Ok(percent)
    }

    /// Applies `change` under the state lock, then publishes the new routing table and starts
    /// the automated canary if the change asked for it. A failed change changes nothing.
    fn change<R>(&self, change: impl FnOnce(&mut State, &Deployment) -> Result<R>) -> Result<R> {
        let mut state = self.inner.state.locked();
        let outcome = change(&mut state, &self.inner)?;
        self.inner.prune(&mut state);
        self.inner.routing.store(Arc::new(self.inner.table(&state)));
        let watch = state.watch.as_mut().filter(|w| !w.spawned).map(|w| {
            w.spawned = true;
            w.generation
        });
        let interval = state.policy.as_ref().map(CanaryPolicy::interval_duration);
        drop(state);
        if let (Some(generation), Some(interval)) = (watch, interval) {
            spawn_watch(Arc::downgrade(&self.inner), generation, interval);
        }
        Ok(outcome)
    }

    /// One evaluation; `generation` ties it to the watch that scheduled it.
    fn evaluate(&self, generation: Option<u64>) -> Option<CanaryEvaluation> {
        let (candidate, policy, since, since_at) = {
            let state = self.inner.state.locked();
            let watch = state.watch.as_ref()?;
            if generation.is_some_and(|g| g != watch.generation) {
                return None;
            }
            let policy = state.policy.clone()?;
            let (mut since, mut since_at) = (watch.started, watch.started_at);
            if let Some(window) = policy.window_ms.map(Duration::from_millis) {
                since = since.max(Instant::now().checked_sub(window).unwrap_or(since));
                since_at = SystemTime::now()
                    .checked_sub(window)
                    .map_or(since_at, |start| since_at.max(start));
            }
            (watch.candidate.clone(), policy, since, since_at)
        };
        // Measured outside the lock: a custom metric reads the metric sink.
        let requests = self.inner.stats.window(&candidate, Some(since));
        let outcomes: Vec<RuleOutcome> = policy
            .rules
            .iter()
            .map(|rule| {
                let (value, events) = match &rule.metric {
                    CanaryMetric::ErrorRate => (Some(requests.error_rate), requests.requests),
                    CanaryMetric::P95LatencyMs => {
                        (Some(requests.p95_latency_ms), requests.requests)
                    }
                    CanaryMetric::MeanLatencyMs => {
                        (Some(requests.mean_latency_ms), requests.requests)
                    }
                    CanaryMetric::Custom(key) => self.custom_metric(&candidate, key, since_at),
                };
                let value = value.filter(|_| events > 0);
                RuleOutcome {
                    verdict: rule.judge(value, events),
                    rule: rule.clone(),
                    value,
                    events,
                }
            })
            .collect();

        let mut state = self.inner.state.locked();
        let watch = state.watch.as_mut()?;
        if watch.candidate != candidate || generation.is_some_and(|g| g != watch.generation) {
            return None;
        }
        let now = Instant::now();
        if outcomes.iter().all(|o| o.verdict == Verdict::Holds) {
            watch.held_since.get_or_insert(now);
        } else {
            watch.held_since = None;
        }
        let held = watch.held_since.map(|since| now - since);
        let evaluation = CanaryEvaluation {
            at: SystemTime::now(),
            version: candidate.clone(),
            decision: canary::decide(&outcomes, held, policy.hold()),
            outcomes,
        };
        watch.last = Some(evaluation.clone());
        let acted = match &evaluation.decision {
            CanaryDecision::Wait | CanaryDecision::Hold { .. } => {
                tracing::debug!(endpoint = %self.inner.endpoint, model_version = %candidate, decision = ?evaluation.decision, "automated canary evaluated");
                return Some(evaluation);
            }
            CanaryDecision::Promote => {
                let reason = format!("every rule held for {} ms", policy.hold_ms);
                tracing::info!(endpoint = %self.inner.endpoint, model_version = %candidate, %reason, "automated canary: promote");
                self.inner
                    .promote_locked(&mut state, true, reason)
                    .map(drop)
            }
            CanaryDecision::Rollback { reason } => {
                tracing::warn!(endpoint = %self.inner.endpoint, model_version = %candidate, %reason, "automated canary: roll back");
                self.inner
                    .drop_candidate(&mut state, true, reason.clone())
                    .map(drop)
            }
        };
        if let Err(error) = acted {
            tracing::error!(endpoint = %self.inner.endpoint, model_version = %candidate, %error, "automated canary could not act");
        }
        self.inner.prune(&mut state);
        self.inner.routing.store(Arc::new(self.inner.table(&state)));
        Some(evaluation)
    }

    /// The latency and outcome of each request in `[from, to)` answered by `version`, or by
    /// the versions that take traffic (stable and candidate; a shadow's mirrors are not
    /// answers) when `None`: what triggers' built-in measurements read.
    pub(crate) fn requests_between(
        &self,
        version: Option<&str>,
        from: Instant,
        to: Instant,
    ) -> Vec<(Duration, crate::Outcome)> {
        let versions = match version {
            Some(version) => vec![version.to_owned()],
            None => {
                let mut versions = vec![self.stable_version()];
                versions.extend(self.candidate().map(|(version, _)| version));
                versions
            }
        };
        versions
            .iter()
            .flat_map(|version| self.inner.stats.between(version, from, to))
            .collect()
    }

    /// What receives the endpoint's measurements (and its triggers' alerts).
    pub(crate) fn metric_sink(&self) -> &Arc<DynMetricSink> {
        &self.inner.metrics
    }

    /// A handle that does not keep the endpoint alive: what its background tasks hold.
    pub(crate) fn downgrade(&self) -> WeakLifecycle {
        WeakLifecycle(Arc::downgrade(&self.inner))
    }

    /// What reads back the endpoint's custom metrics.
    pub(crate) fn metric_history(&self) -> &Arc<DynMetricHistory> {
        &self.inner.history
    }

    /// The mean of a custom metric logged by `version` since `since`, and how many samples.
    fn custom_metric(&self, version: &str, key: &str, since: SystemTime) -> (Option<f64>, u64) {
        let samples = self.inner.history.samples(&self.inner.endpoint, key, since);
        let values: Vec<f64> = samples
            .iter()
            .filter(|s| s.model_version == version)
            .map(|s| s.value)
            .collect();
        let count = values.len() as u64;
        let mean = (count > 0).then(|| values.iter().sum::<f64>() / count as f64);
        (mean, count)
    }

    fn watching(&self, generation: u64) -> bool {
        self.inner
            .state
            .locked()
            .watch
            .as_ref()
            .is_some_and(|w| w.generation == generation)
    }
}

#[cfg(test)]
mod tests;
