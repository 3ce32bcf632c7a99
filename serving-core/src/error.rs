//! The one public error type of `serving`.

use std::time::Duration;

use crate::outcome::Outcome;

/// A boxed error from user code or a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a prediction or managing an endpoint.
///
/// Variants are semantic: each says whose fault it is (the caller's input, the model, the
/// server), classified once by [`Error::outcome`]; every transport maps the outcome at its
/// edge (for example to an HTTP status, in `serving-http`). The variants that name payload
/// conditions (credentials, size, format, arrival time) are produced by transports before the
/// model sees a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is malformed: not JSON, bad Base64, wrong shape.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// A positional argument does not deserialize into the type the predictor declares.
    #[error("argument {position} must be {expected}: {reason}")]
    InvalidArgument {
        /// Zero-based position of the argument.
        position: usize,
        /// The Rust type the predictor expects there.
        expected: &'static str,
        /// Why it did not fit.
        reason: String,
    },
    /// The predictor was given the wrong number of positional arguments.
    #[error("expected {expected} argument(s), got {got}")]
    ArgumentCount {
        /// How many the predictor takes.
        expected: usize,
        /// How many the request carried.
        got: usize,
    },
    /// The predictor looked at the input and refused it (a domain error, not a crash).
    #[error("input rejected: {reason}")]
    Rejected {
        /// The predictor's explanation.
        reason: String,
    },
    /// The predictor failed.
    #[error("predictor failed: {source}")]
    Predictor {
        /// The predictor's error.
        #[source]
        source: BoxError,
    },
    /// The predictor panicked; the server keeps serving.
    #[error("predictor panicked: {message}")]
    Panicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The predictor did not answer within the configured timeout.
    #[error("prediction timed out after {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// No endpoint with this name.
    #[error("no endpoint named `{endpoint}`")]
    EndpointNotFound {
        /// The name asked for.
        endpoint: String,
    },
    /// The endpoint has no model version with this id (or none that is loaded and routable).
    #[error("endpoint `{endpoint}` has no model version `{version}`")]
    VersionNotFound {
        /// The endpoint's name.
        endpoint: String,
        /// The version asked for.
        version: String,
    },
    /// A lifecycle operation that the endpoint's current state does not allow: an update while
    /// another candidate is in progress, a promotion without a candidate, a duplicate version.
    #[error("endpoint `{endpoint}`: {reason}")]
    Conflict {
        /// The endpoint's name.
        endpoint: String,
        /// Why the operation was refused.
        reason: String,
    },
    /// The endpoint has no model ready to answer.
    #[error("endpoint `{endpoint}` is not ready")]
    NotReady {
        /// The endpoint's name.
        endpoint: String,
    },
    /// The endpoint is at its concurrency limit; retry later.
    #[error("endpoint `{endpoint}` is overloaded")]
    Overloaded {
        /// The endpoint's name.
        endpoint: String,
    },
    /// A missing or wrong credential.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// The request body is not in a format the endpoint reads (JSON).
    #[error("content type must be application/json, got `{content_type}`")]
    UnsupportedMediaType {
        /// The content type as sent.
        content_type: String,
    },
    /// The client did not send its whole request body in time.
    #[error("request body not received within {}s", after.as_secs())]
    BodyTimeout {
        /// How long the server waited.
        after: Duration,
    },
    /// The request body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A configuration key that does not exist.
    #[error("unknown setting `{key}`; valid settings are: {}", valid.join(", "))]
    UnknownSetting {
        /// The key as given.
        key: String,
        /// Every key that is accepted.
        valid: Vec<&'static str>,
    },
    /// A configuration value that does not parse or is out of range.
    #[error("invalid value `{value}` for setting `{key}`: {reason}")]
    InvalidSetting {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// No trigger with this id on the endpoint.
    #[error("endpoint `{endpoint}` has no trigger `{id}`")]
    TriggerNotFound {
        /// The endpoint.
        endpoint: String,
        /// The id asked for.
        id: String,
    },
    /// An endpoint spec that does not parse.
    #[error("invalid endpoint spec: {reason}")]
    InvalidSpec {
        /// The parser's message.
        reason: String,
    },
    /// A storage backend (object store, filesystem) failed.
    #[error("storage error at `{location}`: {source}")]
    Storage {
        /// Where: a path or a key.
        location: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A dataset, or a file in one, that does not exist.
    #[error("{}", match file {
        Some(file) => format!("dataset `{dataset}` has no file `{file}`"),
        None => format!("no dataset named `{dataset}`"),
    })]
    DatasetNotFound {
        /// The dataset's name.
        dataset: String,
        /// The file's path inside it, when a file is missing.
        file: Option<String>,
    },
    /// No batch run with this id on this endpoint.
    #[error("endpoint `{endpoint}` has no batch run `{id}`")]
    BatchRunNotFound {
        /// The endpoint's name.
        endpoint: String,
        /// The id asked for.
        id: String,
    },
    /// An endpoint asked for batch runs that is of another kind (a web service or a stream).
    #[error("endpoint `{endpoint}` is no batch endpoint: it has no batch runs")]
    NotBatchEndpoint {
        /// The endpoint's name.
        endpoint: String,
    },
    /// A write that would replace an existing file without being asked to.
    #[error("`{location}` already exists; ask to overwrite it to replace it")]
    AlreadyExists {
        /// The file's store key.
        location: String,
    },
    /// An action (trigger, feedback export, scaling) failed.
    #[error("{action} failed: {source}")]
    Action {
        /// Which action.
        action: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// A predictor's refusal of its input ([`Outcome::RejectedInput`]).
    pub fn rejected(reason: impl Into<String>) -> Self {
        Error::Rejected {
            reason: reason.into(),
        }
    }

    /// A malformed request ([`Outcome::ClientError`]).
    pub fn invalid_request(reason: impl Into<String>) -> Self {
        Error::InvalidRequest {
            reason: reason.into(),
        }
    }

    /// Wraps a user or backend error as a predictor failure, keeping a `serving` error as is.
    pub fn from_predictor(error: impl Into<BoxError>) -> Self {
        match error.into().downcast::<Error>() {
            Ok(own) => *own,
            Err(other) => Error::Predictor { source: other },
        }
    }

    /// How a request that failed with this error ended: the one classification that sinks,
    /// charts, canary rules and every transport's edge read.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::InvalidRequest { .. }
            | Error::InvalidSpec { .. }
            | Error::UnknownSetting { .. }
            | Error::InvalidSetting { .. } => Outcome::ClientError,
            Error::InvalidArgument { .. }
            | Error::ArgumentCount { .. }
            | Error::Rejected { .. } => Outcome::RejectedInput,
            Error::EndpointNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::DatasetNotFound { .. }
            | Error::TriggerNotFound { .. }
            | Error::BatchRunNotFound { .. }
            | Error::NotBatchEndpoint { .. } => Outcome::NotFound,
            Error::Conflict { .. } | Error::AlreadyExists { .. } => Outcome::Conflict,
            Error::Unauthorized => Outcome::Unauthenticated,
            Error::PayloadTooLarge { .. } => Outcome::TooLarge,
            Error::UnsupportedMediaType { .. } => Outcome::UnsupportedFormat,
            Error::BodyTimeout { .. } => Outcome::InputTimeout,
            Error::Predictor { .. } | Error::Panicked { .. } => Outcome::ModelFailure,
            Error::Timeout { .. } => Outcome::Timeout,
            Error::Overloaded { .. } => Outcome::Overloaded,
            Error::NotReady { .. } => Outcome::NotReady,
            Error::Storage { .. } | Error::Action { .. } => Outcome::ServerFailure,
        }
    }

    /// Whether the caller is at fault (bad input, auth, size) rather than the model or server:
    /// [`Outcome::is_client_fault`] of its outcome.
    pub fn is_client_error(&self) -> bool {
        self.outcome().is_client_fault()
    }

    /// The code of its outcome ([`Outcome::code`]) that records and metrics carry as
    /// `status`. What a transport answers is decided at its edge (`serving-http` maps errors
    /// to HTTP statuses itself).
    pub fn status(&self) -> u16 {
        self.outcome().code()
    }
}
