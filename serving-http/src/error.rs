//! How a [`serving_core::Error`] becomes an HTTP response: `{"error": "..."}` with its status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use serving_core::Error;

/// An error on its way out as a response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ApiError {
    /// A response with an explicit status, for HTTP-only conditions (405, 415).
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: false,
        }
    }

    /// `error`, told to the caller; internal failures are opaque and point at the request id
    /// under which the cause is logged.
    pub(crate) fn from_core(error: &Error, request_id: &str) -> Self {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            format!("prediction failed; see the server log for request {request_id}")
        } else {
            error.to_string()
        };
        ApiError {
            status,
            message,
            retry_after: matches!(error, Error::Overloaded { .. } | Error::NotReady { .. }),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::from_core(&error, "-")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
