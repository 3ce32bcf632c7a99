//! How a [`serving_core::Error`] becomes an HTTP response: `{"error": "..."}` with its status.
//!
//! The status is decided here, at the HTTP edge, from the error's [`Outcome`]; the core only
//! classifies ([`Error::outcome`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use serving_core::{Error, Outcome};

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

    /// The same answer, its message led by `context` (which part of a request failed).
    pub(crate) fn within(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// `error`, told to the caller; internal failures are opaque and point at the request id
    /// under which the cause is logged.
    pub(crate) fn from_core(error: &Error, request_id: &str) -> Self {
        let status = status_of(error);
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

/// The HTTP status the web service answers `error` with: [`outcome_status`] of its outcome.
pub fn status_of(error: &Error) -> StatusCode {
    outcome_status(error.outcome())
}

/// The HTTP status of an outcome: 200; 400 malformed; 401 unauthenticated; 404 no such
/// endpoint or version; 408 body too slow; 409 conflict; 413 body too large; 415 not JSON;
/// 422 rejected input; 500 model or server failure; 503 not ready or overloaded; 504 timeout.
pub fn outcome_status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Ok => StatusCode::OK,
        Outcome::ClientError => StatusCode::BAD_REQUEST,
        Outcome::Unauthenticated => StatusCode::UNAUTHORIZED,
        Outcome::NotFound => StatusCode::NOT_FOUND,
        Outcome::InputTimeout => StatusCode::REQUEST_TIMEOUT,
        Outcome::Conflict => StatusCode::CONFLICT,
        Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Outcome::UnsupportedFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Outcome::RejectedInput => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::NotReady | Outcome::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Outcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Outcome::ModelFailure | Outcome::ServerFailure => StatusCode::INTERNAL_SERVER_ERROR,
        // Outcomes added later are failures until mapped.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_outcome_has_its_status() {
        let table = [
            (Outcome::Ok, 200),
            (Outcome::ClientError, 400),
            (Outcome::Unauthenticated, 401),
            (Outcome::NotFound, 404),
            (Outcome::InputTimeout, 408),
            (Outcome::Conflict, 409),
            (Outcome::TooLarge, 413),
            (Outcome::UnsupportedFormat, 415),
            (Outcome::RejectedInput, 422),
            (Outcome::ModelFailure, 500),
            (Outcome::ServerFailure, 500),
            (Outcome::NotReady, 503),
            (Outcome::Overloaded, 503),
            (Outcome::Timeout, 504),
        ];
        assert_eq!(table.len(), Outcome::ALL.len());
        for (outcome, status) in table {
            assert_eq!(outcome_status(outcome).as_u16(), status, "{outcome}");
            // What the prediction log and /metrics record is what the caller was answered.
            assert_eq!(outcome.code(), status, "{outcome}");
        }
    }

    #[test]
    fn each_http_only_error_has_its_status() {
        for (error, status) in [
            (Error::Unauthorized, StatusCode::UNAUTHORIZED),
            (
                Error::UnsupportedMediaType {
                    content_type: "text/plain".into(),
                },
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                Error::BodyTimeout {
                    after: Duration::from_secs(1),
                },
                StatusCode::REQUEST_TIMEOUT,
            ),
            (
                Error::PayloadTooLarge { limit: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (Error::rejected("no"), StatusCode::UNPROCESSABLE_ENTITY),
            (
                Error::Overloaded {
                    endpoint: "e".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ] {
            assert_eq!(status_of(&error), status, "{error}");
        }
    }

    #[test]
    fn failures_are_opaque_and_overload_says_when_to_retry() {
        let failed = ApiError::from_core(&Error::from_predictor("secret cause"), "r1");
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!failed.message.contains("secret"), "{}", failed.message);
        let busy = ApiError::from_core(
            &Error::Overloaded {
                endpoint: "e".into(),
            },
            "r2",
        );
        assert!(busy.retry_after);
    }
}
