//! Serves a file-input model: a digit classifier trained at start-up on the 8x8 digits
//! dataset, queried with a Base64 PNG image.
//!
//! ```text
//! cargo run --release --example digits
//! ```
//!
//! It writes one dataset digit as a PNG to a temporary directory and prints a `curl` that
//! sends it Base64-encoded; Ctrl-C stops it gracefully and removes the directory.

#[path = "models/digits.rs"]
mod digits;

mod common;

use serving::http::shutdown_signal;
use serving::prelude::*;
use tokio::net::TcpListener;

const ENDPOINT: &str = "digits";

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let model = digits::Digits::train()?;
    println!(
        "Trained a digit classifier (k-nearest neighbours on 8x8 images): held-out accuracy {:.1}%",
        model.holdout_accuracy * 100.0
    );

    let samples = tempfile::Builder::new()
        .prefix("serving-digits-")
        .tempdir()?;
    let (png, label) = model.sample_png(3);
    let sample = samples.path().join(format!("digit-{label}.png"));
    std::fs::write(&sample, png)?;

    let endpoint = model
        .endpoint(ENDPOINT)
        .token_env("SERVING_TOKEN")
        .build()?;
    let service = WebService::builder()
        .config(WebServiceConfig::from_env()?)
        .endpoint(endpoint)
        .build()?;
    let token = service
        .token(ENDPOINT)
        .expect("endpoints require a token by default")
        .expose()
        .to_owned();

    let listener = TcpListener::bind(service.config().addr).await?;
    let url = format!(
        "http://{}/api/v1/endpoints/{ENDPOINT}",
        listener.local_addr()?
    );
    println!("Endpoint: {url}");
    println!("Token:    {token}");
    println!("Sample:   {} (a {label})", sample.display());
    println!("Try it:");
    println!(
        "  curl -s -X POST {url} -H 'Content-Type: application/json' -H 'Cnvrg-Api-Key: {token}' -d \"{{\\\"input_params\\\": \\\"$(base64 < {} | tr -d '\\n')\\\"}}\"",
        sample.display()
    );
    println!("Press Ctrl-C to stop.");

    service.serve_on(listener, shutdown_signal()).await?;
    println!("Stopped.");
    Ok(())
}
