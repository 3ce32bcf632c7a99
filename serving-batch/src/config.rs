//! [`BatchJobConfig`]: how a batch endpoint reads, predicts and writes a batch.

use serde::{Deserialize, Serialize};
use serving_core::setting::{Setting, Settings};
use serving_core::{BackendSection, EndpointKind, EndpointSpec, Result, setting_keys};

setting_keys! {
    /// The keys of a [`BatchJobConfig`], each named after its field.
    pub enum BatchJobKey {
        /// [`BatchJobConfig::prediction_column`] (alias `output_column`).
        PredictionColumn = "prediction_column" | "output_column",
        /// [`BatchJobConfig::chunk_rows`].
        ChunkRows = "chunk_rows",
        /// [`BatchJobConfig::output_prefix`].
        OutputPrefix = "output_prefix",
        /// [`BatchJobConfig::row_input`].
        RowInput = "row_input",
        /// [`BatchJobConfig::id_column`].
        IdColumn = "id_column",
        /// [`BatchJobConfig::log_every_row`].
        LogEveryRow = "log_every_row",
        /// [`BatchJobConfig::failed_rows_logged`].
        FailedRowsLogged = "failed_rows_logged",
    }
}

/// The `batch` section of an endpoint's spec, settable as KEY-VALUE pairs ([`Settings`], keys
/// [`BatchJobKey`]) or from `SERVING_BATCH_<KEY>` environment variables
/// (`SERVING_BATCH_CHUNK_ROWS`, …).
///
/// Every key has a default, so `kind: {type: batch}` is a complete section. In a spec, keys are
/// the field names; an unknown one is an error that names it and lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BatchJobConfig {
    /// The output column that holds each row's prediction, beside the input columns
    /// (`prediction_column`, alias `output_column`), `prediction` by default.
    pub prediction_column: String,
    /// Rows read and predicted at a time (`chunk_rows`), 1000 by default: memory stays bounded
    /// whatever the size of the input.
    pub chunk_rows: usize,
    /// Key prefix of the outputs and run records in the dataset store (`output_prefix`),
    /// `batches` by default.
    pub output_prefix: String,
    /// How a row reaches the predictor (`row_input`): `positional` (default), its values in
    /// column order as positional arguments; or `object`, one JSON object keyed by column
    /// name (for predictors that take a struct).
    pub row_input: RowInput,
    /// A column that holds each row's request id (`id_column`), not passed to the predictor;
    /// empty (default) generates one per row.
    pub id_column: String,
    /// Records every row in the prediction log (`log_every_row`), off by default: only failed
    /// rows are, up to [`BatchJobConfig::failed_rows_logged`].
    pub log_every_row: bool,
    /// Failed rows of one run recorded in the prediction log at most (`failed_rows_logged`),
    /// 1000 by default; every failed row is in the output either way.
    pub failed_rows_logged: u64,
}

/// How a CSV row reaches the predictor ([`BatchJobConfig::row_input`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowInput {
    /// The row's values in column order, as positional arguments (`input_params` as a list).
    #[default]
    Positional,
    /// One JSON object of the row's values keyed by column name.
    Object,
}

impl Default for BatchJobConfig {
    fn default() -> Self {
        BatchJobConfig {
            prediction_column: "prediction".to_owned(),
            chunk_rows: 1000,
            output_prefix: "batches".to_owned(),
            row_input: RowInput::Positional,
            id_column: String::new(),
            log_every_row: false,
            failed_rows_logged: 1000,
        }
    }
}

impl BatchJobConfig {
    /// The spec's `type` tag of this section.
    pub const KIND: &'static str = "batch";

    /// The section of a `batch` spec, read and validated.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`](serving_core::Error::InvalidSpec) when the spec is of another kind or its section holds an unknown
    /// key (named, with the valid ones) or a value of the wrong type; what
    /// [`BatchJobConfig::validate`] refuses.
    pub fn from_spec(spec: &EndpointSpec) -> Result<Self> {
        Self::from_section(spec.section_of(Self::KIND)?)
    }

    /// The config from a `batch` section, validated.
    ///
    /// # Errors
    /// As [`BatchJobConfig::from_spec`].
    pub fn from_section(section: &BackendSection) -> Result<Self> {
        let config: Self = section.parse(Self::KIND)?;
        config.validate()?;
        Ok(config)
    }

    /// The endpoint kind that holds this config, for [`EndpointSpec::kind`].
    pub fn to_kind(&self) -> EndpointKind {
        EndpointKind::Batch(
            BackendSection::from_config(self).expect("a batch config is a map without `type`"),
        )
    }

