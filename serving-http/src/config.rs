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
        /// [`WebServiceConfig::header_read_timeout_secs`], in seconds.
        HeaderReadTimeout = "header_read_timeout",
        /// [`WebServiceConfig::idle_timeout_secs`], in seconds.
        IdleTimeout = "idle_timeout",
        /// [`WebServiceConfig::max_connections`].
        MaxConnections = "max_connections",
        /// [`WebServiceConfig::max_header_bytes`].
        MaxHeaderBytes = "max_header_bytes",
        /// [`WebServiceConfig::drain_timeout_secs`], in seconds.
        DrainTimeout = "drain_timeout",
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
    /// Every key [`WebServiceConfig::set`] accepts ([`WebServiceKey`]'s names).
    pub const KEYS: [&'static str; 7] = name_array(WebServiceKey::NAMES);

    /// The defaults, overridden by `SERVING_<KEY>` (`SERVING_ADDR`, `SERVING_BODY_TIMEOUT`, ...)
    /// for each key that is set.
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

impl Settings for WebServiceConfig {
    type Key = WebServiceKey;
    const ENV_PREFIX: &'static str = "SERVING_";

    fn set_key(&mut self, key: WebServiceKey, value: &Setting<'_>) -> Result<()> {
        let seconds = || {
            value
                .positive()
                .map_err(|_| value.invalid("expected a whole number of seconds above zero"))
        };
        let count = || {
            value
                .positive()
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        match key {
            WebServiceKey::Addr => self.addr = value.parse()?,
            WebServiceKey::BodyTimeout => self.body_timeout_secs = seconds()?,
            WebServiceKey::HeaderReadTimeout => self.header_read_timeout_secs = seconds()?,
            WebServiceKey::IdleTimeout => self.idle_timeout_secs = seconds()?,
            WebServiceKey::MaxConnections => self.max_connections = count()?,
            WebServiceKey::MaxHeaderBytes => self.max_header_bytes = count()?,
            WebServiceKey::DrainTimeout => self.drain_timeout_secs = seconds()?,
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
