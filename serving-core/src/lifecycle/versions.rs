//! Model versions: the history an endpoint keeps, and [`ModelUpdate`], a new version to roll
//! out.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::spec::EndpointSpec;
use crate::model::predictor::{DynPredictor, Predictor, PredictorExt};
use crate::model::preprocess::Preprocessed;
use crate::model::signature::ModelSignature;

/// One version in an endpoint's history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ModelVersion {
    /// The version's id (the original product's model "title"): `"1"`, `"2"`, … unless chosen.
    pub id: String,
    /// When it was deployed.
    #[serde(with = "super::status::epoch_secs")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub created_at: SystemTime,
    /// What changed, as told by whoever deployed it.
    pub description: String,
    /// What it is now.
    pub state: VersionState,
    /// Whether its predictor is still in memory (instant rollback); older retired versions are
    /// unloaded and rebuilt from the endpoint's [`ModelRegistry`](crate::ModelRegistry) when
    /// rolled back to.
    pub loaded: bool,
    /// The spec it came from: the endpoint's spec with this version's model, preprocess and
    /// signature.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: EndpointSpec,
}

/// What a version is now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Answers all traffic not sent to the candidate.
    Stable,
    /// Answers a share of traffic until promoted or rolled back.
    Candidate,
    /// Gets a mirrored share of traffic; its answers are recorded, never returned.
    Shadow,
    /// Was stable and was replaced by a newer version.
    Retired,
    /// Was rolled back (a candidate that was dropped, or a stable version reverted).
    RolledBack,
    /// Was shadowed and the shadow stopped.
    ShadowEnded,
}

/// A new model version to roll out with
/// [`Lifecycle::update_model`](crate::Lifecycle::update_model) or to mirror with
/// [`Lifecycle::shadow_model`](crate::Lifecycle::shadow_model).
///
/// ```
/// use serving_core::{ModelUpdate, Result, predictor_fn};
///
/// let update = ModelUpdate::new(predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) }))
///     .description("retrained on May data");
/// # let _ = update;
/// ```
#[derive(Debug, Clone)]
pub struct ModelUpdate {
    pub(crate) predictor: Arc<DynPredictor>,
    pub(crate) model: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) description: String,
    pub(crate) preprocess: Option<String>,
    pub(crate) signature: Option<ModelSignature>,
}

impl ModelUpdate {
    /// A new version served by `predictor`; its id is the previous highest plus one unless
    /// [`ModelUpdate::version`] names it.
    pub fn new(predictor: impl Predictor) -> Self {
        Self::from_dyn(predictor.into_dyn())
    }

    /// [`ModelUpdate::new`] for a predictor that is already type-erased.
    pub fn from_dyn(predictor: Arc<DynPredictor>) -> Self {
        ModelUpdate {
            predictor,
            model: None,
            version: None,
            description: String::new(),
            preprocess: None,
            signature: None,
        }
    }

    /// Names the version instead of numbering it.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The model's name, when the new version is a different model; the endpoint's current
    /// model name otherwise.
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = Some(name.into());
        self
    }

    /// Says what changed; shown in the version history.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Runs `preprocess` (named `name` in the spec) before this version's predictor. A
    /// version's predictor is complete: the previous version's preprocess is not carried over.
    pub fn preprocess(mut self, name: impl Into<String>, preprocess: impl Predictor) -> Self {
        self.preprocess = Some(name.into());
        self.predictor = Arc::new(Preprocessed::new(preprocess, self.predictor));
        self
    }

    /// Records `name` as this version's preprocess when the predictor already includes it.
    pub(crate) fn preprocess_name(mut self, name: Option<String>) -> Self {
        self.preprocess = name;
        self
    }

    /// The version's inputs and outputs for the Open Inference Protocol routes; the previous
    /// version's signature is kept otherwise.
    pub fn signature(mut self, signature: ModelSignature) -> Self {
        self.signature = Some(signature);
        self
    }
}

/// The id after the highest numeric id in `ids` ("previous + 1", as the original product
/// titles versions); `count + 1` when none is numeric, bumped past any id already taken.
pub(crate) fn next_version<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> String {
    let highest = ids.clone().filter_map(|id| id.parse::<u64>().ok()).max();
    let mut next = highest.map_or_else(|| ids.clone().count() as u64 + 1, |n| n + 1);
    while ids.clone().any(|id| id == next.to_string()) {
        next += 1;
    }
    next.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_version_is_previous_plus_one() {
        assert_eq!(next_version(["1"].into_iter()), "2");
        assert_eq!(next_version(["1", "7", "3"].into_iter()), "8");
        assert_eq!(next_version(["a", "b"].into_iter()), "3");
        assert_eq!(next_version(["a", "3"].into_iter()), "4");
        assert_eq!(next_version(["a", "2"].into_iter()), "3");
        assert_eq!(next_version(["x", "y", "2"].into_iter()), "3");
    }
}
