//! [`WebServiceConfig`]: where and how the web service listens.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serving_core::setting::{Setting, SettingKey, Settings, name_array};
use serving_core::{Result, setting_keys};

setting_keys! {
    /// The keys of a [`WebServiceConfig`]; each is also read from `SERVING_<KEY>`.
    pub enum WebServiceKey {
        /// [`WebServiceConfig::addr`].
        Addr = "addr",
        /// [`WebServiceConfig::body_timeout_secs`], in seconds.
        BodyTimeout = "body_timeout",
    }
}

/// Server-wide settings of a [`WebService`](crate::WebService); per-endpoint settings (body
/// limit, timeout, concurrency) live in each endpoint's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebServiceConfig {
    /// Address to listen on (`SERVING_ADDR`), `127.0.0.1:8080` by default.
    pub addr: SocketAddr,
    /// Seconds a client may take to send its request body before it gets 408
    /// (`SERVING_BODY_TIMEOUT`); stops slow-body clients from holding connections.
    pub body_timeout_secs: u64,
}

impl Default for WebServiceConfig {
    fn default() -> Self {
        WebServiceConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_timeout_secs: 30,
        }
    }
}

impl WebServiceConfig {
    /// Every key [`WebServiceConfig::set`] accepts ([`WebServiceKey`]'s names).
    pub const KEYS: [&'static str; 2] = name_array(WebServiceKey::NAMES);

    /// The defaults, overridden by `SERVING_ADDR` and `SERVING_BODY_TIMEOUT` when set.
    pub fn from_env() -> Result<Self> {
        <Self as Settings>::from_env()
    }

    /// Sets one KEY-VALUE pair; an unknown key is an error listing the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        Settings::set(self, key, value)
    }

    /// The body timeout.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

impl Settings for WebServiceConfig {
    type Key = WebServiceKey;
    const ENV_PREFIX: &'static str = "SERVING_";

    fn set_key(&mut self, key: WebServiceKey, value: &Setting<'_>) -> Result<()> {
        match key {
            WebServiceKey::Addr => self.addr = value.parse()?,
            WebServiceKey::BodyTimeout => {
                self.body_timeout_secs = value
                    .positive()
                    .map_err(|_| value.invalid("expected a whole number of seconds above zero"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_settings() {
        let mut config = WebServiceConfig::default();
        config.set("addr", "127.0.0.1:9000").unwrap();
        assert_eq!(config.addr.port(), 9000);
        assert!(config.set("addr", "nowhere").is_err());
        let unknown = config.set("port", "1").unwrap_err().to_string();
        assert!(unknown.contains("addr, body_timeout"), "{unknown}");
    }

    #[test]
    fn typed_keys_and_the_environment() {
        let config = WebServiceConfig::default()
            .with_config(WebServiceKey::BodyTimeout, "5")
            .unwrap();
        assert_eq!(config.body_timeout(), Duration::from_secs(5));
        let config = WebServiceConfig::from_lookup(|var| {
            (var == "SERVING_ADDR").then(|| "127.0.0.1:9001".to_owned())
        })
        .unwrap();
        assert_eq!(config.addr.port(), 9001);
        let error = WebServiceConfig::default()
            .set("body_timeout", "0")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value `0` for setting `body_timeout`: expected a whole number of seconds above zero"
        );
    }
}
