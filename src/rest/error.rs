//! The only place errors become HTTP responses: `{"error": {code, message}}`,
//! plus `fields` on a 422. Messages are client-safe; the cause chain of an
//! internal failure is logged once, here. The statuses are listed in the
//! README's REST section.

use std::collections::BTreeMap;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{admin::AdminError, domain::DenyReason, grpc::status::chain};

/// An error response as the API documents it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Option<BTreeMap<String, Vec<String>>>,
    retry_after_secs: Option<u64>,
}

/// `{"error": …}`: every non-2xx response body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: &'static str,
    pub message: String,
    /// On `validation_failed`: the messages for each offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, Vec<String>>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
            retry_after_secs: None,
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 naming the offending field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message.clone(),
        );
        error.fields = Some(BTreeMap::from([(field.to_owned(), vec![message])]));
        error
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {} KiB", limit / 1024),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON: send 'content-type: application/json'",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// A credential Check would deny: the same status and message.
    pub fn denied(reason: DenyReason) -> Self {
        let row = reason.row();
        let status = StatusCode::from_u16(row.http_status).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut error = Self::new(status, row.rest_code, row.message);
        if let DenyReason::RateLimited { retry_after_secs } = reason {
            error.retry_after_secs = Some(retry_after_secs);
        }
        error
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        let field = match &error {
            AdminError::InvalidOwnerId
            | AdminError::OwnerKeyLimit { .. }
            | AdminError::OwnerWebhookLimit { .. } => "owner_id",
            AdminError::InvalidWebhookUrl(_) => "url",
            AdminError::UnknownEventType(_) => "events",
            AdminError::InvalidName { .. } => "name",
            AdminError::UnknownEnvironment(_) => "environment",
            AdminError::InvalidAbility(_) | AdminError::TooManyAbilities { .. } => "abilities",
            AdminError::ExpiryInPast => "expires_at",
            AdminError::InvalidRateLimit => "rate_limit",
            AdminError::InvalidCredits => "credits",
            AdminError::InvalidMetadata => "metadata",
            AdminError::InvalidCidr(_) => "allowed_cidrs",
            AdminError::InvalidReason => "reason",
            AdminError::InvalidId => "id",
            AdminError::InvalidPageSize => "per_page",
            AdminError::InvalidPageNumber(field) => field,
            AdminError::InvalidPageToken(_) => "page_token",
            AdminError::ImmutableField(field) | AdminError::UnknownField(field) => {
                // An echo is quoted for messages; the field map wants the name.
                let name = field.to_string();
                return ApiError::invalid(name.trim_matches('"'), error.to_string());
            }
            AdminError::EmptyUpdateMask => {
                return ApiError::invalid("body", "name at least one field to change")
            }
            AdminError::OverlapTooLong
            | AdminError::OverlapAboveMaximum { .. }
            | AdminError::RotationOverlapLimit { .. } => "overlap_minutes",
            AdminError::NotFound | AdminError::WebhookNotFound | AdminError::DeliveryNotFound => {
                return ApiError::not_found(error.to_string())
            }
            AdminError::OtherOwnersWebhook
            | AdminError::OtherOwnersKey
            | AdminError::AdminRoleRequired
            | AdminError::FeedRoleOnlyFollowsTheFeed
            | AdminError::FeedRoleRequired
            | AdminError::AboveCallerAbilities(_)
            | AdminError::AboveCallerNetworks(_)
            | AdminError::SuperkeyRequiresAdmin => return ApiError::forbidden(error.to_string()),
            AdminError::AlreadyRevoked
            | AdminError::AlreadyExpired
            | AdminError::ImportsDisabled => {
                return ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            AdminError::Interrupted | AdminError::RandomSourceFailed => {
                return ApiError::unavailable(error.to_string())
            }
            AdminError::Store(store) => {
                crate::telemetry::store_error("admin");
                if store.is_unavailable() {
                    tracing::warn!(error = %chain(&error), "key store unavailable");
                    return ApiError::unavailable("the key store is unavailable; retry later");
                }
                tracing::error!(error = %chain(&error), "key store failure");
                return ApiError::internal();
            }
        };
        ApiError::invalid(field, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                fields: self.fields,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
