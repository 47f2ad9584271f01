//! The only place errors become `tonic::Status`. Messages are client-safe;
//! the cause chain of an internal failure is logged once, here.

use std::sync::atomic::{AtomicI64, Ordering};

use tonic::{Code, Status};

use crate::admin::AdminError;

/// So that a handler's `?` turns a use-case's error into its status.
impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        from_admin(error)
    }
}

fn from_admin(error: AdminError) -> Status {
    if matches!(error, AdminError::Store(_)) {
        crate::telemetry::store_error("admin");
    }
    let code = match &error {
        AdminError::InvalidOwnerId
        | AdminError::InvalidName { .. }
        | AdminError::UnknownEnvironment(_)
        | AdminError::InvalidAbility(_)
        | AdminError::TooManyAbilities { .. }
        | AdminError::ExpiryInPast
        | AdminError::InvalidRateLimit
        | AdminError::InvalidCredits
        | AdminError::InvalidMetadata
        | AdminError::InvalidCidr(_)
        | AdminError::InvalidReason
        | AdminError::InvalidId
        | AdminError::InvalidPageSize
        | AdminError::InvalidPageNumber(_)
        | AdminError::InvalidPageToken(_)
        | AdminError::ImmutableField(_)
        | AdminError::UnknownField(_)
        | AdminError::EmptyUpdateMask
        | AdminError::OverlapTooLong
        | AdminError::OverlapAboveMaximum { .. }
        | AdminError::InvalidWebhookUrl(_)
        | AdminError::UnknownEventType(_) => Code::InvalidArgument,
        AdminError::NotFound | AdminError::WebhookNotFound | AdminError::DeliveryNotFound => {
            Code::NotFound
        }
        AdminError::OtherOwnersWebhook
        | AdminError::OtherOwnersKey
        | AdminError::AdminRoleRequired
        | AdminError::FeedRoleOnlyFollowsTheFeed
        | AdminError::FeedRoleRequired
        | AdminError::AboveCallerAbilities(_)
        | AdminError::AboveCallerNetworks(_)
        | AdminError::SuperkeyRequiresAdmin => Code::PermissionDenied,
        AdminError::OwnerKeyLimit { .. }
        | AdminError::RotationOverlapLimit { .. }
        | AdminError::AlreadyRevoked
        | AdminError::AlreadyExpired
        | AdminError::OwnerWebhookLimit { .. }
        | AdminError::ImportsDisabled => Code::FailedPrecondition,
        AdminError::Interrupted | AdminError::RandomSourceFailed => Code::Unavailable,
        AdminError::Store(store) if store.is_storage() => {
            tracing::error!(error = %chain(&error), "key store cannot write");
            return Status::unavailable(
                "the key store cannot write right now (its storage is full or failing); retry later",
            );
        }
        AdminError::Store(store) if store.is_unavailable() => {
            tracing::warn!(error = %chain(&error), "key store unavailable");
            return Status::unavailable("the key store is unavailable; retry later");
        }
        AdminError::Store(_) => {
            tracing::error!(error = %chain(&error), "key store failure");
            return Status::internal("internal error");
        }
    };
    Status::new(code, error.to_string())
}

/// `error: cause: cause` on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The second in which a Check failure was last logged.
static LAST_CHECK_FAILURE_LOG: AtomicI64 = AtomicI64::new(0);

/// Check could not consult the store: Envoy's `status_on_error` applies.
/// Every failure is counted; the log line is written at most once a second,
/// since an outage would otherwise log once per request.
pub fn check_unavailable(error: &crate::cache::LookupError) -> Status {
    if error.is_contended() {
        return Status::unavailable("the key changed repeatedly while it was read; retry");
    }
    if error.is_shed() {
        return Status::unavailable("too many key lookups in flight; retry");
    }
    report_check_failure(error);
    if error.is_unavailable() {
        Status::unavailable("key store unavailable")
    } else {
        Status::internal("key store error")
    }
}

/// Counts a store failure on a Check cache miss (either transport) and logs
/// it at most once a second.
pub fn report_check_failure(error: &crate::cache::LookupError) {
    crate::telemetry::store_error("check");
    let second = chrono::Utc::now().timestamp();
    if LAST_CHECK_FAILURE_LOG.swap(second, Ordering::Relaxed) != second {
        tracing::warn!(error = %chain(error), "check: key store unavailable on a cache miss (logged at most once a second; see keygate_store_errors_total)");
    }
}

pub(crate) fn bad_timestamp(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is not a valid timestamp"))
}

pub(crate) fn missing_credentials() -> Status {
    Status::unauthenticated("an admin token is required: send 'authorization: Bearer <token>'")
}

pub(crate) fn unknown_token() -> Status {
    Status::unauthenticated("the admin token is not recognised")
}
