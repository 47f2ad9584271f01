//! The KeyAdmin gRPC service. Every handler reads as: proto → use-case
//! request, one call into [`crate::admin::KeyAdmin`], result → proto;
//! [`KeyAdminService::serve`] does the rest (who calls, whether they may,
//! errors as `Status`, the call counted).

use std::{future::Future, sync::Arc};

use tonic::{Request, Response, Status};

use super::{auth::Authentication, convert, hygiene, webhooks};
use crate::{
    admin::{self, Caller, KeyAdmin},
    proto::{self, key_admin_server},
};

pub struct KeyAdminService {
    admin: Arc<KeyAdmin>,
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any authenticated caller; the use-case confines a `service` token to
    /// what it may see.
    Caller,
    /// Only `admin` tokens.
    Admin,
}

impl KeyAdminService {
    pub fn new(admin: Arc<KeyAdmin>) -> Self {
        Self { admin }
    }

    /// One RPC: the caller [`super::auth::AdminAuth`] found (refused when
    /// there is none, or when `access` asks for an admin it is not), then
    /// `handle` with the use-cases, the caller and the message; the call is
    /// counted by method and gRPC code whatever the outcome.
    async fn serve<Req, Res, Fut>(
        &self,
        method: &'static str,
        access: Access,
        request: Request<Req>,
        handle: impl FnOnce(Arc<KeyAdmin>, Caller, Req) -> Fut,
    ) -> Result<Response<Res>, Status>
    where
        Fut: Future<Output = Result<Res, Status>>,
    {
        let outcome = async {
            let caller = caller(&request)?;
            caller.require_key_admin()?;
            if access == Access::Admin {
                caller.require_admin()?;
            }
            handle(self.admin.clone(), caller, request.into_inner()).await
        }
        .await;
        observe(method, outcome).map(Response::new)
    }
}

/// The authenticated caller, or why there is none, as
/// [`super::auth::AdminAuth`] found it.
pub(super) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    match request.extensions().get::<Authentication>() {
        Some(Authentication(found)) => found.clone(),
        None => Err(Status::internal(
            "request reached KeyAdmin without authentication",
        )),
    }
}

const KEY_SHOWN_ONCE: &str = "Store this key now: it is shown only once and cannot be recovered.";

