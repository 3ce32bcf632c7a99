//! [`WebServiceConfig`]: where and how the web service listens.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serving_core::{Error, Result};

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
    /// Every key [`WebServiceConfig::set`] accepts.
    pub const KEYS: [&'static str; 2] = ["addr", "body_timeout"];

    /// The defaults, overridden by `SERVING_ADDR` and `SERVING_BODY_TIMEOUT` when set.
    pub fn from_env() -> Result<Self> {
        let mut config = Self::default();
        for (key, var) in [
            ("addr", "SERVING_ADDR"),
            ("body_timeout", "SERVING_BODY_TIMEOUT"),
        ] {
            if let Ok(value) = std::env::var(var) {
                config.set(key, &value)?;
            }
        }
        Ok(config)
    }

    /// Sets one KEY-VALUE pair; an unknown key is an error listing the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let invalid = |reason: String| Error::InvalidSetting {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match key {
            "addr" => self.addr = value.trim().parse().map_err(|e| invalid(format!("{e}")))?,
            "body_timeout" => {
                self.body_timeout_secs =
                    value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            invalid("expected a whole number of seconds above zero".into())
                        })?
            }
            _ => {
                return Err(Error::UnknownSetting {
                    key: key.to_owned(),
                    valid: Self::KEYS.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// The body timeout.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
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
}
