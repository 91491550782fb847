//! The library's error type and the one place that decides what an AWS error means.
//!
//! Every DynamoDB call's failure is first reduced to an [`AwsError`] (an error code,
//! an HTTP status and a message), then [`classify`] decides whether it is
//! throttling, a transient fault, a per-item failure or fatal. Retry policy
//! (see [`crate::backoff`]) acts on that class only; nothing else inspects codes.

use std::fmt;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// What went wrong in a run, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments or the migration definition are wrong; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// A DynamoDB call failed in a way that retrying will not fix.
    #[error("{context}: {source}")]
    Aws {
        /// What dynbulk was doing ("scanning segment 3 of table Orders").
        context: String,
        /// The call's error, boxed: SDK errors are large.
        #[source]
        source: Box<AwsError>,
    },
    /// The state table holds something this version cannot use.
    #[error("state table {table}: {message}")]
    State {
        /// Name of the state table.
        table: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Local I/O failed (dead-letter file, migration scaffolding).
    #[error("{context}: {source}")]
    Io {
        /// What dynbulk was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an AWS error with what dynbulk was doing when it happened.
    pub fn aws(context: impl Into<String>, source: AwsError) -> Self {
        Error::Aws {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with what dynbulk was doing when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Convenience alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// DynamoDB asked us to slow down: retry later, and lower the rate.
    Throttle,
    /// A fault that usually passes (5xx, timeout, connection error): retry with backoff.
    Transient,
    /// A conditional write found the item changed since it was read.
    ConditionFailed,
    /// The request is fine in general but this item cannot be written (too large, ...).
    Item,
    /// Retrying cannot help: validation, access denied, missing table, bad credentials.
    Fatal,
}

/// A DynamoDB call's failure, reduced to what classification and messages need.
#[derive(Debug)]
pub struct AwsError {
    /// The service's error code (`ProvisionedThroughputExceededException`, ...), if any.
    pub code: Option<String>,
    /// HTTP status of the response, if one arrived.
    pub status: Option<u16>,
    /// Human-readable description, including the SDK's error chain.
    pub message: String,
    /// The request never got an answer (connect failure, timeout, I/O error).
    pub no_response: bool,
    /// The client could not even build or sign the request (no credentials, no region).
    pub construction: bool,
}

impl AwsError {
    /// Reduces any SDK operation error to an [`AwsError`].
    pub fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.code().map(str::to_owned);
        let (status, no_response, construction) = match &err {
            SdkError::ServiceError(ctx) => (Some(ctx.raw().status().as_u16()), false, false),
            SdkError::ResponseError(_) => (None, true, false),
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => (None, true, false),
            SdkError::ConstructionFailure(_) => (None, false, true),
            _ => (None, false, false),
        };
        let message = match err.message() {
            Some(m) if code.is_some() => m.to_owned(),
            _ => chain(&err),
        };
        let credentials = !construction
            && code.is_none()
            && format!("{}", DisplayErrorContext(&err)).contains("CredentialsNotLoaded");
        AwsError {
            code,
            status,
            message,
            no_response: no_response && !credentials,
            construction: construction || credentials,
        }
    }

    /// Which kind of failure this is; see [`classify`].
    pub fn class(&self) -> Class {
        classify(
            self.code.as_deref(),
            self.status,
            &self.message,
            self.no_response,
        )
    }
}

/// The error's sources joined with ": ", each said once (SDK errors repeat
/// their source's text in their own).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for AwsError {}

/// Throttling error codes. DynamoDB uses the first; the others come from the
/// shared AWS front end and from account-level request limits.
const THROTTLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
    "TooManyRequestsException",
];

/// Codes that mean "try again": the service failed, not the request.
const TRANSIENT_CODES: &[&str] = &[
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "TransactionInProgressException",
    // An application transaction held the item at that moment: try again.
    "TransactionConflictException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Decides what a failed call means. This is the only function that looks at
/// error codes; it matches on the code string because the typed variants are
/// missing for errors that come from the AWS front end rather than DynamoDB.
pub fn classify(
    code: Option<&str>,
    status: Option<u16>,
    message: &str,
    no_response: bool,
) -> Class {
    if let Some(code) = code {
        if THROTTLE_CODES.contains(&code) {
            return Class::Throttle;
        }
        if code == "ConditionalCheckFailedException" {
            return Class::ConditionFailed;
        }
        if TRANSIENT_CODES.contains(&code) {
            return Class::Transient;
        }
        if code == "ValidationException" && is_item_validation(message) {
            return Class::Item;
        }
    }
    if no_response {
        return Class::Transient;
    }
    match status {
        Some(s) if s >= 500 => Class::Transient,
        Some(429) => Class::Throttle,
        _ => Class::Fatal,
    }
}

/// Validation errors that concern one item's content rather than the request's
/// shape: the run goes on and the item is dead-lettered.
fn is_item_validation(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("item size") && m.contains("exceeded")
        || m.contains("item size to update has exceeded")
        || m.contains("one or more parameter values were invalid: an attribute value may not contain an empty")
        || m.contains("empty set")
        || m.contains("nesting levels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_throttle() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            assert_eq!(
                classify(Some(code), Some(400), "", false),
                Class::Throttle,
                "{code}"
            );
        }
    }

    #[test]
    fn server_errors_and_lost_connections_are_transient() {
        assert_eq!(classify(None, Some(500), "", false), Class::Transient);
        assert_eq!(classify(None, Some(503), "", false), Class::Transient);
        assert_eq!(
            classify(Some("InternalServerError"), Some(500), "", false),
            Class::Transient
        );
        assert_eq!(
            classify(None, None, "connection reset", true),
            Class::Transient
        );
        assert_eq!(
            classify(Some("TransactionConflictException"), Some(400), "", false),
            Class::Transient
        );
    }

    #[test]
    fn request_errors_are_fatal() {
        assert_eq!(
            classify(
                Some("ResourceNotFoundException"),
                Some(400),
                "Requested resource not found",
                false
            ),
            Class::Fatal
        );
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400), "", false),
            Class::Fatal
        );
        assert_eq!(
            classify(
                Some("ValidationException"),
                Some(400),
                "Invalid UpdateExpression",
                false
            ),
            Class::Fatal
        );
        assert_eq!(
            classify(Some("UnrecognizedClientException"), Some(400), "", false),
            Class::Fatal
        );
        assert_eq!(classify(None, None, "no credentials", false), Class::Fatal);
    }

    #[test]
    fn oversized_item_is_an_item_error() {
        assert_eq!(
            classify(
                Some("ValidationException"),
                Some(400),
                "Item size to update has exceeded the maximum allowed size",
                false
            ),
            Class::Item
        );
        assert_eq!(
            classify(
                Some("ValidationException"),
                Some(400),
                "Item size has exceeded the maximum allowed size",
                false
            ),
            Class::Item
        );
    }

    #[test]
    fn conditional_check_failure_is_its_own_class() {
        assert_eq!(
            classify(
                Some("ConditionalCheckFailedException"),
                Some(400),
                "",
                false
            ),
            Class::ConditionFailed
        );
    }
}