/// One page of keys; `owner_id = None` spans owners (admin callers only).
async fn list(
    admin: &KeyAdmin,
    owner_id: Option<String>,
    environment: String,
    include_revoked: bool,
    page_size: i32,
    page_token: String,
) -> Result<proto::ListKeysResponse, Status> {
    let request = admin::ListKeys {
        owner_id,
        environment,
        include_revoked,
        page_size,
        page_token,
    };
    let page = admin.list_keys(request).await?;
    let now = admin.now();
    Ok(proto::ListKeysResponse {
        keys: page
            .items
            .into_iter()
            .map(|k| convert::api_key(k, now))
            .collect(),
        next_page_token: page.next_page_token,
        total_size: page.total_size.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl key_admin_server::KeyAdmin for KeyAdminService {
    #[tracing::instrument(skip_all, fields(rpc = "CreateKey"))]
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        self.serve(
            "CreateKey",
            Access::Caller,
            request,
            |admin, caller, r| async move {
                let create = admin::CreateKey {
                    owner_id: r.owner_id,
                    name: r.name,
                    environment: r.environment,
                    abilities: r.abilities,
                    superkey: r.superkey,
                    rate_limit: convert::rate_limit(r.rate_limit),
                    credits: convert::credits(r.credits),
                    expires_at: convert::instant(r.expires_at, "expires_at")?,
                    metadata: convert::metadata(r.metadata),
                    allowed_cidrs: r.allowed_cidrs,
                };
                let issued = admin
                    .run_to_completion(move |admin| async move {
                        admin.create_key(&caller, create).await
                    })
                    .await?;
                Ok(proto::CreateKeyResponse {
                    key: issued.plaintext.into_exposed(),
                    api_key: Some(convert::api_key(issued.key, admin.now())),
                    message: KEY_SHOWN_ONCE.to_owned(),
                })
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetKey"))]
    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.serve(
            "GetKey",
            Access::Caller,
            request,
            |admin, _, r| async move {
                let key = admin.get_key(&r.owner_id, &r.id).await?;
                Ok(convert::api_key(key, admin.now()))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListKeys"))]
    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        self.serve(
            "ListKeys",
            Access::Caller,
            request,
            |admin, _, r| async move {
                let owner = Some(r.owner_id);
                list(
                    &admin,
                    owner,
                    r.environment,
                    r.include_revoked,
                    r.page_size,
                    r.page_token,
                )
                .await
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateKey"))]
    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.serve(
            "UpdateKey",
            Access::Caller,
            request,
            |admin, caller, r| async move {
                let update = admin::UpdateKey {
                    paths: r.update_mask.map(|m| m.paths).unwrap_or_default(),
                    name: r.name,
                    abilities: r.abilities,
                    superkey: r.superkey,
                    rate_limit: convert::rate_limit(r.rate_limit),
                    credits: convert::credits(r.credits),
                    metadata: convert::metadata(r.metadata),
                    allowed_cidrs: r.allowed_cidrs,
                };
                let key = admin
                    .run_to_completion(move |admin| async move {
                        admin.update_key(&caller, &r.owner_id, &r.id, update).await
                    })
                    .await?;
                Ok(convert::api_key(key, admin.now()))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RotateKey"))]
    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        self.serve(
            "RotateKey",
            Access::Caller,
            request,
            |admin, caller, r| async move {
                let (issued, previous) = admin
                    .run_to_completion(move |admin| async move {
                        admin
                            .rotate_key(&caller, &r.owner_id, &r.id, r.overlap_minutes)
                            .await
                    })
                    .await?;
                let now = admin.now();
                Ok(proto::RotateKeyResponse {
                    key: issued.plaintext.into_exposed(),
                    api_key: Some(convert::api_key(issued.key, now)),
                    previous: Some(convert::api_key(previous, now)),
                    message: KEY_SHOWN_ONCE.to_owned(),
                })
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RevokeKey"))]
    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.serve(
            "RevokeKey",
            Access::Caller,
            request,
            |admin, caller, r| async move {
                let key = admin
                    .run_to_completion(move |admin| async move {
                        admin
                            .revoke_key(&caller, Some(&r.owner_id), &r.id, &r.reason)
                            .await
                    })
                    .await?;
                Ok(convert::api_key(key, admin.now()))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetKeyUsage"))]
    async fn get_key_usage(
        &self,
        request: Request<proto::GetKeyUsageRequest>,
    ) -> Result<Response<proto::KeyUsage>, Status> {
        self.serve(
            "GetKeyUsage",
            Access::Caller,
            request,
            |admin, _, r| async move {
                let (key, usage) = admin.key_usage(&r.owner_id, &r.id, r.recent_limit).await?;
                Ok(convert::key_usage(&key, usage))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAbilities"))]
    async fn list_abilities(
        &self,
        request: Request<proto::ListAbilitiesRequest>,
    ) -> Result<Response<proto::ListAbilitiesResponse>, Status> {
        self.serve(
            "ListAbilities",
            Access::Caller,
            request,
            |admin, _, _| async move {
                let abilities = admin.abilities().iter();
                Ok(proto::ListAbilitiesResponse {
                    abilities: abilities.map(|a| a.as_str().to_owned()).collect(),
                })
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "AdminListKeys"))]
    async fn admin_list_keys(
        &self,
        request: Request<proto::AdminListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        self.serve(
            "AdminListKeys",
            Access::Admin,
            request,
            |admin, _, r| async move {
                let owner = Some(r.owner_id).filter(|o| !o.is_empty());
                list(
                    &admin,
                    owner,
                    r.environment,
                    r.include_revoked,
                    r.page_size,
                    r.page_token,
                )
                .await
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "AdminRevokeKey"))]
    async fn admin_revoke_key(
        &self,
        request: Request<proto::AdminRevokeKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        self.serve(
            "AdminRevokeKey",
            Access::Admin,
            request,
            |admin, caller, r| async move {
                let key = admin
                    .run_to_completion(move |admin| async move {
                        admin.revoke_key(&caller, None, &r.id, &r.reason).await
                    })
                    .await?;
                Ok(convert::api_key(key, admin.now()))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "SuspendOwner"))]
    async fn suspend_owner(
        &self,
        request: Request<proto::SuspendOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        self.serve(
            "SuspendOwner",
            Access::Admin,
            request,
            |admin, caller, r| async move {
                let owner = admin
                    .run_to_completion(move |admin| async move {
                        let reason = if r.reason.trim().is_empty() {
                            "suspended"
                        } else {
                            r.reason.as_str()
                        };
                        admin
                            .set_owner_suspension(&caller, &r.owner_id, Some(reason))
                            .await
                    })
                    .await?;
                Ok(owner_message(owner))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResumeOwner"))]
    async fn resume_owner(
        &self,
        request: Request<proto::ResumeOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        self.serve(
            "ResumeOwner",
            Access::Admin,
            request,
            |admin, caller, r| async move {
                let owner = admin
                    .run_to_completion(move |admin| async move {
                        admin.set_owner_suspension(&caller, &r.owner_id, None).await
                    })
                    .await?;
                Ok(owner_message(owner))
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAuditEvents"))]
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        self.serve(
            "ListAuditEvents",
            Access::Admin,
            request,
            |admin, _, r| async move {
                let page = admin
                    .list_audit(admin::ListAudit {
                        key_id: r.key_id,
                        owner_id: r.owner_id,
                        event: r.event,
                        page_size: r.page_size,
                        page_token: r.page_token,
                    })
                    .await?;
                Ok(proto::ListAuditEventsResponse {
                    events: page.items.into_iter().map(convert::audit_event).collect(),
                    next_page_token: page.next_page_token,
                })
            },
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateWebhook"))]
    async fn create_webhook(
        &self,
        request: Request<proto::CreateWebhookRequest>,
    ) -> Result<Response<proto::CreateWebhookResponse>, Status> {
        self.serve("CreateWebhook", Access::Caller, request, webhooks::create)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhooks"))]
    async fn list_webhooks(
        &self,
        request: Request<proto::ListWebhooksRequest>,
    ) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        self.serve("ListWebhooks", Access::Caller, request, webhooks::list)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateWebhook"))]
    async fn update_webhook(
        &self,
        request: Request<proto::UpdateWebhookRequest>,
    ) -> Result<Response<proto::Webhook>, Status> {
        self.serve("UpdateWebhook", Access::Caller, request, webhooks::update)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeleteWebhook"))]
    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<proto::DeleteWebhookResponse>, Status> {
        self.serve("DeleteWebhook", Access::Caller, request, webhooks::delete)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhookDeliveries"))]
    async fn list_webhook_deliveries(
        &self,
        request: Request<proto::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<proto::ListWebhookDeliveriesResponse>, Status> {
        let deliveries = webhooks::deliveries;
        self.serve("ListWebhookDeliveries", Access::Caller, request, deliveries)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RedeliverWebhook"))]
    async fn redeliver_webhook(
        &self,
        request: Request<proto::RedeliverWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        self.serve(
            "RedeliverWebhook",
            Access::Caller,
            request,
            webhooks::redeliver,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "SendTestWebhook"))]
    async fn send_test_webhook(
        &self,
        request: Request<proto::SendTestWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        self.serve(
            "SendTestWebhook",
            Access::Caller,
            request,
            webhooks::send_test,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ImportKeys"))]
    async fn import_keys(
        &self,
        request: Request<proto::ImportKeysRequest>,
    ) -> Result<Response<proto::ImportKeysResponse>, Status> {
        self.serve("ImportKeys", Access::Admin, request, hygiene::import)
            .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReportLeakedKey"))]
    async fn report_leaked_key(
        &self,
        request: Request<proto::ReportLeakedKeyRequest>,
    ) -> Result<Response<proto::ReportLeakedKeyResponse>, Status> {
        self.serve(
            "ReportLeakedKey",
            Access::Admin,
            request,
            hygiene::report_leaked,
        )
        .await
    }
}

/// Counts a call by method and gRPC code. Labels are bounded: the methods
/// of KeyAdmin and KeyFeed, seventeen codes, never an owner or a key.
pub(super) fn observe<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!("keygate_admin_calls_total", "method" => method, "code" => code_name(code))
        .increment(1);
    result
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn owner_message(owner: crate::domain::Owner) -> proto::Owner {
    proto::Owner {
        owner_id: owner.owner_id,
        suspended_at: convert::optional_timestamp(owner.suspended_at),
        suspension_reason: owner.suspension_reason.unwrap_or_default(),
    }
}
