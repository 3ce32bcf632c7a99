//! The iris classifier of the quickstart, shared with the integration tests: k-nearest
//! neighbours trained at start-up on the iris dataset that `smartcore` ships, behind a
//! preprocess step that standardises the four measurements.

use std::sync::Arc;

use serving::prelude::*;
use serving::{ModelEndpointBuilder, ModelRegistry};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::neighbors::knn_classifier::{KNNClassifier, KNNClassifierParameters};

/// The species, in the order of the dataset's class labels.
pub const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];

type Knn = KNNClassifier<
    f64,
    u32,
    DenseMatrix<f64>,
    Vec<u32>,
    smartcore::metrics::distance::euclidian::Euclidian<f64>,
>;

/// A trained iris model and the scaling its inputs need.
pub struct Iris {
    knn: Arc<Knn>,
    scaler: Scaler,
    /// Share of the training samples the model classifies correctly.
    pub training_accuracy: f64,
}

/// Standardises measurements with the training set's means and standard deviations; KNN
/// compares distances, so no measurement may dominate by its scale alone.
#[derive(Debug, Clone, Copy)]
pub struct Scaler {
    means: [f64; 4],
    stds: [f64; 4],
}

impl Scaler {
    fn fit(rows: &[[f64; 4]]) -> Self {
        let n = rows.len() as f64;
        let mut means = [0.0; 4];
        let mut stds = [0.0; 4];
        for column in 0..4 {
            means[column] = rows.iter().map(|r| r[column]).sum::<f64>() / n;
            let variance = rows
                .iter()
                .map(|r| (r[column] - means[column]).powi(2))
                .sum::<f64>()
                / n;
            stds[column] = variance.sqrt().max(f64::EPSILON);
        }
        Scaler { means, stds }
    }

    /// `(x - mean) / std`, measurement by measurement.
    pub fn apply(&self, measurements: [f64; 4]) -> [f64; 4] {
        std::array::from_fn(|i| (measurements[i] - self.means[i]) / self.stds[i])
    }
}

impl Iris {
    /// Trains on the whole dataset (150 samples) and measures the training accuracy.
    pub fn train() -> Result<Self, smartcore::error::Failed> {
        Self::train_with_k(5)
    }

    /// As [`Iris::train`], voting among the `k` nearest neighbours (two values of `k` are two
    /// versions of the model).
    pub fn train_with_k(k: usize) -> Result<Self, smartcore::error::Failed> {
        let dataset = smartcore::dataset::iris::load_dataset();
        let rows: Vec<[f64; 4]> = dataset
            .data
            .chunks_exact(dataset.num_features)
            .map(|row| std::array::from_fn(|i| f64::from(row[i])))
            .collect();
        let scaler = Scaler::fit(&rows);
        let scaled: Vec<Vec<f64>> = rows.iter().map(|r| scaler.apply(*r).to_vec()).collect();
        let x = DenseMatrix::from_2d_vec(&scaled)?;
        let knn = Knn::fit(
            &x,
            &dataset.target,
            KNNClassifierParameters::default().with_k(k),
        )?;
        let predicted = knn.predict(&x)?;
        let correct = predicted
            .iter()
            .zip(&dataset.target)
            .filter(|(p, t)| p == t)
            .count();
        Ok(Iris {
            knn: Arc::new(knn),
            scaler,
            training_accuracy: correct as f64 / rows.len() as f64,
        })
    }

    /// The scaling its inputs need.
    #[allow(dead_code)] // used by the Kafka example, not the quickstart
    pub fn scaler(&self) -> Scaler {
        self.scaler
    }

    /// The species of standardised measurements.
    #[allow(dead_code)] // used by the Kafka example, not the quickstart
    pub fn species(&self, scaled: [f64; 4]) -> Result<&'static str> {
        let x = DenseMatrix::from_2d_vec(&vec![scaled.to_vec()]).map_err(Error::from_predictor)?;
        let class = self.knn.predict(&x).map_err(Error::from_predictor)?[0];
        SPECIES
            .get(class as usize)
            .copied()
            .ok_or_else(|| Error::from_predictor(format!("unknown class {class}")))
    }

    /// An endpoint named `name`: `input_params` is `[sepal length, sepal width, petal length,
    /// petal width]` in cm, the prediction is the species name.
    pub fn endpoint(&self, name: &str) -> ModelEndpointBuilder {
        ModelEndpoint::builder(name, self.classify())
            .model("iris-knn", "1")
            .preprocess("standardise", self.standardise())
    }

    /// Registers the model as `iris-knn` version `1` and its preprocess as `standardise`, for
    /// endpoints built from a spec (a batch endpoint builds its model per run).
    #[allow(
        dead_code,
        reason = "the batch tests and bench use it, the quickstart does not"
    )]
    pub fn register(&self, registry: &ModelRegistry) {
        let classify = self.classify();
        registry.register("iris-knn", "1", move || Ok(classify.clone()));
        let standardise = self.standardise();
        registry.register_preprocess("standardise", move || Ok(standardise.clone()));
    }

    /// The preprocess step: checks and standardises the four measurements.
    pub fn standardise(&self) -> impl Predictor + Clone {
        let scaler = self.scaler;
        predictor_fn(
            move |sepal_len: f64, sepal_w: f64, petal_len: f64, petal_w: f64| -> Result<[f64; 4]> {
                let measurements = [sepal_len, sepal_w, petal_len, petal_w];
                if measurements.iter().any(|m| *m <= 0.0) {
                    return Err(Error::rejected(format!(
                        "measurements are lengths in cm and must be positive, got {measurements:?}"
                    )));
                }
                // An input worth watching for drift: it charts per minute on the dashboard.
                log_metric("petal_length_cm", petal_len);
                Ok(scaler.apply(measurements))
            },
        )
        // Both steps answer in microseconds: running them on the request's own thread saves
        // two hops to the blocking pool and back, which cost more than the model.
        .inline()
    }

    /// The classifier: standardised measurements in, the species name out.
    pub fn classify(&self) -> impl Predictor + Clone {
        let knn = Arc::clone(&self.knn);
        predictor_fn(
            move |a: f64, b: f64, c: f64, d: f64| -> Result<&'static str> {
                let x = DenseMatrix::from_2d_vec(&vec![vec![a, b, c, d]])
                    .map_err(Error::from_predictor)?;
                let class = knn.predict(&x).map_err(Error::from_predictor)?[0];
                SPECIES
                    .get(class as usize)
                    .copied()
                    .ok_or_else(|| Error::from_predictor(format!("unknown class {class}")))
            },
        )
        .inline()
    }
}
