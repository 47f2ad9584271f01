//! `/v1/api-keys`: an owner's keys. Handlers translate: JSON → use-case
//! request, one call into [`KeyAdmin`](crate::admin::KeyAdmin), result → JSON.
//! Mutations run to completion even if the client goes away.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};

use super::{
    error::ApiError,
    extract::{JsonBody, OptionalJsonBody, QueryParams, Segment},
    model::{
        ApiKey, CreateKeyBody, IssuedKey, IssuedKeyData, KeyData, KeyList, ListKeysQuery,
        OwnerQuery, RevokeKeyBody, RotateKeyBody, RotatedKey, RotatedKeyData, ScopesData,
        UpdateKeyBody, Usage, UsageData, UsageQuery, KEY_SHOWN_ONCE,
    },
    principal::Principal,
    RestState,
};
use crate::admin::{self, validate::MAX_TIMESTAMP_SECONDS};

type Shared = State<Arc<RestState>>;

#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    params(ListKeysQuery),
    responses((status = 200, description = "The owner's keys, masked, newest first", body = KeyList)))]
pub async fn list(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<ListKeysQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let owner_id = principal.owner(query.owner_id.clone(), None)?;
    let page = state
        .admin
        .list_key_page(query.for_owner(Some(owner_id)))
        .await?;
    Ok(Json(KeyList::of(page, state.admin.now())))
}

/// An expiry inside the range every store can order (years 1 to 9999).
fn expiry(at: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match at {
        Some(at) if at.timestamp() > MAX_TIMESTAMP_SECONDS => Err(ApiError::invalid(
            "expires_at",
            "expires_at must be before the year 10000",
        )),
        other => Ok(other),
    }
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys",
    request_body = CreateKeyBody,
    responses((status = 201, description = "Issued; `key` is shown only in this response", body = IssuedKeyData)))]
pub async fn create(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): JsonBody<CreateKeyBody>,
) -> Result<(StatusCode, Json<IssuedKeyData>), ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let superkey = body.superkey.unwrap_or(body.abilities.is_none());
    let request = admin::CreateKey {
        owner_id,
        name: body.name,
        environment: body.environment.unwrap_or_default(),
        abilities: body.abilities.unwrap_or_default(),
        superkey,
        rate_limit: body.rate_limit.map(Into::into),
        credits: body.credits.map(Into::into),
        expires_at: expiry(body.expires_at)?,
        metadata: body.metadata,
        allowed_cidrs: body.allowed_cidrs,
    };
    let issued = state
        .admin
        .create_key_within(principal.caller(), principal.ceiling(), request)
        .await?;
    let data = IssuedKey {
        key: issued.plaintext.into_exposed(),
        message: KEY_SHOWN_ONCE,
        api_key: ApiKey::of(issued.key, state.admin.now()),
    };
    Ok((StatusCode::CREATED, Json(IssuedKeyData { data })))
}

#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422"), OwnerQuery),
    responses((status = 200, description = "The key, masked", body = KeyData)))]
pub async fn get(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
) -> Result<Json<KeyData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    let key = state.admin.get_key(&owner_id, &id).await?;
    Ok(key_data(key, state.admin.now()))
}

fn key_data(key: crate::domain::ApiKey, now: chrono::DateTime<chrono::Utc>) -> Json<KeyData> {
    Json(KeyData {
        data: ApiKey::of(key, now),
    })
}

#[utoipa::path(patch, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422"), OwnerQuery),
    request_body = UpdateKeyBody,
    responses((status = 200, description = "The updated key", body = KeyData)))]
pub async fn update(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): JsonBody<UpdateKeyBody>,
) -> Result<Json<KeyData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let mut update = admin::UpdateKey::default();
    if body.environment.is_some() {
        update.paths.push("environment".to_owned());
    }
    if let Some(name) = body.name {
        update.paths.push("name".to_owned());
        update.name = name;
    }
    if let Some(abilities) = body.abilities {
        update.paths.push("abilities".to_owned());
        update.abilities = abilities;
    }
    if let Some(superkey) = body.superkey {
        update.paths.push("superkey".to_owned());
        update.superkey = superkey;
    }
    if let Some(rate_limit) = body.rate_limit {
        update.paths.push("rate_limit".to_owned());
        update.rate_limit = rate_limit.map(Into::into);
    }
    if let Some(credits) = body.credits {
        update.paths.push("credits".to_owned());
        update.credits = credits.map(Into::into);
    }
    if let Some(metadata) = body.metadata {
        update.paths.push("metadata".to_owned());
        update.metadata = metadata;
    }
    if let Some(allowed_cidrs) = body.allowed_cidrs {
        update.paths.push("allowed_cidrs".to_owned());
        update.allowed_cidrs = allowed_cidrs;
    }
    let key = state
        .admin
        .run_to_completion(move |admin| async move {
            let ceiling = principal.ceiling();
            admin
                .update_key_within(principal.caller(), ceiling, &owner_id, &id, update)
                .await
        })
        .await?;
    Ok(key_data(key, state.admin.now()))
}

#[utoipa::path(post, path = "/v1/api-keys/{id}/rotate", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422"), OwnerQuery),
    request_body(content = Option<RotateKeyBody>, description = "May be omitted"),
    responses((status = 201, description = "The successor; `key` is shown only in this response", body = RotatedKeyData)))]
pub async fn rotate(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): OptionalJsonBody<RotateKeyBody>,
) -> Result<(StatusCode, Json<RotatedKeyData>), ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let (issued, previous) = state
        .admin
        .run_to_completion(move |admin| async move {
            let ceiling = principal.ceiling();
            admin
                .rotate_key_within(
                    principal.caller(),
                    ceiling,
                    &owner_id,
                    &id,
                    body.overlap_minutes,
                )
                .await
        })
        .await?;
    let now = state.admin.now();
    let data = RotatedKey {
        key: issued.plaintext.into_exposed(),
        message: KEY_SHOWN_ONCE,
        api_key: ApiKey::of(issued.key, now),
        previous: ApiKey::of(previous, now),
    };
    Ok((StatusCode::CREATED, Json(RotatedKeyData { data })))
}

#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422"), OwnerQuery),
    request_body(content = Option<RevokeKeyBody>, description = "May be omitted"),
    responses((status = 200, description = "The revoked key", body = KeyData)))]
pub async fn revoke(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): OptionalJsonBody<RevokeKeyBody>,
) -> Result<Json<KeyData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let key = state
        .admin
        .run_to_completion(move |admin| async move {
            admin
                .revoke_key(principal.caller(), Some(&owner_id), &id, &body.reason)
                .await
        })
        .await?;
    Ok(key_data(key, state.admin.now()))
}

#[utoipa::path(get, path = "/v1/api-keys/{id}/usage", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "The key's UUID; anything else is a 422"), UsageQuery),
    responses((status = 200, description = "The key's usage", body = UsageData)))]
pub async fn usage(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<UsageData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    let recent = query
        .recent
        .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX));
    let (key, usage) = state.admin.key_usage(&owner_id, &id, recent).await?;
    Ok(Json(UsageData {
        data: Usage::of(key, usage),
    }))
}

#[utoipa::path(get, path = "/v1/api-keys/scopes", tag = "api-keys",
    responses((status = 200, description = "The configured ability catalog", body = ScopesData)))]
pub async fn scopes(State(state): Shared, _principal: Principal) -> Json<ScopesData> {
    Json(ScopesData {
        data: state
            .admin
            .abilities()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
    })
}
