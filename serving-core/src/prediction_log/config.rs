//! [`PredictionLogConfig`]: where the prediction log writes and how it batches.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::setting::{Setting, Settings, name_array};
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
}

impl Default for PredictionLogConfig {
    fn default() -> Self {
        PredictionLogConfig {
            dir: PathBuf::from("./serving-data"),
            prefix: "predictions".to_owned(),
            queue_capacity: 10_000,
            segment_records: 5_000,
            flush_interval_ms: 1_000,
        }
    }
}

impl PredictionLogConfig {
    /// Every key [`PredictionLogConfig::set`] accepts ([`PredictionLogKey`]'s names).
    pub const KEYS: [&'static str; 5] = name_array(<PredictionLogKey as crate::SettingKey>::NAMES);

    /// The defaults, overridden by `SERVING_PREDICTION_LOG_DIR`, `…_PREFIX`,
    /// `…_QUEUE_CAPACITY`, `…_SEGMENT_RECORDS` and `…_FLUSH_INTERVAL_MS` when set.
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
            unknown.contains("dir, prefix, queue_capacity, segment_records, flush_interval_ms"),
            "{unknown}"
        );
        assert!(config.set("queue_capacity", "0").is_err());
        assert!(config.set("prefix", "a/../b").is_err());
    }

    #[test]
    fn typed_keys_and_the_environment_prefix() {
        let config = PredictionLogConfig::default()
            .with_config(PredictionLogKey::SegmentRecords, "10")
            .unwrap();
        assert_eq!(config.segment_records, 10);
        let config = PredictionLogConfig::from_lookup(|var| {
            (var == "SERVING_PREDICTION_LOG_FLUSH_INTERVAL_MS").then(|| "250".to_owned())
        })
        .unwrap();
        assert_eq!(config.flush_interval(), Duration::from_millis(250));
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