    /// Checks the values a spec could set out of range: a column name, at least one row per
    /// chunk, a key prefix without empty or `..` parts.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`](serving_core::Error::InvalidSetting) naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.prediction_column.trim().is_empty() {
            return Err(Setting::new("prediction_column", &self.prediction_column)
                .invalid("expected a column name"));
        }
        if self.chunk_rows == 0 {
            return Err(Setting::new("chunk_rows", "0").invalid("expected at least one row"));
        }
        if !prefix_ok(&self.output_prefix) {
            return Err(Setting::new("output_prefix", &self.output_prefix)
                .invalid("expected a key prefix such as `batches`"));
        }
        Ok(())
    }
}

fn prefix_ok(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .split('/')
            .all(|part| !part.is_empty() && part != "..")
}

impl From<BatchJobConfig> for EndpointKind {
    fn from(config: BatchJobConfig) -> Self {
        config.to_kind()
    }
}

impl Settings for BatchJobConfig {
    type Key = BatchJobKey;
    const ENV_PREFIX: &'static str = "SERVING_BATCH_";

    fn set_key(&mut self, key: BatchJobKey, value: &Setting<'_>) -> Result<()> {
        match key {
            BatchJobKey::PredictionColumn => {
                self.prediction_column = value.non_empty("expected a column name")?.to_owned();
            }
            BatchJobKey::ChunkRows => self.chunk_rows = value.positive()? as usize,
            BatchJobKey::OutputPrefix => {
                let prefix = value.value().trim().trim_matches('/');
                if !prefix_ok(prefix) {
                    return Err(value.invalid("expected a key prefix such as `batches`"));
                }
                self.output_prefix = prefix.to_owned();
            }
            BatchJobKey::RowInput => {
                self.row_input = match value.value().trim() {
                    "positional" => RowInput::Positional,
                    "object" => RowInput::Object,
                    _ => return Err(value.invalid("expected `positional` or `object`")),
                };
            }
            BatchJobKey::IdColumn => self.id_column = value.value().trim().to_owned(),
            BatchJobKey::LogEveryRow => self.log_every_row = value.parse()?,
            BatchJobKey::FailedRowsLogged => {
                self.failed_rows_logged = value.whole("0 logs no failed row")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serving_core::ModelRef;

    use super::*;

    #[test]
    fn a_spec_with_a_batch_section_round_trips() {
        let saved = "name: nightly\nmodel: {name: tree, version: '1'}\nkind: {type: batch}\n";
        let spec = EndpointSpec::from_yaml(saved).unwrap();
        assert_eq!(
            BatchJobConfig::from_spec(&spec).unwrap(),
            BatchJobConfig::default()
        );

        let mut config = BatchJobConfig::default();
        config
            .apply([("output_column", "score"), ("chunk_rows", "250")])
            .unwrap();
        let mut spec = EndpointSpec::new("nightly", ModelRef::new("tree", "1"));
        spec.kind = config.clone().into();
        let reread = EndpointSpec::from_yaml(&spec.to_yaml()).unwrap();
        assert_eq!(reread, spec);
        assert_eq!(BatchJobConfig::from_spec(&reread).unwrap(), config);
    }

    #[test]
    fn an_unknown_key_in_the_section_is_named() {
        let spec = EndpointSpec::from_yaml(
            "name: nightly\nmodel: {name: tree, version: '1'}\nkind: {type: batch, chunk_row: 5}\n",
        )
        .unwrap();
        let error = BatchJobConfig::from_spec(&spec).unwrap_err().to_string();
        assert!(error.contains("unknown field `chunk_row`"), "{error}");
        assert!(
            error.contains("`prediction_column`, `chunk_rows`, `output_prefix`, `row_input`"),
            "{error}"
        );
        let web = EndpointSpec::new("web", ModelRef::new("tree", "1"));
        assert!(BatchJobConfig::from_spec(&web).is_err());
    }

    #[test]
    fn key_value_pairs_and_the_environment() {
        let mut config = BatchJobConfig::default();
        let unknown = config.set("rows", "5").unwrap_err().to_string();
        assert!(
            unknown.contains(
                "valid settings are: prediction_column, output_column, chunk_rows, output_prefix, row_input"
            ),
            "{unknown}"
        );
        let bad = config.set("chunk_rows", "0").unwrap_err().to_string();
        assert!(bad.contains("`0`") && bad.contains("`chunk_rows`"), "{bad}");
        assert!(config.set("output_prefix", "a/../b").is_err());
        let config = BatchJobConfig::from_lookup(|var| {
            (var == "SERVING_BATCH_OUTPUT_PREFIX").then(|| "/runs/".to_owned())
        })
        .unwrap();
        assert_eq!(config.output_prefix, "runs");
        let zero = BatchJobConfig {
            chunk_rows: 0,
            ..BatchJobConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
