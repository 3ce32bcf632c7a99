//! Serves an iris classifier trained at start-up, with a preprocess step that standardises
//! the four measurements.
//!
//! ```text
//! cargo run --release --example quickstart        # or: make quickstart
//! SERVING_ADDR=0.0.0.0:9000 SERVING_TOKEN=secret cargo run --release --example quickstart
//! ```
//!
//! It prints the endpoint's URL, its token and a `curl` to paste, and where to watch it: the
//! dashboard (charts and logs), `/metrics` (Prometheus) and the prediction log's directory.
//! Logs are JSON lines on stdout. Ctrl-C stops it gracefully, after writing every recorded
//! prediction.

#[path = "models/iris.rs"]
mod iris;

use serving::ActionSettings;
use serving::http::{Observability, shutdown_signal};
use serving::prediction_log::PredictionLogBuilder;
use serving::prelude::*;
use serving::setting::Settings as _;
use tokio::net::TcpListener;

const ENDPOINT: &str = "iris";

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    serving::logging::init_json()?;
    let model = iris::Iris::train()?;
    println!(
        "Trained an iris classifier (k-nearest neighbours, 150 samples): training accuracy {:.1}%",
        model.training_accuracy * 100.0
    );

    // Every prediction recorded (under ./serving-data unless SERVING_PREDICTION_LOG_DIR says
    // otherwise), measured for /metrics and the charts, and logged as a JSON line.
    let prediction_log = PredictionLogBuilder::from_env()?.build()?;
    let log_dir = prediction_log
        .config()
        .dir
        .join(&prediction_log.config().prefix);
    // Feedback loops export the log into datasets (./serving-data/datasets unless
    // SERVING_DATASETS names another root); the admin API starts them.
    let feedback = serving::FeedbackLoops::new(
        prediction_log.clone(),
        serving::datasets::Datasets::from_env()?,
    );
    let observability = Observability::new()
        .with_prediction_log(prediction_log)
        .with_log_lines(true);
    let endpoint = observability
        .instrument(model.endpoint(ENDPOINT).token_env("SERVING_TOKEN"))
        .build()?;
    let lifecycle = endpoint.lifecycle().clone();
    let service = WebService::builder()
        .config(WebServiceConfig::from_env()?)
        .observability(observability)
        .feedback_loops(feedback)
        .endpoint(endpoint)
        .build()?;
    let token = service
        .token(ENDPOINT)
        .expect("endpoints require a token by default")
        .expose()
        .to_owned();

    // Bind before printing, so the printed address is the real one (also with port 0).
    let listener = TcpListener::bind(service.config().addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let url = format!("{base}/api/v1/endpoints/{ENDPOINT}");
    // Alert emails link to this dashboard unless $SERVING_DASHBOARD_URL names another.
    let mut actions = ActionSettings::from_env()?;
    if actions.dashboard_url.is_none() {
        actions.set("dashboard_url", &base)?;
    }
    lifecycle.set_action_settings(actions);
    println!("Endpoint: {url}");
    println!("Token:    {token}");
    let admin = service.admin_token().expose().to_owned();
    println!("Admin:    {admin}   (Authorization: Bearer, for /api/v1/admin/...)");
    println!("Try it:");
    println!(
        "  curl -s -X POST {url} -H 'Content-Type: application/json' -H 'Cnvrg-Api-Key: {token}' -d '{{\"input_params\": [5.1, 3.5, 1.4, 0.2]}}'"
    );
    println!("Watch it:");
    println!("  dashboard:      {base}/dashboard#endpoint={ENDPOINT}&token={token}");
    println!("  Prometheus:     {base}/metrics");
    println!(
        "  prediction log: {}/{ENDPOINT}/ (JSON lines)",
        log_dir.display()
    );
    println!("  as CSV:         curl -s '{url}/logs.csv' -H 'Cnvrg-Api-Key: {token}'");
    println!(
        "  feedback loop:  curl -s -X POST {base}/api/v1/admin/endpoints/{ENDPOINT}/feedback -H 'Authorization: Bearer {admin}' -H 'Content-Type: application/json' -d '{{\"dataset\": \"iris-feedback\", \"schedule\": {{\"every_secs\": 5}}, \"format\": \"csv\"}}'"
    );
    println!("Press Ctrl-C to stop.");

    service.serve_on(listener, shutdown_signal()).await?;
    println!("Stopped.");
    Ok(())
}
