//! The one mapping from service errors to gRPC statuses and HTTP responses.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

pub use spm_core::validation::FieldViolation;

/// The wire form of a violation (per-event acknowledgements carry it).
pub fn violation_to_proto(v: FieldViolation) -> spm_proto::common::v1::FieldViolation {
    spm_proto::common::v1::FieldViolation {
        field: v.field,
        description: v.description,
    }
}

/// Every way an API call can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(std::borrow::Cow<'static, str>),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

fn summary(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: Duration::from_secs(1),
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidArgument(_) => 422,
            Self::NotFound(_) => 404,
            Self::AlreadyExists(_) => 409,
            Self::FailedPrecondition(_) => 412,
            Self::PermissionDenied(_) => 403,
            Self::Unauthenticated(_) => 401,
            Self::ResourceExhausted(_) => 429,
            Self::PayloadTooLarge(_) => 413,
            Self::BadRequest(_) => 400,
            Self::Unavailable { .. } => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The JSON body of the HTTP response of this error.
    pub fn to_json(&self) -> serde_json::Value {
        let code = match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        };
        let mut body = serde_json::json!({ "error": code, "message": self.to_string() });
        if let Self::InvalidArgument(v) = self {
            body["field_violations"] = serde_json::to_value(v).expect("violations serialize");
        }
        if let Self::Unavailable { retry_after, .. } = self {
            body["retry_after_ms"] = serde_json::json!(retry_after.as_millis());
        }
        body
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                Status::with_error_details(Code::InvalidArgument, msg, details)
            }
            ApiError::Unavailable { retry_after, .. } => Status::with_error_details(
                Code::Unavailable,
                msg,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::AlreadyExists(_) => Status::already_exists(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::Unauthenticated(_) => Status::unauthenticated(msg),
            ApiError::ResourceExhausted(_) | ApiError::PayloadTooLarge(_) => {
                Status::resource_exhausted(msg)
            }
            ApiError::BadRequest(_) => Status::invalid_argument(msg),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::unavailable(format!("database unavailable: {e}"))
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = http::StatusCode::from_u16(self.http_status()).expect("valid status");
        (status, axum::Json(self.to_json())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let status: Status = ApiError::InvalidArgument(vec![
            FieldViolation::new("event.event_id", "must be a UUID"),
            FieldViolation::new(
                "event.deal_closed.amount.currency",
                "\"EURO\" is not an ISO 4217 currency code",
            ),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let br = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(br.field_violations.len(), 2);
        assert_eq!(br.field_violations[0].field, "event.event_id");
    }

    #[test]
    fn http_mapping() {
        let e = ApiError::invalid("amount", "must not be negative");
        assert_eq!(e.http_status(), 422);
        assert_eq!(e.to_json()["field_violations"][0]["field"], "amount");
        assert_eq!(ApiError::Unauthenticated("x".into()).http_status(), 401);
        assert_eq!(
            ApiError::unavailable("broker").to_json()["retry_after_ms"],
            1000
        );
    }
}
