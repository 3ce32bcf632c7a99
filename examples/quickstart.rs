//! Serves an iris classifier trained at start-up, with a preprocess step that standardises
//! the four measurements.
//!
//! ```text
//! cargo run --release --example quickstart        # or: make quickstart
//! SERVING_ADDR=0.0.0.0:9000 SERVING_TOKEN=secret cargo run --release --example quickstart
//! ```
//!
//! It prints the endpoint's URL, its token and a `curl` to paste; Ctrl-C stops it gracefully.

#[path = "models/iris.rs"]
mod iris;

mod common;

use serving::http::shutdown_signal;
use serving::prelude::*;
use tokio::net::TcpListener;

const ENDPOINT: &str = "iris";

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let model = iris::Iris::train()?;
    println!(
        "Trained an iris classifier (k-nearest neighbours, 150 samples): training accuracy {:.1}%",
        model.training_accuracy * 100.0
    );

    let endpoint = model.endpoint(ENDPOINT).build()?;
    let service = WebService::builder().config(WebServiceConfig::from_env()?);
    let service = match std::env::var("SERVING_TOKEN") {
        Ok(secret) if !secret.is_empty() => {
            service.endpoint_with_token(endpoint, Token::new(secret))
        }
        _ => service.endpoint(endpoint),
    }
    .build()?;
    let token = service
        .token(ENDPOINT)
        .expect("endpoints require a token by default")
        .expose()
        .to_owned();

    // Bind before printing, so the printed address is the real one (also with port 0).
    let listener = TcpListener::bind(service.config().addr).await?;
    let url = format!(
        "http://{}/api/v1/endpoints/{ENDPOINT}",
        listener.local_addr()?
    );
    println!("Endpoint: {url}");
    println!("Token:    {token}");
    println!("Try it:");
    println!(
        "  curl -s -X POST {url} -H 'Content-Type: application/json' -H 'Cnvrg-Api-Key: {token}' -d '{{\"input_params\": [5.1, 3.5, 1.4, 0.2]}}'"
    );
    println!("Press Ctrl-C to stop.");

    service.serve_on(listener, shutdown_signal()).await?;
    println!("Stopped.");
    Ok(())
}
