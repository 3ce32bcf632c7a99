//! Triggers as a spec describes them ([`TriggerSpec`]: a rule and an action) and the actions a
//! spec can name: a webhook (feature `webhook`) and an email (feature `email`). A Rust callback
//! is added in code ([`CallbackTrigger`](crate::CallbackTrigger)).

#[cfg(feature = "email")]
mod email;
#[cfg(feature = "webhook")]
mod webhook;

#[cfg(feature = "email")]
pub use email::EmailTrigger;
#[cfg(feature = "webhook")]
pub use webhook::{SIGNATURE_HEADER, WebhookTrigger};

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::config::setting::{Setting, Settings};
use crate::control::trigger::{DynTrigger, TriggerRule};
use crate::error::{Error, Result};
use crate::setting_keys;

/// A trigger in an [`EndpointSpec`](crate::EndpointSpec): the rule's fields and an `action`,
/// as the admin API takes it:
///
/// ```json
/// {"title": "long petals", "severity": "warning", "metric": "petal_length_cm",
///  "comparison": "greater_than", "threshold": 6.0, "every_secs": 10, "min_events": 1,
///  "action": {"type": "webhook", "url": "http://127.0.0.1:9000/hook", "secret": "s3cret"}}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    /// When it fires.
    pub rule: TriggerRule,
    /// What it does.
    pub action: ActionSpec,
}

impl TriggerSpec {
    /// Parses a trigger from JSON and checks it, naming the field that is wrong.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] whose message starts with the field: `threshold: invalid type…`,
    /// `action.type: unknown variant…`, `every_secs must be at least 1`, ….
    pub fn from_json(text: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(text).map_err(|e| Error::InvalidSpec {
            reason: format!("trigger: invalid JSON: {e}"),
        })?;
        Self::from_value(value)
    }

    /// [`TriggerSpec::from_json`] from a parsed value.
    pub fn from_value(value: Value) -> Result<Self> {
        let spec = parse_spec(value).map_err(|reason| Error::InvalidSpec { reason })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rule and the action.
    pub fn validate(&self) -> Result<()> {
        self.rule.validate()?;
        self.action.validate()
    }

    /// The trigger that runs it, its action configured by `settings`.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `action` when the action cannot be built: an email without
    /// an SMTP server configured, an action whose cargo feature is off.
    pub fn build(&self, settings: &ActionSettings) -> Result<Arc<DynTrigger>> {
        self.validate()?;
        let rule = self.rule.clone();
        match &self.action {
            #[cfg(feature = "webhook")]
            ActionSpec::Webhook { url, secret } => {
                Ok(Arc::new(WebhookTrigger::new(rule, url, secret.as_deref())?))
            }
            #[cfg(feature = "email")]
            ActionSpec::Email { to } => Ok(Arc::new(EmailTrigger::new(rule, to, settings)?)),
            #[allow(unreachable_patterns)]
            other => {
                let _ = (rule, settings);
                Err(action_error(format!(
                    "`{}` actions need serving-core's `{}` feature",
                    other.kind(),
                    other.kind()
                )))
            }
        }
    }
}

/// The error of a spec whose action is wrong.
pub(crate) fn action_error(why: impl std::fmt::Display) -> Error {
    Error::InvalidSpec {
        reason: format!("trigger: `action` {why}"),
    }
}

fn parse_spec(value: Value) -> std::result::Result<TriggerSpec, String> {
    let Value::Object(mut map) = value else {
        return Err("trigger: must be a JSON object".to_owned());
    };
    let action = map
        .remove("action")
        .ok_or_else(|| "trigger: missing field `action`".to_owned())?;
    let rule: TriggerRule =
        serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| field_error("", &e))?;
    let action: ActionSpec =
        serde_path_to_error::deserialize(action).map_err(|e| field_error("action", &e))?;
    Ok(TriggerSpec { rule, action })
}

