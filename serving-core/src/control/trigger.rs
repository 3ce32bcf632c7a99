//! The [`Trigger`] trait: watch a metric, fire an action.

use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::observe::metrics::MetricSample;
use crate::sync::Locked;

/// When a trigger fires: a metric compared with a value, polled every `every`, after at least
/// `min_events` samples met the condition (the original product's "Continual Learning" alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// The trigger's name.
    pub title: String,
    /// How important an alert is.
    #[serde(default)]
    pub severity: Severity,
    /// The metric key logged with `log_metric` (the original "tag").
    pub metric: String,
    /// How the metric is compared with `threshold`.
    pub comparison: Comparison,
    /// The value compared against.
    pub threshold: f64,
    /// How often the condition is polled, in seconds.
    pub every_secs: u64,
    /// Samples that must meet the condition within one poll before the trigger fires.
    #[serde(default = "one")]
    pub min_events: u32,
}

fn one() -> u32 {
    1
}

impl TriggerRule {
    /// The polling interval.
    pub fn every(&self) -> Duration {
        Duration::from_secs(self.every_secs)
    }

    /// Whether one value meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::GreaterThan => value > self.threshold,
            Comparison::LessThan => value < self.threshold,
        }
    }

    /// The alert for one poll over `samples` of this rule's metric, if enough of them meet the
    /// condition.
    pub fn evaluate(
        &self,
        endpoint: &str,
        samples: &[MetricSample],
        at: SystemTime,
    ) -> Option<Alert> {
        let matching: Vec<f64> = samples
            .iter()
            .filter(|s| s.key == self.metric && self.holds(s.value))
            .map(|s| s.value)
            .collect();
        (matching.len() as u64 >= u64::from(self.min_events.max(1))).then(|| Alert {
            title: self.title.clone(),
            severity: self.severity,
            endpoint: endpoint.to_owned(),
            metric: self.metric.clone(),
            events: matching.len() as u32,
            last_value: *matching.last().expect("at least one matching sample"),
            at,
        })
    }
}

/// Greater than or less than.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `value > threshold`.
    GreaterThan,
    /// `value < threshold`.
    LessThan,
}

/// Info, warning or critical.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    #[default]
    Info,
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

/// What a trigger's action is told when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule's title.
    pub title: String,
    /// The rule's severity.
    pub severity: Severity,
    /// The endpoint whose metric met the condition.
    pub endpoint: String,
    /// The metric.
    pub metric: String,
    /// How many samples met the condition in this poll.
    pub events: u32,
    /// The last value that met it.
    pub last_value: f64,
    /// When the poll ran.
    pub at: SystemTime,
}

/// A rule and the action it fires: an email, a webhook, or a Rust callback such as retraining.
///
/// # Contract
/// - `rule` is fixed for the trigger's life.
/// - `fire` is called once per poll whose samples meet the rule; it runs the action once and
///   reports its failure as an error (the poller logs it and polls again next interval). It is
///   never called concurrently for the same trigger.
#[async_trait]
pub trait Trigger: Debug + Send + Sync + 'static {
    /// When to fire.
    fn rule(&self) -> &TriggerRule;

    /// Runs the action for `alert`.
    async fn fire(&self, alert: &Alert) -> Result<()>;
}

/// A type-erased trigger.
pub type DynTrigger = dyn Trigger;

/// Forwards to the pointee, every method included.
macro_rules! forward_trigger {
    ($pointer:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: Trigger + ?Sized> Trigger for $pointer<T> {
            fn rule(&self) -> &TriggerRule {
                (**self).rule()
            }

            async fn fire(&self, alert: &Alert) -> Result<()> {
                (**self).fire(alert).await
            }
        }
    };
}

forward_trigger!(Arc);
forward_trigger!(Box);

/// The action of a [`CallbackTrigger`].
type Action = Box<dyn Fn(&Alert) -> Result<()> + Send + Sync>;

/// A trigger whose action is a Rust closure; it also keeps every alert it fired, in memory.
pub struct CallbackTrigger {
    rule: TriggerRule,
    action: Action,
    fired: Mutex<Vec<Alert>>,
}

impl CallbackTrigger {
    /// Fires `action` when `rule` holds.
    pub fn new(
        rule: TriggerRule,
        action: impl Fn(&Alert) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        CallbackTrigger {
            rule,
            action: Box::new(action),
            fired: Mutex::default(),
        }
    }

    /// Every alert fired so far, oldest first.
    pub fn fired(&self) -> Vec<Alert> {
        self.fired.locked().clone()
    }
}

impl Debug for CallbackTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackTrigger")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Trigger for CallbackTrigger {
    fn rule(&self) -> &TriggerRule {
        &self.rule
    }

    async fn fire(&self, alert: &Alert) -> Result<()> {
        self.fired.locked().push(alert.clone());
        (self.action)(alert)
    }
}
