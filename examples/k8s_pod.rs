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
//! The image to put in a `ServingEndpoint` is this binary's (a `FROM scratch`-style image with
//! it as the entrypoint). SIGTERM drains it: not ready first, then the requests in flight
//! finish within `$SERVING_DRAIN_TIMEOUT` seconds.

#[path = "models/iris.rs"]
#[allow(dead_code)] // the quickstart's endpoint builder is not used here
mod iris;

use std::sync::Arc;

use serving::ModelRegistry;
use serving::http::shutdown_signal;
use serving::pod::Pod;

/// The registry of the quickstart's model: `iris-knn` version `1` and the preprocess
/// `standardise`.
pub fn registry() -> Result<Arc<ModelRegistry>, Box<dyn std::error::Error>> {
    let registry = Arc::new(ModelRegistry::new());
    iris::Iris::train()?.register(&registry);
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
