//! The binary a `ServingEndpoint`'s pods run: the quickstart's iris classifier, served as the
//! mounted spec says (`serving::pod`).
//!
//! On the cluster, the Deployment mounts the spec at `$SERVING_SPEC` and the token from the
//! endpoint's Secret in `$SERVING_TOKEN`. To try it outside:
//!
//! ```text
//! printf 'name: iris\nmodel: {name: iris-knn, version: "1"}\npreprocess: standardise\n' > /tmp/iris.yaml
//! SERVING_SPEC=/tmp/iris.yaml SERVING_TOKEN=secret cargo run --example k8s_pod
//! curl -s -X POST localhost:8080/api/v1/endpoints/iris -H 'Cnvrg-Api-Key: secret' \
//!   -H 'Content-Type: application/json' -d '{"input_params": [5.1, 3.5, 1.4, 0.2]}'
//! ```
//!
//! A Kafka stream's spec names the preprocess `measurements` (each message is one value); a web
//! service's or batch endpoint's names `standardise`.
//!
//! The image to put in a `ServingEndpoint` is this binary's (a `FROM scratch`-style image with
//! it as the entrypoint). SIGTERM drains it: not ready first, then the requests in flight
//! finish within `$SERVING_DRAIN_TIMEOUT` seconds.

#[path = "models/iris.rs"]
#[allow(dead_code)] // the quickstart's endpoint builder is not used here
mod iris;

use std::sync::Arc;

use serving::http::shutdown_signal;
use serving::pod::Pod;
use serving::prelude::*;

/// The registry of the quickstart's model: `iris-knn` version `1`, the preprocess
/// `standardise` (four measurements as arguments: a web service's `input_params`, a batch
/// row) and `measurements`, which reads one value, `[a, b, c, d]` or
/// `{"input_params": [a, b, c, d]}` (a Kafka message), then standardises it.
pub fn registry() -> Result<Arc<ModelRegistry>, Box<dyn std::error::Error>> {
    let registry = Arc::new(ModelRegistry::new());
    let iris = iris::Iris::train()?;
    iris.register(&registry);
    let scaler = iris.scaler();
    registry.register_preprocess("measurements", move || {
        Ok(predictor_fn(move |value: Value| -> Result<[f64; 4]> {
            let row = match value {
                Value::Object(mut object) => object.remove("input_params").unwrap_or_default(),
                other => other,
            };
            let row: [f64; 4] = serde_json::from_value(row).map_err(|e| {
                Error::rejected(format!(
                    "expected [a, b, c, d] or {{\"input_params\": [a, b, c, d]}} in cm: {e}"
                ))
            })?;
            if row.iter().any(|m| *m <= 0.0) {
                return Err(Error::rejected(format!(
                    "measurements are lengths in cm and must be positive, got {row:?}"
                )));
            }
            Ok(scaler.apply(row))
        }))
    });
    Ok(registry)
}

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `registry`
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::logging::init_json()?;
    let pod = Pod::from_env()?;
    println!(
        "Serving `{}` ({}) from its spec",
        pod.spec().name,
        pod.spec().kind.name()
    );
    pod.serve(registry()?, shutdown_signal()).await?;
    println!("Drained.");
    Ok(())
}
