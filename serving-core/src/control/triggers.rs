//! The trigger runner: every trigger of an endpoint polled on its own interval, its state,
//! and the alerts it fired (see [`Lifecycle::add_trigger`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::control::actions::{ActionSettings, TriggerSpec};
use crate::control::trigger::{Alert, DynTrigger, TriggerMetric, TriggerRule, rfc3339};
use crate::error::{Error, Result};
use crate::lifecycle::stats::percentile;
use crate::lifecycle::{Lifecycle, WeakLifecycle};
use crate::sync::Locked;

/// Alerts kept per trigger, newest last.
pub const ALERTS_KEPT: usize = 50;

/// Whether a trigger may fire.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerState {
    /// The next poll that meets the condition fires.
    Armed,
    /// It fired and waits for the condition to clear, or for its cooldown.
    Fired,
    /// Registered but not polled: no Tokio runtime was running when it was added.
    NotRunning,
}

/// One firing and what its action did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    /// The alert's title (the rule's).
    pub title: String,
    /// Its severity.
    pub severity: crate::Severity,
    /// The metric.
    pub metric: String,
    /// The value that met the condition (for a logged metric, the last one).
    pub value: f64,
    /// How many events the poll counted.
    pub events: u32,
    /// When the poll ran (RFC 3339, UTC).
    pub at: String,
    /// The action: `webhook`, `email`, `callback`, ….
    pub action: String,
    /// Whether the action succeeded.
    pub ok: bool,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A trigger as listed: its rule, action, state, counters and recent alerts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerStatus {
    /// Its id within the endpoint.
    pub id: String,
    /// When it fires.
    pub rule: TriggerRule,
    /// What it does: `webhook`, `email`, `callback`, ….
    pub action: String,
    /// The action's settings as given (a webhook's secret left out), when it came from a spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub action_spec: Option<serde_json::Value>,
    /// Whether it may fire.
    pub state: TriggerState,
    /// When it last polled (RFC 3339), absent before the first poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<String>,
    /// What the last poll measured: the last matching sample of a logged metric, a built-in
    /// measurement's value; absent when it measured nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_value: Option<f64>,
    /// Polls so far.
    pub polls: u64,
    /// Alerts fired so far.
    pub fired: u64,
    /// Firings whose action failed.
    pub failures: u64,
    /// The most recent alerts, oldest first (at most [`ALERTS_KEPT`]).
    pub alerts: Vec<AlertRecord>,
}

/// The triggers of one endpoint, held by its [`Lifecycle`].
pub(crate) struct Triggers {
    list: Mutex<Vec<Arc<Running>>>,
    next_id: AtomicU64,
    settings: Mutex<ActionSettings>,
}

impl fmt::Debug for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Triggers")
            .field("count", &self.list.locked().len())
            .finish_non_exhaustive()
    }
}

/// One registered trigger.
struct Running {
    id: String,
    trigger: Arc<DynTrigger>,
    spec: Option<TriggerSpec>,
    tracked: Mutex<Tracked>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// What a trigger's polls have seen.
#[derive(Debug, Default)]
struct Tracked {
    /// Fired and waiting to re-arm (when the condition clears, without a cooldown).
    fired: bool,
    /// When it last fired successfully, for the cooldown.
    last_fired: Option<tokio::time::Instant>,
    running: bool,
    last_poll: Option<SystemTime>,
    last_value: Option<f64>,
    polls: u64,
    fired_total: u64,
    failures: u64,
    alerts: VecDeque<AlertRecord>,
}

impl Tracked {
    /// Whether a poll whose condition `holds` fires, and the state it leaves.
    fn decide(&mut self, rule: &TriggerRule, holds: bool, now: tokio::time::Instant) -> bool {
        match rule.cooldown_secs {
            None => {
                if !holds {
                    self.fired = false;
                    return false;
                }
                !self.fired
            }
            Some(cooldown) => {
                holds
                    && self.last_fired.is_none_or(|last| {
                        now.duration_since(last) >= Duration::from_secs(cooldown)
                    })
            }
        }
    }

    fn state(&self, rule: &TriggerRule, now: tokio::time::Instant) -> TriggerState {
        if !self.running {
            return TriggerState::NotRunning;
        }
        let waiting = match rule.cooldown_secs {
            None => self.fired,
            Some(cooldown) => self
                .last_fired
                .is_some_and(|last| now.duration_since(last) < Duration::from_secs(cooldown)),
        };
        if waiting {
            TriggerState::Fired
        } else {
            TriggerState::Armed
        }
    }
}

/// What one poll measured.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    /// Whether the condition is met.
    holds: bool,
    /// The events counted.
    events: u32,
    /// The value shown (and sent in the alert when it holds).
    value: Option<f64>,
}

