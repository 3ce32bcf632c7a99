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
    /// Seconds a client may take to send a whole request head, counted from the connection's
    /// start, or on a kept-alive connection from the first byte of the next request
    /// (`SERVING_HEADER_READ_TIMEOUT`); a slower client's connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may stay idle between an answer and the next request
    /// before it is closed (`SERVING_IDLE_TIMEOUT`).
    pub idle_timeout_secs: u64,
    /// Most connections open at once (`SERVING_MAX_CONNECTIONS`). At the cap the server stops
    /// accepting until one closes: new clients wait in the listen queue instead of taking the
    /// last file descriptors. Lowered at start to three quarters of the open-file limit when
    /// that is smaller.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes (`SERVING_MAX_HEADER_BYTES`);
    /// a larger one is answered 431 and its connection closed.
    pub max_header_bytes: usize,
    /// Seconds the graceful shutdown waits for requests in flight before it closes the
    /// connections left (`SERVING_DRAIN_TIMEOUT`).
    pub drain_timeout_secs: u64,
}

impl Default for WebServiceConfig {
    fn default() -> Self {
        WebServiceConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_timeout_secs: 30,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            drain_timeout_secs: 30,
        }
    }
}

impl WebServiceConfig {
    /// Every key [`WebServiceConfig::set`] accepts.
    pub const KEYS: [&'static str; 7] = [
        "addr",
        "body_timeout",
        "header_read_timeout",
        "idle_timeout",
        "max_connections",
        "max_header_bytes",
        "drain_timeout",
    ];

    /// The defaults, overridden by `SERVING_<KEY>` (`SERVING_ADDR`, `SERVING_BODY_TIMEOUT`, ...)
    /// for each key that is set.
    pub fn from_env() -> Result<Self> {
        let mut config = Self::default();
        for (key, var) in [
            ("addr", "SERVING_ADDR"),
            ("body_timeout", "SERVING_BODY_TIMEOUT"),
            ("header_read_timeout", "SERVING_HEADER_READ_TIMEOUT"),
            ("idle_timeout", "SERVING_IDLE_TIMEOUT"),
            ("max_connections", "SERVING_MAX_CONNECTIONS"),
            ("max_header_bytes", "SERVING_MAX_HEADER_BYTES"),
            ("drain_timeout", "SERVING_DRAIN_TIMEOUT"),
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
        let positive = || {
            value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("expected a whole number above zero".into()))
        };
        let seconds = || {
            positive().map_err(|_| invalid("expected a whole number of seconds above zero".into()))
        };
        let count = || positive().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        match key {
            "addr" => self.addr = value.trim().parse().map_err(|e| invalid(format!("{e}")))?,
            "body_timeout" => self.body_timeout_secs = seconds()?,
            "header_read_timeout" => self.header_read_timeout_secs = seconds()?,
            "idle_timeout" => self.idle_timeout_secs = seconds()?,
            "max_connections" => self.max_connections = count()?,
            "max_header_bytes" => self.max_header_bytes = count()?,
            "drain_timeout" => self.drain_timeout_secs = seconds()?,
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

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// The idle timeout of kept-alive connections.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The drain deadline of a graceful shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
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
        assert!(unknown.contains("drain_timeout"), "{unknown}");
    }

    #[test]
    fn connection_limits() {
        let mut config = WebServiceConfig::default();
        for (key, value) in [
            ("header_read_timeout", "3"),
            ("idle_timeout", "4"),
            ("max_connections", "50"),
            ("max_header_bytes", "8192"),
            ("drain_timeout", "5"),
        ] {
            config.set(key, value).unwrap();
        }
        assert_eq!(config.header_read_timeout(), Duration::from_secs(3));
        assert_eq!(config.idle_timeout(), Duration::from_secs(4));
        assert_eq!(config.max_connections, 50);
        assert_eq!(config.max_header_bytes, 8192);
        assert_eq!(config.drain_timeout(), Duration::from_secs(5));
        for key in ["header_read_timeout", "max_connections", "drain_timeout"] {
            assert!(config.set(key, "0").is_err(), "{key}");
            assert!(config.set(key, "-1").is_err(), "{key}");
        }
    }
}
