//! [`PredictionLogConfig`]: where the prediction log writes and how it batches.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::setting::Setting;

/// Settings of a [`PredictionLog`](super::PredictionLog), settable as KEY-VALUE pairs with
/// [`PredictionLogConfig::set`] or from `SERVING_PREDICTION_LOG_<KEY>` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PredictionLogConfig {
    /// Directory of the embedded local store (`dir`), `./serving-data` by default. Ignored when
    /// the log is given its own object store.
    pub dir: PathBuf,
    /// Key prefix of the segments inside the store (`prefix`), `predictions` by default.
    pub prefix: String,
    /// Records that may wait, encoded, for the writer (`queue_capacity`); beyond it, new
    /// records are dropped and counted.
    pub queue_capacity: usize,
    /// Most records in one segment (`segment_records`); a full buffer is written at once.
    pub segment_records: usize,
    /// Milliseconds between writes of a partly filled buffer (`flush_interval_ms`): how long a
    /// record may wait before it becomes visible to queries.
    pub flush_interval_ms: u64,
    /// Queries that may run at once (`max_concurrent_queries`), 2 by default; further queries
    /// wait for one to finish. Each holds one segment chunk and its page in memory and one
    /// thread of the blocking pool.
    pub max_concurrent_queries: usize,
    /// Segments whose newest record started more than this many seconds ago are deleted
    /// (`retention_max_age_secs`); 0, the default, keeps them forever.
    pub retention_max_age_secs: u64,
    /// Once the log's segments (all endpoints) hold more bytes than this, the oldest are
    /// deleted until they fit (`retention_max_bytes`); 0, the default, sets no limit.
    pub retention_max_bytes: u64,
}

impl Default for PredictionLogConfig {
    fn default() -> Self {
        PredictionLogConfig {
            dir: PathBuf::from("./serving-data"),
            prefix: "predictions".to_owned(),
            queue_capacity: 10_000,
            segment_records: 5_000,
            flush_interval_ms: 1_000,
            max_concurrent_queries: 2,
            retention_max_age_secs: 0,
            retention_max_bytes: 0,
        }
    }
}

impl PredictionLogConfig {
    /// Every key [`PredictionLogConfig::set`] accepts.
    pub const KEYS: [&'static str; 8] = [
        "dir",
        "prefix",
        "queue_capacity",
        "segment_records",
        "flush_interval_ms",
        "max_concurrent_queries",
        "retention_max_age_secs",
        "retention_max_bytes",
    ];

    /// The defaults, overridden by `SERVING_PREDICTION_LOG_DIR`, `…_PREFIX`,
    /// `…_QUEUE_CAPACITY`, `…_SEGMENT_RECORDS`, `…_FLUSH_INTERVAL_MS`,
    /// `…_MAX_CONCURRENT_QUERIES`, `…_RETENTION_MAX_AGE_SECS` and `…_RETENTION_MAX_BYTES`
    /// when set.
    pub fn from_env() -> Result<Self> {
        let mut config = Self::default();
        for key in Self::KEYS {
            let var = format!("SERVING_PREDICTION_LOG_{}", key.to_ascii_uppercase());
            if let Ok(value) = std::env::var(&var) {
                config.set(key, &value)?;
            }
        }
        Ok(config)
    }

    /// Sets one KEY-VALUE pair; an unknown key is an error that lists the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let setting = Setting { key, value };
        match key {
            "dir" if value.trim().is_empty() => return Err(setting.invalid("expected a directory")),
            "dir" => self.dir = PathBuf::from(value.trim()),
            "prefix" => {
                let prefix = value.trim().trim_matches('/');
                if prefix.is_empty()
                    || prefix
                        .split('/')
                        .any(|part| part.is_empty() || part == "..")
                {
                    return Err(setting.invalid("expected a key prefix such as `predictions`"));
                }
                self.prefix = prefix.to_owned();
            }
            "queue_capacity" => self.queue_capacity = setting.positive()? as usize,
            "segment_records" => self.segment_records = setting.positive()? as usize,
            "flush_interval_ms" => self.flush_interval_ms = setting.positive()?,
            "max_concurrent_queries" => self.max_concurrent_queries = setting.positive()? as usize,
            "retention_max_age_secs" => {
                self.retention_max_age_secs = setting.whole("0 keeps segments forever")?;
            }
            "retention_max_bytes" => {
                self.retention_max_bytes = setting.whole("0 sets no limit")?;
            }
            _ => return Err(setting.unknown(&Self::KEYS)),
        }
        Ok(())
    }

    /// Applies several KEY-VALUE pairs, stopping at the first error.
    pub fn apply<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
        pairs
            .into_iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }

    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The age and size limits, if any is set.
    pub(super) fn retention(&self) -> Option<super::retention::Retention> {
        let retention = super::retention::Retention {
            max_age: (self.retention_max_age_secs > 0)
                .then(|| Duration::from_secs(self.retention_max_age_secs)),
            max_bytes: (self.retention_max_bytes > 0).then_some(self.retention_max_bytes),
        };
        (retention.max_age.is_some() || retention.max_bytes.is_some()).then_some(retention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_settings() {
        let mut config = PredictionLogConfig::default();
        config
            .apply([
                ("dir", "/tmp/x"),
                ("queue_capacity", "5"),
                ("prefix", "/logs/p/"),
            ])
            .unwrap();
        assert_eq!(config.dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.queue_capacity, 5);
        assert_eq!(config.prefix, "logs/p");
        let unknown = config.set("capacity", "1").unwrap_err().to_string();
        assert!(
            unknown.contains("dir, prefix, queue_capacity, segment_records, flush_interval_ms, max_concurrent_queries, retention_max_age_secs, retention_max_bytes"),
            "{unknown}"
        );
        assert!(config.set("queue_capacity", "0").is_err());
        assert!(config.set("prefix", "a/../b").is_err());
        assert_eq!(config.retention(), None, "keeps everything by default");
        config
            .apply([
                ("retention_max_age_secs", "3600"),
                ("max_concurrent_queries", "1"),
            ])
            .unwrap();
        assert_eq!(config.max_concurrent_queries, 1);
        let retention = config.retention().unwrap();
        assert_eq!(retention.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(retention.max_bytes, None);
        assert!(config.set("max_concurrent_queries", "0").is_err());
    }

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let config = PredictionLogConfig::default();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<PredictionLogConfig>(&json).unwrap(),
            config
        );
        assert!(serde_json::from_str::<PredictionLogConfig>(r#"{"colour": 1}"#).is_err());
    }
}
