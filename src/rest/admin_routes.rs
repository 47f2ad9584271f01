//! `/v1/admin/…`: operators' routes across owners, for `admin` tokens only.

use std::sync::Arc;

use axum::{extract::State, Json};

use super::{
    error::ApiError,
    extract::{JsonBody, OptionalJsonBody, QueryParams, Segment},
    model::{
        AuditEventList, AuditMeta, AuditQuery, KeyData, KeyList, ListKeysQuery, OwnerData,
        RevokeKeyBody, SuspendOwnerBody,
    },
    principal::Principal,
    RestState,
};
use crate::admin::{validate, ListAudit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

type Shared = State<Arc<RestState>>;

#[utoipa::path(get, path = "/v1/admin/api-keys", tag = "admin",
    params(ListKeysQuery),
    responses((status = 200, description = "Keys of every owner (or of `owner_id`), newest first", body = KeyList)))]
pub async fn list_keys(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<ListKeysQuery>,
) -> Result<Json<KeyList>, ApiError> {
    principal.require_admin()?;
    let owner_id = query.owner_id.clone();
    let page = state.admin.list_key_page(query.for_owner(owner_id)).await?;
    Ok(Json(KeyList::of(page, state.admin.now())))
}

#[utoipa::path(post, path = "/v1/admin/api-keys/{id}/revoke", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422")),
    request_body(content = Option<RevokeKeyBody>, description = "May be omitted; `owner_id` is ignored"),
    responses((status = 200, description = "The revoked key", body = KeyData)))]
pub async fn revoke_key(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    JsonBody(body): OptionalJsonBody<RevokeKeyBody>,
) -> Result<Json<KeyData>, ApiError> {
    let caller = principal.require_admin()?.clone();
    let key = state
        .admin
        .run_to_completion(move |admin| async move {
            admin.revoke_key(&caller, None, &id, &body.reason).await
        })
        .await?;
    Ok(Json(KeyData {
        data: super::model::ApiKey::of(key, state.admin.now()),
    }))
}

#[utoipa::path(post, path = "/v1/admin/owners/{owner_id}/suspend", tag = "admin",
    params(("owner_id" = String, Path)),
    request_body(content = Option<SuspendOwnerBody>, description = "May be omitted"),
    responses((status = 200, description = "The owner, suspended: its keys stop working", body = OwnerData)))]
pub async fn suspend_owner(
    State(state): Shared,
    principal: Principal,
    Segment(owner_id): Segment,
    JsonBody(body): OptionalJsonBody<SuspendOwnerBody>,
) -> Result<Json<OwnerData>, ApiError> {
    set_suspension(state, principal, owner_id, Some(body.reason)).await
}

#[utoipa::path(post, path = "/v1/admin/owners/{owner_id}/resume", tag = "admin",
    params(("owner_id" = String, Path)),
    responses((status = 200, description = "The owner, resumed", body = OwnerData)))]
pub async fn resume_owner(
    State(state): Shared,
    principal: Principal,
    Segment(owner_id): Segment,
) -> Result<Json<OwnerData>, ApiError> {
    set_suspension(state, principal, owner_id, None).await
}

async fn set_suspension(
    state: Arc<RestState>,
    principal: Principal,
    owner_id: String,
    reason: Option<String>,
) -> Result<Json<OwnerData>, ApiError> {
    let caller = principal.require_admin()?.clone();
    let owner = state
        .admin
        .run_to_completion(move |admin| async move {
            let reason = reason.map(|r| match r.trim() {
                "" => "suspended".to_owned(),
                _ => r,
            });
            admin
                .set_owner_suspension(&caller, &owner_id, reason.as_deref())
                .await
        })
        .await?;
    Ok(Json(OwnerData { data: owner.into() }))
}

#[utoipa::path(get, path = "/v1/admin/audit-events", tag = "admin",
    params(AuditQuery),
    responses((status = 200, description = "Audit events, newest first", body = AuditEventList)))]
pub async fn list_audit_events(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Json<AuditEventList>, ApiError> {
    principal.require_admin()?;
    let page_size = query
        .per_page
        .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX));
    let page = state
        .admin
        .list_audit(ListAudit {
            key_id: query.key_id.unwrap_or_default(),
            owner_id: query.owner_id.unwrap_or_default(),
            event: query.event.unwrap_or_default(),
            page_size,
            page_token: query.page_token.unwrap_or_default(),
        })
        .await?;
    // Accepted by `list_audit` already, so this cannot fail.
    let per_page = validate::page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    Ok(Json(AuditEventList {
        data: page.items.into_iter().map(Into::into).collect(),
        meta: AuditMeta {
            per_page,
            next_page_token: Some(page.next_page_token).filter(|t| !t.is_empty()),
        },
    }))
}
