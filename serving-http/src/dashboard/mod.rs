//! The dashboard page at `/dashboard`: hand-written HTML, CSS and JavaScript embedded in the
//! binary, drawing SVG charts from the charts and logs APIs. Nothing is fetched from the
//! network but those APIs.
//!
//! The page holds no data; it asks for the endpoint's name and token (or reads them from the
//! URL fragment, `/dashboard#endpoint=NAME&token=TOKEN`, which browsers never send to the
//! server) and sends the token as `Cnvrg-Api-Key` on every fetch.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::ServiceState;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// `/dashboard` and its assets.
pub(crate) fn routes() -> Router<Arc<ServiceState>> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/style.css", get(style))
}

async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // Only this origin: the page must work with no network.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
