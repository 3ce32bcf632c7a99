//! [`ModelRegistry`]: named predictor factories, so that a spec (which names a model and a
//! version but cannot hold code) can be deployed again, and the REST control plane can roll
//! out a version by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::config::spec::{EndpointSpec, ModelRef};
use crate::endpoint::{ModelEndpoint, ModelEndpointBuilder};
use crate::error::{Error, Result};
use crate::lifecycle::ModelUpdate;
use crate::model::predictor::{DynPredictor, Predictor, PredictorExt};
use crate::model::preprocess::Preprocessed;

type Factory = Arc<dyn Fn() -> Result<Arc<DynPredictor>> + Send + Sync>;

/// Maps model name and version to a factory that builds its predictor, and preprocess names to
/// theirs.
///
/// ```
/// use std::sync::Arc;
/// use serving_core::{ModelEndpoint, ModelRegistry, Result, predictor_fn};
///
/// # fn main() -> Result<()> {
/// let registry = Arc::new(ModelRegistry::new());
/// registry.register("doubler", "1", || Ok(predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) })));
/// let endpoint = ModelEndpoint::builder("double", predictor_fn(|x: f64| -> Result<f64> { Ok(2.0 * x) }))
///     .model("doubler", "1")
///     .registry(Arc::clone(&registry))
///     .build()?;
/// // Rerun: the same spec, deployed again as a new endpoint.
/// let mut spec = endpoint.export_spec();
/// spec.name = "double-again".into();
/// let again = ModelEndpoint::from_spec(spec, &registry)?.build()?;
/// # let _ = again; Ok(()) }
/// ```
#[derive(Default)]
pub struct ModelRegistry {
    models: RwLock<BTreeMap<(String, String), Factory>>,
    preprocessors: RwLock<BTreeMap<String, Factory>>,
}

impl fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("models", &read(&self.models).keys().collect::<Vec<_>>())
            .field(
                "preprocessors",
                &read(&self.preprocessors).keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the factory of model `name` at `version`, replacing any earlier one.
    pub fn register<P, F>(&self, name: impl Into<String>, version: impl Into<String>, factory: F)
    where
        P: Predictor,
        F: Fn() -> Result<P> + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || factory().map(PredictorExt::into_dyn));
        write(&self.models).insert((name.into(), version.into()), factory);
    }

    /// Registers the factory of the preprocess function `name`.
    pub fn register_preprocess<P, F>(&self, name: impl Into<String>, factory: F)
    where
        P: Predictor,
        F: Fn() -> Result<P> + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || factory().map(PredictorExt::into_dyn));
        write(&self.preprocessors).insert(name.into(), factory);
    }

    /// The registered versions of model `name`.
    pub fn versions(&self, name: &str) -> Vec<String> {
        read(&self.models)
            .keys()
            .filter(|(model, _)| model == name)
            .map(|(_, version)| version.clone())
            .collect()
    }

    /// Builds the predictor of `model`, preceded by the preprocess `preprocess` when named.
    pub fn predictor(
        &self,
        model: &ModelRef,
        preprocess: Option<&str>,
    ) -> Result<Arc<DynPredictor>> {
        let factory = read(&self.models)
            .get(&(model.name.clone(), model.version.clone()))
            .cloned()
            .ok_or_else(|| Error::InvalidSpec {
                reason: format!(
                    "model `{}` version `{}` is not in the registry",
                    model.name, model.version
                ),
            })?;
        let predictor = factory()?;
        let Some(name) = preprocess else {
            return Ok(predictor);
        };
        let preprocess = read(&self.preprocessors)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::InvalidSpec {
                reason: format!("preprocess `{name}` is not in the registry"),
            })?;
        Ok(Arc::new(Preprocessed::new(preprocess()?, predictor)))
    }

    /// A [`ModelUpdate`] to `model`, preceded by the preprocess `preprocess` when named.
    pub fn update(&self, model: &ModelRef, preprocess: Option<&str>) -> Result<ModelUpdate> {
        Ok(ModelUpdate::from_dyn(self.predictor(model, preprocess)?)
            .model(model.name.clone())
            .version(model.version.clone())
            .preprocess_name(preprocess.map(str::to_owned)))
    }
}

impl ModelEndpoint {
    /// Starts building an endpoint from `spec`, with its model and preprocess built by
    /// `registry`: "rerun" an exported spec unchanged, or edited, as a new endpoint. The
    /// endpoint keeps the registry, so its control plane can roll out registered versions.
    pub fn from_spec(
        spec: EndpointSpec,
        registry: &Arc<ModelRegistry>,
    ) -> Result<ModelEndpointBuilder> {
        spec.validate()?;
        let predictor = registry.predictor(&spec.model, spec.preprocess.as_deref())?;
        Ok(ModelEndpoint::builder(spec.name.clone(), predictor)
            .spec(spec)
            .registry(Arc::clone(registry)))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
