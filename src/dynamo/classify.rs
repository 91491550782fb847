//! The one place that decides what a DynamoDB error means.
//!
//! Every DynamoDB call's failure is first reduced to an [`AwsError`] (an error
//! code, an HTTP status and a message); then [`classify`] decides whether it is
//! throttling, a transient fault, a write conflict, one item's failure or fatal,
//! and [`AwsError::cause`] names the fatal or special cases callers act on (a
//! missing table, a table being created, access denied, bad credentials).
//! Retry policy ([`crate::capacity::backoff`]) acts on the class only; no other
//! module compares error codes.

use std::fmt;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// DynamoDB asked us to slow down: retry later, and lower the rate.
    Throttle,
    /// A fault that usually passes (5xx, timeout, connection error): retry with backoff.
    Transient,
    /// A conditional write found the item changed since it was read.
    ConditionFailed,
    /// This item cannot be written (its content breaks a DynamoDB limit): the
    /// item is dead-lettered and the run goes on.
    Item,
    /// Retrying cannot help: validation, access denied, missing table, bad credentials.
    Fatal,
}

/// What a failed call was for. The same error means different things for a
/// data item's write and for dynbulk's own calls: a ValidationException on an
/// UpdateItem of one item is about that item's content (an empty set, a number
/// DynamoDB cannot store, an expression over a limit, a GSI key of the wrong
/// type) and must not stop the run; on a scan or a state-table write it means
/// the request itself is wrong, and retrying or going on cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A conditional UpdateItem or DeleteItem of one data item.
    ItemWrite,
    /// Everything else: scans, re-reads, DescribeTable, state-table and lock calls.
    Control,
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

    /// Which kind of failure this is for a control call; see [`classify`].
    pub fn class(&self) -> Class {
        self.class_for(Call::Control)
    }

    /// Which kind of failure this is for a call of kind `call`; see [`classify`].
    pub fn class_for(&self, call: Call) -> Class {
        classify(call, self.code.as_deref(), self.status, self.no_response)
    }

    /// What this error is about, where a caller acts on it; see [`cause`].
    pub fn cause(&self) -> Cause {
        cause(self.code.as_deref())
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
pub const THROTTLE_CODES: &[&str] = &[
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

/// Codes that concern one item's content when they answer a data item's
/// write. DynamoDB reports most content problems as ValidationException with a
/// free-text message (empty sets, numbers over 38 digits or out of range,
/// expressions over 4 KB or 300 operators, index keys of the wrong type, items
/// over 400 KB), so the code is what counts, never the message; an item
/// collection over 10 GB (tables with local secondary indexes) has its own code.
const ITEM_CODES: &[&str] = &[
    "ValidationException",
    "ItemCollectionSizeLimitExceededException",
];

/// Decides what a failed call means. This is the only function that looks at
/// error codes; it matches on the code string because the typed variants are
/// missing for errors that come from the AWS front end rather than DynamoDB.
///
/// A content error on a data item's write is that item's failure ([`Class::Item`]),
/// whatever DynamoDB's message says; the same code on any other call is fatal.
/// A request dynbulk itself built wrongly would then dead-letter every item:
/// `--max-errors` stops that run.
pub fn classify(call: Call, code: Option<&str>, status: Option<u16>, no_response: bool) -> Class {
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
        if call == Call::ItemWrite && ITEM_CODES.contains(&code) {
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

/// What an error is about, for the callers that act on more than its [`Class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The table (or index) does not exist: a missing state table means no state yet.
    MissingResource,
    /// The table is being created or changed (another runner created it at the same moment).
    ResourceInUse,
    /// The credentials are valid but not allowed to do this.
    AccessDenied,
    /// The credentials were rejected (unknown key, bad signature, expired token).
    BadCredentials,
    /// Anything else; [`classify`] says how to handle it.
    Other,
}

/// What an error code is about; see [`Cause`].
pub fn cause(code: Option<&str>) -> Cause {
    match code {
        Some("ResourceNotFoundException") => Cause::MissingResource,
        Some("ResourceInUseException") => Cause::ResourceInUse,
        Some("AccessDeniedException") => Cause::AccessDenied,
        Some(
            "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException",
        ) => Cause::BadCredentials,
        _ => Cause::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(code: Option<&str>, status: Option<u16>, no_response: bool) -> Class {
        classify(Call::Control, code, status, no_response)
    }

    #[test]
    fn throttling_codes_are_throttle() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            assert_eq!(
                control(Some(code), Some(400), false),
                Class::Throttle,
                "{code}"
            );
            assert_eq!(
                classify(Call::ItemWrite, Some(code), Some(400), false),
                Class::Throttle,
                "{code}"
            );
        }
    }

    #[test]
    fn server_errors_and_lost_connections_are_transient() {
        assert_eq!(control(None, Some(500), false), Class::Transient);
        assert_eq!(control(None, Some(503), false), Class::Transient);
        assert_eq!(
            control(Some("InternalServerError"), Some(500), false),
            Class::Transient
        );
        assert_eq!(control(None, None, true), Class::Transient);
        assert_eq!(
            control(Some("TransactionConflictException"), Some(400), false),
            Class::Transient
        );
    }

    #[test]
    fn request_errors_are_fatal() {
        assert_eq!(
            control(Some("ResourceNotFoundException"), Some(400), false),
            Class::Fatal
        );
        assert_eq!(
            control(Some("AccessDeniedException"), Some(400), false),
            Class::Fatal
        );
        assert_eq!(
            control(Some("ValidationException"), Some(400), false),
            Class::Fatal
        );
        assert_eq!(
            control(Some("UnrecognizedClientException"), Some(400), false),
            Class::Fatal
        );
        assert_eq!(control(None, None, false), Class::Fatal);
    }

    #[test]
    fn content_errors_on_an_item_write_are_item_errors_whatever_the_message() {
        // DynamoDB's real texts vary ("Attempting to store more than 38
        // significant digits in a Number", "Invalid UpdateExpression:
        // Expression size has exceeded the maximum allowed size", "Type
        // mismatch for Index Key ..."): the code decides, not the message.
        for code in [
            "ValidationException",
            "ItemCollectionSizeLimitExceededException",
        ] {
            assert_eq!(
                classify(Call::ItemWrite, Some(code), Some(400), false),
                Class::Item,
                "{code}"
            );
        }
        // The same codes on dynbulk's own calls stop the run.
        assert_eq!(
            control(
                Some("ItemCollectionSizeLimitExceededException"),
                Some(400),
                false
            ),
            Class::Fatal
        );
        // Access and missing tables stop the run on item writes too.
        for code in ["AccessDeniedException", "ResourceNotFoundException"] {
            assert_eq!(
                classify(Call::ItemWrite, Some(code), Some(400), false),
                Class::Fatal,
                "{code}"
            );
        }
    }

    #[test]
    fn causes_are_named_by_code() {
        assert_eq!(
            cause(Some("ResourceNotFoundException")),
            Cause::MissingResource
        );
        assert_eq!(cause(Some("ResourceInUseException")), Cause::ResourceInUse);
        assert_eq!(cause(Some("AccessDeniedException")), Cause::AccessDenied);
        for code in [
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
        ] {
            assert_eq!(cause(Some(code)), Cause::BadCredentials, "{code}");
        }
        assert_eq!(cause(Some("ValidationException")), Cause::Other);
        assert_eq!(cause(None), Cause::Other);
    }

    #[test]
    fn conditional_check_failure_is_its_own_class() {
        assert_eq!(
            control(Some("ConditionalCheckFailedException"), Some(400), false),
            Class::ConditionFailed
        );
        assert_eq!(
            classify(
                Call::ItemWrite,
                Some("ConditionalCheckFailedException"),
                Some(400),
                false
            ),
            Class::ConditionFailed
        );
    }
}
