//! [`WebhookTrigger`]: POSTs the alert as JSON, signed when it has a secret.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::control::actions::action_error;
use crate::control::trigger::{Alert, Trigger, TriggerRule};
use crate::error::{BoxError, Error, Result};

/// The header of a webhook's signature: `sha256=<hex HMAC-SHA256 of the body>`, keyed by its
/// secret (as GitHub signs its webhooks).
pub const SIGNATURE_HEADER: &str = "x-serving-signature";

/// A trigger that POSTs [`Alert::to_json`] to a URL: within `timeout` (10 s by default) per
/// attempt, `attempts` tries (3) with a backoff that doubles from 250 ms, a success being any
/// 2xx answer. A 4xx other than 408 and 429 is not retried (the receiver refused it).
#[derive(Debug)]
pub struct WebhookTrigger {
    rule: TriggerRule,
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

impl WebhookTrigger {
    /// POSTs to `url`, signed with `secret` when given.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `url` when it does not parse, or is `https://` without the
    /// `webhook-tls` feature.
    pub fn new(rule: TriggerRule, url: &str, secret: Option<&str>) -> Result<Self> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| action_error(format!("`url` `{url}` does not parse: {e}")))?;
        if url.scheme() == "https" && !cfg!(feature = "webhook-tls") {
            return Err(action_error(format!(
                "`url` `{url}`: https:// webhooks need serving-core's `webhook-tls` feature"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| action_error(format!("webhook client: {e}")))?;
        Ok(WebhookTrigger {
            rule,
            url,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            client,
            attempts: 3,
            backoff: Duration::from_millis(250),
        })
    }

    /// Tries `attempts` times (at least once) per firing.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Waits `backoff`, then twice that, … between attempts.
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The signature header's value for `body`, when there is a secret.
    pub fn signature(&self, body: &[u8]) -> Option<String> {
        self.secret.as_deref().map(|secret| sign(secret, body))
    }

    async fn attempt(&self, body: &[u8]) -> std::result::Result<(), (bool, BoxError)> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(signature) = self.signature(body) {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = request.send().await.map_err(|e| (true, e.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry = !status.is_client_error() || status.as_u16() == 408 || status.as_u16() == 429;
        Err((retry, format!("the receiver answered {status}").into()))
    }
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`.
pub(crate) fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[async_trait]
impl Trigger for WebhookTrigger {
    fn rule(&self) -> &TriggerRule {
        &self.rule
    }

    async fn fire(&self, alert: &Alert) -> Result<()> {
        let body = serde_json::to_vec(&alert.to_json()).expect("an alert always serializes");
        let mut wait = self.backoff;
        let mut last = None;
        for attempt in 1..=self.attempts {
            match self.attempt(&body).await {
                Ok(()) => return Ok(()),
                Err((retry, error)) => {
                    tracing::warn!(url = %self.url, attempt, %error, "webhook attempt failed");
                    last = Some(error);
                    if !retry || attempt == self.attempts {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
        }
        Err(Error::Action {
            action: format!("webhook to {}", self.url),
            source: last.unwrap_or_else(|| "no attempt was made".into()),
        })
    }

    fn action(&self) -> &str {
        "webhook"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Comparison;

    #[test]
    fn https_needs_the_tls_feature() {
        let rule = TriggerRule::new("t", "m", Comparison::GreaterThan, 1.0, 1);
        let made = WebhookTrigger::new(rule, "https://127.0.0.1:1/hook", None);
        assert_eq!(made.is_ok(), cfg!(feature = "webhook-tls"), "{made:?}");
    }

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
