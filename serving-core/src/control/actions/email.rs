//! [`EmailTrigger`]: emails the alert through an SMTP server.

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::control::actions::{ActionSettings, action_error};
use crate::control::trigger::{Alert, Trigger, TriggerRule, rfc3339};
use crate::error::{Error, Result};

/// A trigger that emails its alerts to one or more addresses through the SMTP server of
/// [`ActionSettings::smtp_url`], from [`ActionSettings::smtp_from`].
///
/// The subject is `[<severity>] <title> on <endpoint>`; the body gives the metric, the value,
/// the events, the time and a link to the endpoint's dashboard (with
/// [`ActionSettings::dashboard_url`]).
pub struct EmailTrigger {
    rule: TriggerRule,
    to: Vec<Mailbox>,
    from: Mailbox,
    dashboard_url: Option<String>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
}

impl std::fmt::Debug for EmailTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailTrigger")
            .field("rule", &self.rule)
            .field("to", &self.to)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl EmailTrigger {
    /// Emails `to` through the server `settings` names.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `action` when no SMTP server is configured, when its URL
    /// does not parse, or when an address is not one.
    pub fn new(rule: TriggerRule, to: &[String], settings: &ActionSettings) -> Result<Self> {
        let url = settings.smtp_url.as_deref().ok_or_else(|| {
            action_error("`email` needs an SMTP server: set $SERVING_SMTP_URL (smtp://host:port)")
        })?;
        let to = to
            .iter()
            .map(|address| {
                address
                    .parse::<Mailbox>()
                    .map_err(|_| action_error(format!("`to`: `{address}` is not an email address")))
            })
            .collect::<Result<Vec<_>>>()?;
        let from =
            settings
                .from_address()
                .parse::<Mailbox>()
                .map_err(|e| Error::InvalidSetting {
                    key: "smtp_from".to_owned(),
                    value: settings.from_address().to_owned(),
                    reason: e.to_string(),
                })?;
        let (transport, server) = transport(url)?;
        Ok(EmailTrigger {
            rule,
            to,
            from,
            dashboard_url: settings.dashboard_url.clone(),
            transport,
            server,
        })
    }

    /// The message for `alert`.
    fn message(&self, alert: &Alert) -> Result<Message> {
        let severity = alert.severity.as_str().to_uppercase();
        let subject = format!("[{severity}] {} on {}", alert.title, alert.endpoint);
        let dashboard = match &self.dashboard_url {
            Some(base) => format!("{base}/dashboard?view=triggers#endpoint={}", alert.endpoint),
            None => format!(
                "/dashboard?view=triggers#endpoint={} (on the server's address)",
                alert.endpoint
            ),
        };
        let body = format!(
            "Trigger \"{title}\" ({severity}) fired on endpoint {endpoint}.\n\n\
             Metric:    {metric}\n\
             Value:     {value}\n\
             Events:    {events}\n\
             Time:      {at}\n\
             Dashboard: {dashboard}\n",
            title = alert.title,
            severity = alert.severity.as_str(),
            endpoint = alert.endpoint,
            metric = alert.metric,
            value = alert.last_value,
            events = alert.events,
            at = rfc3339(alert.at),
        );
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder.body(body).map_err(|e| Error::Action {
            action: "email".to_owned(),
            source: e.into(),
        })
    }
}

/// The SMTP transport of `url` and the server's `host:port` (for logs).
fn transport(url: &str) -> Result<(AsyncSmtpTransport<Tokio1Executor>, String)> {
    let bad = |why: &str| Error::InvalidSetting {
        key: "smtp_url".to_owned(),
        value: url.to_owned(),
        reason: why.to_owned(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("smtps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("smtp://") {
        (false, rest)
    } else {
        return Err(bad("expected smtp://host:port or smtps://user:pass@host"));
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((user, address)) => {
            let (name, password) = user.split_once(':').unwrap_or((user, ""));
            (
                Some(Credentials::new(name.to_owned(), password.to_owned())),
                address,
            )
        }
        None => (None, rest),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (
            host,
            Some(
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
        ),
        None => (address, None),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let mut builder = if tls {
        tls_builder(host).map_err(|why| bad(&why))?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port.unwrap_or(25))
    };
    if let Some(port) = port.filter(|_| tls) {
        builder = builder.port(port);
    }
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    Ok((
        builder.build(),
        format!("{host}:{}", port.unwrap_or(if tls { 465 } else { 25 })),
    ))
}

#[cfg(feature = "email-tls")]
fn tls_builder(
    host: &str,
) -> std::result::Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, String> {
    AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| e.to_string())
}

#[cfg(not(feature = "email-tls"))]
fn tls_builder(
    _host: &str,
) -> std::result::Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, String> {
    Err("smtps:// needs serving-core's `email-tls` feature".to_owned())
}

#[async_trait]
impl Trigger for EmailTrigger {
    fn rule(&self) -> &TriggerRule {
        &self.rule
    }

    async fn fire(&self, alert: &Alert) -> Result<()> {
        let message = self.message(alert)?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| Error::Action {
                action: format!("email through {}", self.server),
                source: e.into(),
            })
    }

    fn action(&self) -> &str {
        "email"
    }
}