impl Triggers {
    pub(crate) fn new(settings: ActionSettings) -> Self {
        Triggers {
            list: Mutex::default(),
            next_id: AtomicU64::new(1),
            settings: Mutex::new(settings),
        }
    }

    pub(crate) fn settings(&self) -> ActionSettings {
        self.settings.locked().clone()
    }

    pub(crate) fn set_settings(&self, settings: ActionSettings) {
        *self.settings.locked() = settings;
    }

    /// Registers `trigger` and starts polling it, when a Tokio runtime runs.
    pub(crate) fn add(
        &self,
        lifecycle: &Lifecycle,
        trigger: Arc<DynTrigger>,
        spec: Option<TriggerSpec>,
    ) -> Result<String> {
        trigger.rule().validate()?;
        let id = format!("trigger-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let running = Arc::new(Running {
            id: id.clone(),
            trigger,
            spec,
            tracked: Mutex::default(),
            task: Mutex::new(None),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                running.tracked.locked().running = true;
                let task = runtime.spawn(poll_loop(
                    lifecycle.downgrade(),
                    Arc::downgrade(&running),
                    running.trigger.rule().every(),
                    Window::starting_now(),
                ));
                *running.task.locked() = Some(task);
            }
            Err(_) => tracing::warn!(
                endpoint = lifecycle.endpoint(),
                trigger = %running.trigger.rule().title,
                "no Tokio runtime: the trigger is registered but not polled"
            ),
        }
        self.list.locked().push(running);
        Ok(id)
    }

    /// Stops and removes trigger `id`.
    pub(crate) fn remove(&self, endpoint: &str, id: &str) -> Result<()> {
        let mut list = self.list.locked();
        let at = list
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| Error::TriggerNotFound {
                endpoint: endpoint.to_owned(),
                id: id.to_owned(),
            })?;
        let removed = list.remove(at);
        drop(list);
        if let Some(task) = removed.task.locked().take() {
            task.abort();
        }
        Ok(())
    }

    pub(crate) fn statuses(&self) -> Vec<TriggerStatus> {
        let now = tokio::time::Instant::now();
        self.list
            .locked()
            .iter()
            .map(|running| {
                let rule = running.trigger.rule().clone();
                let tracked = running.tracked.locked();
                TriggerStatus {
                    id: running.id.clone(),
                    state: tracked.state(&rule, now),
                    action: running.trigger.action().to_owned(),
                    action_spec: running.spec.as_ref().map(|spec| spec.action.public_json()),
                    rule,
                    last_poll: tracked.last_poll.map(rfc3339),
                    last_value: tracked.last_value,
                    polls: tracked.polls,
                    fired: tracked.fired_total,
                    failures: tracked.failures,
                    alerts: tracked.alerts.iter().cloned().collect(),
                }
            })
            .collect()
    }

    /// The specs of the triggers that came from one, for the endpoint's exported spec.
    pub(crate) fn specs(&self) -> Vec<TriggerSpec> {
        self.list
            .locked()
            .iter()
            .filter_map(|running| running.spec.clone())
            .collect()
    }
}

/// The interval a poll reads: from the end of the previous one to now. Samples carry wall
/// time, request statistics a monotonic instant, so both ends are kept in both clocks.
#[derive(Debug, Clone, Copy)]
struct Window {
    wall: SystemTime,
    instant: std::time::Instant,
}

impl Window {
    fn starting_now() -> Self {
        Window {
            wall: SystemTime::now(),
            instant: std::time::Instant::now(),
        }
    }
}

async fn poll_loop(
    lifecycle: WeakLifecycle,
    running: std::sync::Weak<Running>,
    every: Duration,
    mut from: Window,
) {
    let start = tokio::time::Instant::now() + every;
    let mut ticks = tokio::time::interval_at(start, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (Some(lifecycle), Some(running)) = (lifecycle.upgrade(), running.upgrade()) else {
            return;
        };
        let to = Window::starting_now();
        poll(&lifecycle, &running, from, to).await;
        from = to;
    }
}

