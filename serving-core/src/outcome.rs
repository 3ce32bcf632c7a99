//! [`Outcome`]: how a request ended, in words every transport, sink, chart and rule shares.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How one request ended, whatever transport carried it.
///
/// Every reader classifies requests through it, the same way: the canary's error rate and
/// Prometheus' `server` class count [`Outcome::counts_as_failure`], charts count
/// [`Outcome::is_error`], Prometheus' `client` class counts [`Outcome::is_client_fault`], and
/// the prediction log keeps what [`Outcome::is_recorded`] allows. An error's outcome is
/// [`Error::outcome`].
///
/// What an outcome is *answered* with belongs to the transport's edge: `serving-http` maps it
/// to an HTTP status, a stream or batch transport to its own result. [`Outcome::code`] is the
/// number records and metrics carry in their `status` field; it follows HTTP's numbering so
/// that logs of every transport read alike (the field predates the other transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Answered.
    #[default]
    Ok,
    /// The request is malformed (not JSON, bad Base64, a bad setting): the caller's fault.
    ClientError,
    /// The input reached the model's door and was refused: wrong arguments, or the predictor
    /// rejected it (a domain error).
    RejectedInput,
    /// No such endpoint or version.
    NotFound,
    /// A lifecycle operation the endpoint's state does not allow.
    Conflict,
    /// Refused before the model: missing or wrong credentials. Counted, never recorded in
    /// the prediction log (an unauthenticated caller must not be able to fill it).
    Unauthenticated,
    /// Refused before the model: the payload is larger than allowed.
    TooLarge,
    /// Refused before the model: the payload is not in a format the endpoint reads.
    UnsupportedFormat,
    /// Refused before the model: the payload did not arrive in time.
    InputTimeout,
    /// The predictor failed or panicked.
    ModelFailure,
    /// The predictor did not answer in time.
    Timeout,
    /// The endpoint was at its concurrency limit.
    Overloaded,
    /// The endpoint had no model ready.
    NotReady,
    /// The server failed around the model: storage, an action.
    ServerFailure,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 14] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::RejectedInput,
        Outcome::NotFound,
        Outcome::Conflict,
        Outcome::Unauthenticated,
        Outcome::TooLarge,
        Outcome::UnsupportedFormat,
        Outcome::InputTimeout,
        Outcome::ModelFailure,
        Outcome::Timeout,
        Outcome::Overloaded,
        Outcome::NotReady,
        Outcome::ServerFailure,
    ];

    /// Whether the request failed, for any reason.
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }

    /// Whether the caller is at fault: its input, credentials or payload. These say nothing
    /// about the model's health.
    pub fn is_client_fault(self) -> bool {
        matches!(
            self,
            Outcome::ClientError
                | Outcome::RejectedInput
                | Outcome::NotFound
                | Outcome::Conflict
                | Outcome::Unauthenticated
                | Outcome::TooLarge
                | Outcome::UnsupportedFormat
                | Outcome::InputTimeout
        )
    }

    /// Whether the model or the server failed the request: what a canary's error rate and
    /// health rules count.
    pub fn counts_as_failure(self) -> bool {
        self.is_error() && !self.is_client_fault()
    }

    /// Whether a transport refuses requests with this outcome before any model sees them.
    pub fn is_refused_before_model(self) -> bool {
        matches!(
            self,
            Outcome::Unauthenticated
                | Outcome::TooLarge
                | Outcome::UnsupportedFormat
                | Outcome::InputTimeout
        )
    }

    /// Whether record sinks (the prediction log) keep requests with this outcome; metrics
    /// count every outcome.
    pub fn is_recorded(self) -> bool {
        self != Outcome::Unauthenticated
    }

    /// The code records and metrics carry as `status`, numbered as HTTP numbers the same
    /// outcome so that logs of every transport compare.
    pub fn code(self) -> u16 {
        match self {
            Outcome::Ok => 200,
            Outcome::ClientError => 400,
            Outcome::Unauthenticated => 401,
            Outcome::NotFound => 404,
            Outcome::InputTimeout => 408,
            Outcome::Conflict => 409,
            Outcome::TooLarge => 413,
            Outcome::UnsupportedFormat => 415,
            Outcome::RejectedInput => 422,
            Outcome::ModelFailure | Outcome::ServerFailure => 500,
            Outcome::NotReady | Outcome::Overloaded => 503,
            Outcome::Timeout => 504,
        }
    }

    /// Its name in snake case, as it serializes.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::RejectedInput => "rejected_input",
            Outcome::NotFound => "not_found",
            Outcome::Conflict => "conflict",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::TooLarge => "too_large",
            Outcome::UnsupportedFormat => "unsupported_format",
            Outcome::InputTimeout => "input_timeout",
            Outcome::ModelFailure => "model_failure",
            Outcome::Timeout => "timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::NotReady => "not_ready",
            Outcome::ServerFailure => "server_failure",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<T> From<&crate::error::Result<T>> for Outcome {
    fn from(result: &crate::error::Result<T>) -> Self {
        result.as_ref().map_or_else(Error::outcome, |_| Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_error_has_the_outcome_and_code_it_had_as_a_status() {
        let cases: Vec<(Error, Outcome, u16)> = vec![
            (Error::invalid_request("x"), Outcome::ClientError, 400),
            (
                Error::InvalidSpec { reason: "x".into() },
                Outcome::ClientError,
                400,
            ),
            (
                Error::UnknownSetting {
                    key: "k".into(),
                    valid: vec![],
                },
                Outcome::ClientError,
                400,
            ),
            (
                Error::InvalidSetting {
                    key: "k".into(),
                    value: "v".into(),
                    reason: "r".into(),
                },
                Outcome::ClientError,
                400,
            ),
            (Error::Unauthorized, Outcome::Unauthenticated, 401),
            (
                Error::EndpointNotFound {
                    endpoint: "e".into(),
                },
                Outcome::NotFound,
                404,
            ),
            (
                Error::NotBatchEndpoint {
                    endpoint: "e".into(),
                },
                Outcome::NotFound,
                404,
            ),
            (
                Error::VersionNotFound {
                    endpoint: "e".into(),
                    version: "v".into(),
                },
                Outcome::NotFound,
                404,
            ),
            (
                Error::BodyTimeout {
                    after: Duration::from_secs(1),
                },
                Outcome::InputTimeout,
                408,
            ),
            (
                Error::Conflict {
                    endpoint: "e".into(),
                    reason: "r".into(),
                },
                Outcome::Conflict,
                409,
            ),
            (Error::PayloadTooLarge { limit: 1 }, Outcome::TooLarge, 413),
            (
                Error::UnsupportedMediaType {
                    content_type: "text/plain".into(),
                },
                Outcome::UnsupportedFormat,
                415,
            ),
            (
                Error::InvalidArgument {
                    position: 0,
                    expected: "f64",
                    reason: "r".into(),
                },
                Outcome::RejectedInput,
                422,
            ),
            (
                Error::ArgumentCount {
                    expected: 1,
                    got: 2,
                },
                Outcome::RejectedInput,
                422,
            ),
            (Error::rejected("no"), Outcome::RejectedInput, 422),
            (Error::from_predictor("boom"), Outcome::ModelFailure, 500),
            (
                Error::Panicked {
                    message: "p".into(),
                },
                Outcome::ModelFailure,
                500,
            ),
            (
                Error::Storage {
                    location: "l".into(),
                    source: "s".into(),
                },
                Outcome::ServerFailure,
                500,
            ),
            (
                Error::Action {
                    action: "a".into(),
                    source: "s".into(),
                },
                Outcome::ServerFailure,
                500,
            ),
            (
                Error::NotReady {
                    endpoint: "e".into(),
                },
                Outcome::NotReady,
                503,
            ),
            (
                Error::Overloaded {
                    endpoint: "e".into(),
                },
                Outcome::Overloaded,
                503,
            ),
            (
                Error::Timeout {
                    after: Duration::from_secs(1),
                },
                Outcome::Timeout,
                504,
            ),
        ];
        for (error, outcome, code) in cases {
            assert_eq!(error.outcome(), outcome, "{error}");
            assert_eq!(error.status(), code, "{error}");
            assert_eq!(outcome.code(), code, "{error}");
            assert_eq!(
                error.is_client_error(),
                outcome.is_client_fault(),
                "{error}"
            );
        }
    }

    #[test]
    fn classes_agree_with_the_codes_readers_used_before() {
        for outcome in Outcome::ALL {
            let code = outcome.code();
            // Charts counted everything outside 2xx, the canary and Prometheus' server class
            // 5xx, Prometheus' client class 4xx, and the prediction log skipped 401.
            assert_eq!(outcome.is_error(), !(200..300).contains(&code), "{outcome}");
            assert_eq!(outcome.counts_as_failure(), code >= 500, "{outcome}");
            assert_eq!(
                outcome.is_client_fault(),
                (400..500).contains(&code),
                "{outcome}"
            );
            assert_eq!(outcome.is_recorded(), code != 401, "{outcome}");
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::json!(outcome.as_str())
            );
        }
    }
}
