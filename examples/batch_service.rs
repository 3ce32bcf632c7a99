//! Serves a batch endpoint beside the web service: `flowers`, the quickstart's iris classifier,
//! built for each run and dropped after it, its runs submitted, followed, cancelled and
//! compared over REST and on the dashboard's Batch runs tab.
//!
//! ```text
//! cargo run --release --features batch --example batch_service
//! ```
//!
//! Datasets live under `$SERVING_DATASETS` (default `./serving-data/datasets`); the address is
//! `$SERVING_ADDR` (default `127.0.0.1:8080`) and the endpoint's token `$SERVING_TOKEN`
//! (generated and printed when unset). It writes `iris/in/iris.csv` (the 150 iris samples) into
//! the datasets when that file is missing, so the printed `curl` works at once.

#[path = "models/iris.rs"]
#[allow(dead_code)] // the web endpoint builder is not used here
mod iris;

use std::sync::Arc;

use serving::batch::{BatchJobConfig, BatchService};
use serving::datasets::{Datasets, Overwrite};
use serving::http::{Observability, WebService, WebServiceConfig, shutdown_signal};
use serving::{Bytes, EndpointSpec, ModelRef, ModelRegistry};
use tokio::net::TcpListener;

/// The batch endpoint's name.
pub const ENDPOINT: &str = "flowers";

/// The web service with the batch endpoint `flowers` attached, over `datasets`.
pub fn web_service(
    datasets: Datasets,
    config: WebServiceConfig,
) -> Result<WebService, Box<dyn std::error::Error>> {
    // The model's factory: a batch endpoint calls it when a run starts.
    let registry = Arc::new(ModelRegistry::new());
    iris::Iris::train()?.register(&registry);

    let mut spec = EndpointSpec::new(ENDPOINT, ModelRef::new("iris-knn", "1"));
    spec.preprocess = Some("standardise".into());
    spec.kind = BatchJobConfig::default().into();
    spec.auth.token_env = Some("SERVING_TOKEN".into());

    let batches = BatchService::builder(datasets)
        .registry(registry)
        .endpoint(spec.clone())?
        .build()?;
    let service = WebService::builder()
        .config(config)
        .observability(Observability::new()) // `/dashboard`, `/metrics`
        .batch_endpoint(&spec, Arc::new(batches))
        .build()?;
    Ok(service)
}

/// Writes the iris samples to `iris/in/iris.csv` unless the file exists.
pub async fn iris_dataset(datasets: &Datasets) -> Result<(), Box<dyn std::error::Error>> {
    let iris = datasets.dataset("iris")?;
    if iris.head("in/iris.csv").await?.is_some() {
        return Ok(());
    }
    let samples = smartcore::dataset::iris::load_dataset();
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width\n");
    for row in samples.data.chunks_exact(samples.num_features) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    iris.put("in/iris.csv", Bytes::from(csv), Overwrite::Refuse)
        .await?;
    Ok(())
}

#[tokio::main]
#[allow(dead_code)] // the integration tests include this file for `web_service`
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serving::logging::init_json()?;
    let datasets = Datasets::from_env()?;
    iris_dataset(&datasets).await?;
    let service = web_service(datasets.clone(), WebServiceConfig::from_env()?)?;
    let token = service
        .token(ENDPOINT)
        .expect("batch endpoints require a token by default")
        .expose()
        .to_owned();
    let listener = TcpListener::bind(service.config().addr).await?;
    let url = format!(
        "http://{}/api/v1/endpoints/{ENDPOINT}/batches",
        listener.local_addr()?
    );
    println!("Datasets: {}", datasets.url());
    println!("Batch runs: {url}");
    println!("Token:      {token}");
    println!("Try it:");
    println!(
        "  curl -s -X POST {url} -H 'Cnvrg-Api-Key: {token}' -H 'Content-Type: application/json' -d '{{\"input_file\": \"in/iris.csv\", \"output_file\": \"out/predictions.csv\", \"dataset\": \"iris\", \"overwrite\": true}}'"
    );
    println!("  curl -s {url} -H 'Cnvrg-Api-Key: {token}'");
    println!(
        "Dashboard (Batch runs tab): http://{}/dashboard#endpoint={ENDPOINT}&token={token}",
        listener.local_addr()?
    );
    service.serve_on(listener, shutdown_signal()).await?;
    Ok(())
}