/// One poll of one trigger over `[from, to)`: measure, decide, fire, record.
async fn poll(lifecycle: &Lifecycle, running: &Running, from: Window, to: Window) {
    let rule = running.trigger.rule();
    let reading = match rule.measurement() {
        Ok(metric) => measure(lifecycle, rule, &metric, from, to),
        Err(_) => return,
    };
    let now = tokio::time::Instant::now();
    let fire = {
        let mut tracked = running.tracked.locked();
        tracked.polls += 1;
        tracked.last_poll = Some(to.wall);
        tracked.last_value = reading.value;
        let fire = tracked.decide(rule, reading.holds, now);
        if fire {
            // Taken before the action runs, so that a slow action does not fire twice.
            tracked.fired = true;
            tracked.last_fired = Some(now);
        }
        fire
    };
    if !fire {
        return;
    }
    let alert = Alert {
        title: rule.title.clone(),
        severity: rule.severity,
        endpoint: lifecycle.endpoint().to_owned(),
        metric: rule.metric.clone(),
        events: reading.events,
        last_value: reading.value.unwrap_or_default(),
        at: to.wall,
    };
    lifecycle.metric_sink().record_alert(&alert);
    // The action runs in a task of its own: a panic in it is its failure, not the poller's end.
    let trigger = Arc::clone(&running.trigger);
    let fired = alert.clone();
    let done = tokio::spawn(async move { trigger.fire(&fired).await }).await;
    let outcome = match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(join) => Err(format!("the action panicked: {join}")),
    };
    let action = running.trigger.action().to_owned();
    match &outcome {
        Ok(()) => tracing::info!(
            endpoint = %alert.endpoint,
            trigger = %alert.title,
            trigger_id = %running.id,
            severity = alert.severity.as_str(),
            metric = %alert.metric,
            value = alert.last_value,
            events = alert.events,
            action,
            "trigger fired"
        ),
        Err(error) => tracing::error!(
            endpoint = %alert.endpoint,
            trigger = %alert.title,
            trigger_id = %running.id,
            action,
            %error,
            "trigger action failed; it is tried again at the next poll that meets the condition"
        ),
    }
    let mut tracked = running.tracked.locked();
    tracked.fired_total += 1;
    if outcome.is_err() {
        tracked.failures += 1;
        // Left armed: the next poll that meets the condition fires again.
        tracked.fired = false;
        tracked.last_fired = None;
    }
    if tracked.alerts.len() == ALERTS_KEPT {
        tracked.alerts.pop_front();
    }
    tracked.alerts.push_back(AlertRecord {
        title: alert.title,
        severity: alert.severity,
        metric: alert.metric,
        value: alert.last_value,
        events: alert.events,
        at: rfc3339(alert.at),
        action,
        ok: outcome.is_ok(),
        error: outcome.err(),
    });
}

/// What the endpoint did in `[from, to)`, as the rule's metric sees it.
fn measure(
    lifecycle: &Lifecycle,
    rule: &TriggerRule,
    metric: &TriggerMetric,
    from: Window,
    to: Window,
) -> Reading {
    let version = rule.model_version.as_deref();
    if let TriggerMetric::Custom(key) = metric {
        let samples = lifecycle
            .metric_history()
            .samples(lifecycle.endpoint(), key, from.wall);
        let matching: Vec<f64> = samples
            .iter()
            .filter(|s| s.at < to.wall)
            .filter(|s| version.is_none_or(|v| v == s.model_version))
            .filter(|s| rule.holds(s.value))
            .map(|s| s.value)
            .collect();
        let events = u32::try_from(matching.len()).unwrap_or(u32::MAX);
        return Reading {
            holds: events >= rule.min_events.max(1),
            events,
            value: matching.last().copied(),
        };
    }
    let requests = lifecycle.requests_between(version, from.instant, to.instant);
    let count = requests.len();
    let events = u32::try_from(count).unwrap_or(u32::MAX);
    let value = match metric {
        TriggerMetric::RequestsPerMinute => {
            let minutes = to.instant.duration_since(from.instant).as_secs_f64() / 60.0;
            Some(if minutes > 0.0 {
                count as f64 / minutes
            } else {
                0.0
            })
        }
        _ if count == 0 || events < rule.min_events.max(1) => None,
        TriggerMetric::ErrorRate => {
            let errors = requests.iter().filter(|(_, o)| o.is_error()).count();
            Some(errors as f64 / count as f64)
        }
        TriggerMetric::MeanLatencyMs => Some(
            requests
                .iter()
                .map(|(latency, _)| latency.as_secs_f64() * 1000.0)
                .sum::<f64>()
                / count as f64,
        ),
        TriggerMetric::P95LatencyMs => {
            let mut latencies: Vec<f64> = requests
                .iter()
                .map(|(latency, _)| latency.as_secs_f64() * 1000.0)
                .collect();
            latencies.sort_by(f64::total_cmp);
            Some(percentile(&latencies, 0.95))
        }
        TriggerMetric::Custom(_) => unreachable!("handled above"),
    };
    Reading {
        holds: value.is_some_and(|v| rule.holds(v)),
        events,
        value,
    }
}

#[cfg(test)]
mod tests;
