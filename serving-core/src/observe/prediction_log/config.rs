//! [`PredictionLogConfig`]: where the prediction log writes and how it batches.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::setting::{Setting, SettingKey, Settings, name_array};
use crate::error::Result;
use crate::setting_keys;

setting_keys! {
    /// The keys of a [`PredictionLogConfig`], each named after its field.
    pub enum PredictionLogKey {
        /// [`PredictionLogConfig::dir`].
        Dir = "dir",
        /// [`PredictionLogConfig::prefix`].
        Prefix = "prefix",
        /// [`PredictionLogConfig::queue_capacity`].
        QueueCapacity = "queue_capacity",
        /// [`PredictionLogConfig::segment_records`].
        SegmentRecords = "segment_records",
        /// [`PredictionLogConfig::flush_interval_ms`].
        FlushIntervalMs = "flush_interval_ms",
        /// [`PredictionLogConfig::max_concurrent_queries`].
        MaxConcurrentQueries = "max_concurrent_queries",
        /// [`PredictionLogConfig::retention_max_age_secs`].
        RetentionMaxAgeSecs = "retention_max_age_secs",
        /// [`PredictionLogConfig::retention_max_bytes`].
        RetentionMaxBytes = "retention_max_bytes",
    }
}

/// Settings of a [`PredictionLog`](super::PredictionLog), settable as KEY-VALUE pairs with
/// [`PredictionLogConfig::set`] or from `SERVING_PREDICTION_LOG_<KEY>` environment variables
/// ([`Settings`], keys [`PredictionLogKey`]).
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
    /// Every key [`PredictionLogConfig::set`] accepts ([`PredictionLogKey`]'s names).
    pub const KEYS: [&'static str; 8] = name_array(PredictionLogKey::NAMES);

    /// The defaults, overridden by `SERVING_PREDICTION_LOG_DIR`, `…_PREFIX`,
    /// `…_QUEUE_CAPACITY`, `…_SEGMENT_RECORDS`, `…_FLUSH_INTERVAL_MS`,
    /// `…_MAX_CONCURRENT_QUERIES`, `…_RETENTION_MAX_AGE_SECS` and `…_RETENTION_MAX_BYTES`
    /// when set.
    pub fn from_env() -> Result<Self> {
        <Self as Settings>::from_env()
    }

    /// Sets one KEY-VALUE pair; an unknown key is an error that lists the valid ones.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        Settings::set(self, key, value)
    }

    /// Applies several KEY-VALUE pairs, stopping at the first error.
    pub fn apply<'a>(&mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
        Settings::apply(self, pairs)
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

impl Settings for PredictionLogConfig {
    type Key = PredictionLogKey;
    const ENV_PREFIX: &'static str = "SERVING_PREDICTION_LOG_";

    fn set_key(&mut self, key: PredictionLogKey, value: &Setting<'_>) -> Result<()> {
        match key {
            PredictionLogKey::Dir => {
                self.dir = PathBuf::from(value.non_empty("expected a directory")?);
            }
            PredictionLogKey::Prefix => {
                let prefix = value.value().trim().trim_matches('/');
                if prefix.is_empty()
                    || prefix
                        .split('/')
                        .any(|part| part.is_empty() || part == "..")
                {
                    return Err(value.invalid("expected a key prefix such as `predictions`"));
                }
                self.prefix = prefix.to_owned();
            }
            PredictionLogKey::QueueCapacity => self.queue_capacity = value.positive()? as usize,
            PredictionLogKey::SegmentRecords => self.segment_records = value.positive()? as usize,
            PredictionLogKey::FlushIntervalMs => self.flush_interval_ms = value.positive()?,
            PredictionLogKey::MaxConcurrentQueries => {
                self.max_concurrent_queries = value.positive()? as usize;
            }
            PredictionLogKey::RetentionMaxAgeSecs => {
                self.retention_max_age_secs = value.whole("0 keeps segments forever")?;
            }
            PredictionLogKey::RetentionMaxBytes => {
                self.retention_max_bytes = value.whole("0 sets no limit")?;
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
    fn typed_keys_and_the_environment_prefix() {
        let config = PredictionLogConfig::default()
            .with_config(PredictionLogKey::SegmentRecords, "10")
            .unwrap();
        assert_eq!(config.segment_records, 10);
        let config = PredictionLogConfig::from_lookup(|var| match var {
            "SERVING_PREDICTION_LOG_FLUSH_INTERVAL_MS" => Some("250".to_owned()),
            "SERVING_PREDICTION_LOG_RETENTION_MAX_BYTES" => Some("4096".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.flush_interval(), Duration::from_millis(250));
        assert_eq!(config.retention_max_bytes, 4096);
        let error = PredictionLogConfig::default()
            .set("queue_capacity", "lots")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`lots`") && error.contains("`queue_capacity`"),
            "{error}"
        );
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