/// `trigger: `field`: why`, the field's path led by `within`.
fn field_error(within: &str, error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let field = match (within, path.as_str()) {
        ("", ".") => String::new(),
        ("", path) => path.to_owned(),
        (within, ".") => within.to_owned(),
        (within, path) => format!("{within}.{path}"),
    };
    if field.is_empty() {
        format!("trigger: {}", error.inner())
    } else {
        format!("trigger: `{field}`: {}", error.inner())
    }
}

impl Serialize for TriggerSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.rule).map_err(serde::ser::Error::custom)?;
        let action = serde_json::to_value(&self.action).map_err(serde::ser::Error::custom)?;
        if let Value::Object(map) = &mut value {
            map.insert("action".to_owned(), action);
        }
        value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TriggerSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let spec = parse_spec(value).map_err(serde::de::Error::custom)?;
        spec.validate().map_err(serde::de::Error::custom)?;
        Ok(spec)
    }
}

/// What a trigger from a spec does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ActionSpec {
    /// POSTs the alert as JSON ([`Alert::to_json`](crate::Alert::to_json)) to `url`, within a
    /// timeout, retried with backoff; signed with `X-Serving-Signature: sha256=<hex HMAC>` of
    /// the body when `secret` is set.
    Webhook {
        /// Where to POST (`http://`; `https://` when built with TLS).
        url: String,
        /// The HMAC-SHA256 key of the signature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// Emails the alert to every address through the SMTP server of
    /// [`ActionSettings::smtp_url`].
    Email {
        /// The recipients.
        to: Vec<String>,
    },
}

impl ActionSpec {
    /// `webhook` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionSpec::Webhook { .. } => "webhook",
            ActionSpec::Email { .. } => "email",
        }
    }

    /// Checks the URL or the addresses.
    pub fn validate(&self) -> Result<()> {
        match self {
            ActionSpec::Webhook { url, secret } => {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
                    return Err(action_error(format!(
                        "`url` `{url}` must be an http:// or https:// URL"
                    )));
                }
                if secret.as_deref().is_some_and(str::is_empty) {
                    return Err(action_error("`secret` must not be empty when set"));
                }
                Ok(())
            }
            ActionSpec::Email { to } => {
                if to.is_empty() {
                    return Err(action_error("`to` must list at least one address"));
                }
                to.iter().try_for_each(|address| check_address(address))
            }
        }
    }

    /// The action as listed: a webhook's secret replaced by `"signed": true`.
    pub(crate) fn public_json(&self) -> Value {
        match self {
            ActionSpec::Webhook { url, secret } => {
                serde_json::json!({"type": "webhook", "url": url, "signed": secret.is_some()})
            }
            ActionSpec::Email { to } => serde_json::json!({"type": "email", "to": to}),
        }
    }
}

/// An email address as SMTP takes it: `local@domain`, printable, no spaces or brackets.
fn check_address(address: &str) -> Result<()> {
    let bad = || action_error(format!("`to`: `{address}` is not an email address"));
    let (local, domain) = address.rsplit_once('@').ok_or_else(bad)?;
    let printable = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"@".contains(c))
    };
    if !printable(local) || !printable(domain) || domain.starts_with('.') || domain.ends_with('.') {
        return Err(bad());
    }
    #[cfg(feature = "email")]
    address.parse::<lettre::Address>().map_err(|_| bad())?;
    Ok(())
}

setting_keys! {
    /// The keys of [`ActionSettings`]: `smtp_url`, `smtp_from`, `dashboard_url`.
    pub enum ActionKey {
        /// [`ActionSettings::smtp_url`].
        SmtpUrl = "smtp_url",
        /// [`ActionSettings::smtp_from`].
        SmtpFrom = "smtp_from",
        /// [`ActionSettings::dashboard_url`].
        DashboardUrl = "dashboard_url",
    }
}

