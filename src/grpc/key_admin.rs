//! The KeyAdmin gRPC service. Handlers translate: proto → domain request,
//! one call into [`crate::admin::KeyAdmin`], domain result → proto.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{auth::Authentication, convert, hygiene, webhooks};
use crate::{
    admin::{self, Caller, KeyAdmin},
    proto::{self, key_admin_server},
    store,
};

pub struct KeyAdminService {
    admin: Arc<KeyAdmin>,
}

impl KeyAdminService {
    pub fn new(admin: Arc<KeyAdmin>) -> Self {
        Self { admin }
    }

    /// See [`KeyAdmin::run_to_completion`].
    async fn run_to_completion<T, F, Fut>(&self, mutation: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Arc<KeyAdmin>) -> Fut,
        Fut: std::future::Future<Output = admin::AdminResult<T>> + Send + 'static,
    {
        Ok(self.admin.run_to_completion(mutation).await?)
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

fn admin_caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require_admin()?;
    Ok(caller)
}

const KEY_SHOWN_ONCE: &str = "Store this key now: it is shown only once and cannot be recovered.";

impl KeyAdminService {
    /// One page of keys; `owner_id = None` spans owners (admin callers only).
    async fn list(
        &self,
        owner_id: Option<String>,
        environment: String,
        include_revoked: bool,
        page_size: i32,
        page_token: String,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let request = admin::ListKeys {
            owner_id,
            environment,
            include_revoked,
            page_size,
            page_token,
        };
        let page = self.admin.list_keys(request).await?;
        let now = store::now();
        Ok(Response::new(proto::ListKeysResponse {
            keys: page
                .items
                .into_iter()
                .map(|k| convert::api_key(k, now))
                .collect(),
            next_page_token: page.next_page_token,
            total_size: page.total_size.unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl key_admin_server::KeyAdmin for KeyAdminService {
    #[tracing::instrument(skip_all, fields(rpc = "CreateKey"))]
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        observe(
            "CreateKey",
            async move {
                let caller = caller(&request)?;
                let r = request.into_inner();
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
                let issued = self
                    .run_to_completion(move |admin| async move {
                        admin.create_key(&caller, create).await
                    })
                    .await?;
                Ok(Response::new(proto::CreateKeyResponse {
                    key: issued.plaintext.into_exposed(),
                    api_key: Some(convert::api_key(issued.key, store::now())),
                    message: KEY_SHOWN_ONCE.to_owned(),
                }))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetKey"))]
    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        observe(
            "GetKey",
            async move {
                caller(&request)?;
                let r = request.into_inner();
                let key = self.admin.get_key(&r.owner_id, &r.id).await?;
                Ok(Response::new(convert::api_key(key, store::now())))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListKeys"))]
    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        observe(
            "ListKeys",
            async move {
                caller(&request)?;
                let r = request.into_inner();
                self.list(
                    Some(r.owner_id),
                    r.environment,
                    r.include_revoked,
                    r.page_size,
                    r.page_token,
                )
                .await
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateKey"))]
    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        observe(
            "UpdateKey",
            async move {
                let caller = caller(&request)?;
                let r = request.into_inner();
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
                let key = self
                    .run_to_completion(move |admin| async move {
                        admin.update_key(&caller, &r.owner_id, &r.id, update).await
                    })
                    .await?;
                Ok(Response::new(convert::api_key(key, store::now())))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "RotateKey"))]
    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        observe(
            "RotateKey",
            async move {
                let caller = caller(&request)?;
                let r = request.into_inner();
                let (issued, previous) = self
                    .run_to_completion(move |admin| async move {
                        admin
                            .rotate_key(&caller, &r.owner_id, &r.id, r.overlap_minutes)
                            .await
                    })
                    .await?;
                let now = store::now();
                Ok(Response::new(proto::RotateKeyResponse {
                    key: issued.plaintext.into_exposed(),
                    api_key: Some(convert::api_key(issued.key, now)),
                    previous: Some(convert::api_key(previous, now)),
                    message: KEY_SHOWN_ONCE.to_owned(),
                }))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "RevokeKey"))]
    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        observe(
            "RevokeKey",
            async move {
                let caller = caller(&request)?;
                let r = request.into_inner();
                let key = self
                    .run_to_completion(move |admin| async move {
                        admin
                            .revoke_key(&caller, Some(&r.owner_id), &r.id, &r.reason)
                            .await
                    })
                    .await?;
                Ok(Response::new(convert::api_key(key, store::now())))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetKeyUsage"))]
    async fn get_key_usage(
        &self,
        request: Request<proto::GetKeyUsageRequest>,
    ) -> Result<Response<proto::KeyUsage>, Status> {
        observe(
            "GetKeyUsage",
            async move {
                caller(&request)?;
                let r = request.into_inner();
                let (key, usage) = self
                    .admin
                    .key_usage(&r.owner_id, &r.id, r.recent_limit)
                    .await?;
                Ok(Response::new(convert::key_usage(&key, usage)))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAbilities"))]
    async fn list_abilities(
        &self,
        request: Request<proto::ListAbilitiesRequest>,
    ) -> Result<Response<proto::ListAbilitiesResponse>, Status> {
        observe(
            "ListAbilities",
            async move {
                caller(&request)?;
                Ok(Response::new(proto::ListAbilitiesResponse {
                    abilities: self
                        .admin
                        .abilities()
                        .iter()
                        .map(|a| a.as_str().to_owned())
                        .collect(),
                }))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "AdminListKeys"))]
    async fn admin_list_keys(
        &self,
        request: Request<proto::AdminListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        observe(
            "AdminListKeys",
            async move {
                admin_caller(&request)?;
                let r = request.into_inner();
                let owner = Some(r.owner_id).filter(|o| !o.is_empty());
                self.list(
                    owner,
                    r.environment,
                    r.include_revoked,
                    r.page_size,
                    r.page_token,
                )
                .await
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "AdminRevokeKey"))]
    async fn admin_revoke_key(
        &self,
        request: Request<proto::AdminRevokeKeyRequest>,
    ) -> Result<Response<proto::ApiKey>, Status> {
        observe(
            "AdminRevokeKey",
            async move {
                let caller = admin_caller(&request)?;
                let r = request.into_inner();
                let key = self
                    .run_to_completion(move |admin| async move {
                        admin.revoke_key(&caller, None, &r.id, &r.reason).await
                    })
                    .await?;
                Ok(Response::new(convert::api_key(key, store::now())))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "SuspendOwner"))]
    async fn suspend_owner(
        &self,
        request: Request<proto::SuspendOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        observe(
            "SuspendOwner",
            async move {
                let caller = admin_caller(&request)?;
                let r = request.into_inner();
                let owner = self
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
                Ok(Response::new(owner_message(owner)))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ResumeOwner"))]
    async fn resume_owner(
        &self,
        request: Request<proto::ResumeOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        observe(
            "ResumeOwner",
            async move {
                let caller = admin_caller(&request)?;
                let r = request.into_inner();
                let owner = self
                    .run_to_completion(move |admin| async move {
                        admin.set_owner_suspension(&caller, &r.owner_id, None).await
                    })
                    .await?;
                Ok(Response::new(owner_message(owner)))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListAuditEvents"))]
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        observe(
            "ListAuditEvents",
            async move {
                admin_caller(&request)?;
                let r = request.into_inner();
                let page = self
                    .admin
                    .list_audit(admin::ListAudit {
                        key_id: r.key_id,
                        owner_id: r.owner_id,
                        event: r.event,
                        page_size: r.page_size,
                        page_token: r.page_token,
                    })
                    .await?;
                Ok(Response::new(proto::ListAuditEventsResponse {
                    events: page.items.into_iter().map(convert::audit_event).collect(),
                    next_page_token: page.next_page_token,
                }))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateWebhook"))]
    async fn create_webhook(
        &self,
        request: Request<proto::CreateWebhookRequest>,
    ) -> Result<Response<proto::CreateWebhookResponse>, Status> {
        observe(
            "CreateWebhook",
            webhooks::create(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhooks"))]
    async fn list_webhooks(
        &self,
        request: Request<proto::ListWebhooksRequest>,
    ) -> Result<Response<proto::ListWebhooksResponse>, Status> {
        observe("ListWebhooks", webhooks::list(&self.admin, request).await)
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateWebhook"))]
    async fn update_webhook(
        &self,
        request: Request<proto::UpdateWebhookRequest>,
    ) -> Result<Response<proto::Webhook>, Status> {
        observe(
            "UpdateWebhook",
            webhooks::update(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeleteWebhook"))]
    async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<Response<proto::DeleteWebhookResponse>, Status> {
        observe(
            "DeleteWebhook",
            webhooks::delete(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhookDeliveries"))]
    async fn list_webhook_deliveries(
        &self,
        request: Request<proto::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<proto::ListWebhookDeliveriesResponse>, Status> {
        observe(
            "ListWebhookDeliveries",
            webhooks::deliveries(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "RedeliverWebhook"))]
    async fn redeliver_webhook(
        &self,
        request: Request<proto::RedeliverWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        observe(
            "RedeliverWebhook",
            webhooks::redeliver(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "SendTestWebhook"))]
    async fn send_test_webhook(
        &self,
        request: Request<proto::SendTestWebhookRequest>,
    ) -> Result<Response<proto::WebhookDelivery>, Status> {
        observe(
            "SendTestWebhook",
            webhooks::send_test(&self.admin, request).await,
        )
    }

    #[tracing::instrument(skip_all, fields(rpc = "ImportKeys"))]
    async fn import_keys(
        &self,
        request: Request<proto::ImportKeysRequest>,
    ) -> Result<Response<proto::ImportKeysResponse>, Status> {
        observe("ImportKeys", hygiene::import(&self.admin, request).await)
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReportLeakedKey"))]
    async fn report_leaked_key(
        &self,
        request: Request<proto::ReportLeakedKeyRequest>,
    ) -> Result<Response<proto::ReportLeakedKeyResponse>, Status> {
        observe(
            "ReportLeakedKey",
            hygiene::report_leaked(&self.admin, request).await,
        )
    }
}

/// Counts a call by method and gRPC code. Labels are bounded: twenty-two
/// methods, seventeen codes, never an owner or a key.
fn observe<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
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