/// What trigger actions need from the process: the SMTP server and sender of emails, and the
/// dashboard's address that alerts link to. From the environment: `SERVING_SMTP_URL`,
/// `SERVING_SMTP_FROM`, `SERVING_DASHBOARD_URL`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionSettings {
    /// `smtp://host:port` (no TLS) or `smtps://user:pass@host[:port]` (TLS; needs the
    /// `email-tls` feature); user and password may be given with either. Email actions are
    /// refused while it is unset.
    pub smtp_url: Option<String>,
    /// The sender of alert emails; `serving@localhost` when unset.
    pub smtp_from: Option<String>,
    /// The dashboard's base address (`http://host:port`), for the link in alert emails.
    pub dashboard_url: Option<String>,
}

impl ActionSettings {
    /// The sender of alert emails.
    pub fn from_address(&self) -> &str {
        self.smtp_from.as_deref().unwrap_or("serving@localhost")
    }
}

impl Settings for ActionSettings {
    type Key = ActionKey;
    const ENV_PREFIX: &'static str = "SERVING_";

    fn set_key(&mut self, key: ActionKey, value: &Setting<'_>) -> Result<()> {
        match key {
            ActionKey::SmtpUrl => {
                let url = value.non_empty("an smtp:// or smtps:// URL")?;
                if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                    return Err(value.invalid("expected an smtp:// or smtps:// URL"));
                }
                self.smtp_url = Some(url.to_owned());
            }
            ActionKey::SmtpFrom => {
                let from = value.non_empty("an email address")?;
                check_address(from).map_err(|_| value.invalid("expected an email address"))?;
                self.smtp_from = Some(from.to_owned());
            }
            ActionKey::DashboardUrl => {
                let url = value.non_empty("the dashboard's base URL")?;
                self.dashboard_url = Some(url.trim_end_matches('/').to_owned());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        TriggerSpec::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"{"title":"t","metric":"m","comparison":"greater_than","threshold":1,"every_secs":5,"action":{"type":"webhook","url":"http://127.0.0.1:1/h"}}"#;

    #[test]
    fn a_good_spec_round_trips() {
        let spec = TriggerSpec::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(spec.rule.min_events, 1);
        assert_eq!(spec.action.kind(), "webhook");
        let again: TriggerSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn every_bad_field_is_named() {
        let with = |from: &str, to: &str| error(&GOOD.replace(from, to));
        assert!(
            with(r#""threshold":1"#, r#""threshold":"high""#).contains("`threshold`"),
            "{}",
            with(r#""threshold":1"#, r#""threshold":"high""#)
        );
        assert!(with(r#""every_secs":5"#, r#""every_secs":0"#).contains("`every_secs`"));
        assert!(with(r#""metric":"m""#, r#""metric":"gpu:temp""#).contains("`metric`"));
        let kind = with(r#""type":"webhook""#, r#""type":"sms""#);
        assert!(
            kind.contains("`action.type`") && kind.contains("sms"),
            "{kind}"
        );
        let email = with(
            r#"{"type":"webhook","url":"http://127.0.0.1:1/h"}"#,
            r#"{"type":"email","to":["not an address"]}"#,
        );
        assert!(email.contains("`to`"), "{email}");
        assert!(with(r#""title":"t","#, "").contains("title"));
        assert!(with(r#""title":"t""#, r#""title":"t","colour":"red""#).contains("colour"));
        assert!(error(r#"{"title":"t"}"#).contains("action"));
    }

    #[test]
    fn action_settings_come_from_the_environment() {
        let settings = ActionSettings::from_lookup(|var| match var {
            "SERVING_SMTP_URL" => Some("smtp://127.0.0.1:2525".to_owned()),
            "SERVING_SMTP_FROM" => Some("alerts@example.com".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(settings.smtp_url.as_deref(), Some("smtp://127.0.0.1:2525"));
        assert_eq!(settings.from_address(), "alerts@example.com");
        assert!(
            ActionSettings::default()
                .set("smtp_url", "http://x")
                .is_err()
        );
    }
}
