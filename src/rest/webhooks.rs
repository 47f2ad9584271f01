//! `/v1/webhooks`: an owner's webhook endpoints and their deliveries.
//! Handlers translate: JSON → use-case request, one call into the webhook
//! use-cases of [`KeyAdmin`](crate::admin::KeyAdmin), result → JSON. The
//! JSON shapes are the proto's `Webhook` and `WebhookDelivery`, snake_case.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{
    error::ApiError,
    extract::{JsonBody, QueryParams, Segment},
    model::OwnerQuery,
    principal::Principal,
    RestState,
};
use crate::{
    admin::webhooks::{CreateWebhook, ListDeliveries, UpdateWebhook},
    domain::webhook::{self, Delivery},
};

type Shared = State<Arc<RestState>>;

const SECRET_SHOWN_ONCE: &str =
    "Store this signing secret now: it is shown only once and cannot be recovered.";

/// A registered endpoint. Never carries its signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub owner_id: String,
    pub url: String,
    /// Event types delivered; empty means every one.
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the endpoint is paused: an attempt to it timed out, and
    /// none of its deliveries is sent before this time.
    pub paused_until: Option<DateTime<Utc>>,
}

impl From<webhook::Webhook> for Webhook {
    fn from(hook: webhook::Webhook) -> Self {
        Self {
            id: hook.id,
            owner_id: hook.owner_id,
            url: hook.url,
            events: hook.events,
            enabled: hook.enabled,
            created_at: hook.created_at,
            updated_at: hook.updated_at,
            paused_until: hook.paused_until,
        }
    }
}

/// `POST /v1/webhooks`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookBody {
    /// Required with a service or admin token; a key acts for its own owner.
    pub owner_id: Option<String>,
    /// `https://…` (`http://` only with `KEYGATE_WEBHOOK_ALLOW_HTTP`).
    pub url: String,
    /// Event types to deliver; absent or empty means every one.
    #[serde(default)]
    pub events: Vec<String>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// `PATCH /v1/webhooks/{id}`: the fields present are changed.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookBody {
    pub owner_id: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// `POST /v1/webhooks/{id}/redeliver`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverBody {
    pub owner_id: Option<String>,
    /// The delivery's `event_id` (its `webhook-id`).
    pub event_id: String,
}

/// `POST /v1/webhooks/{id}/test`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestWebhookBody {
    pub owner_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    pub owner_id: Option<String>,
    /// Default 50, at most 100.
    pub page_size: Option<i32>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

/// The endpoint and its signing secret, shown only in this response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredWebhook {
    /// `whsec_…`: the Standard Webhooks signing secret.
    pub secret: String,
    pub message: &'static str,
    pub webhook: Webhook,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredWebhookData {
    pub data: RegisteredWebhook,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookData {
    pub data: Webhook,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<Webhook>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAttempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; absent when no response came.
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The `webhook-id` header: the same on every attempt.
    pub event_id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    /// The JSON body, exactly as signed.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempt_log: Vec<WebhookAttempt>,
}

impl From<Delivery> for WebhookDelivery {
    fn from(d: Delivery) -> Self {
        let pending = d.status == webhook::DeliveryStatus::Pending;
        Self {
            event_id: d.event_id,
            webhook_id: d.webhook_id,
            event_type: d.event_type,
            payload: d.payload,
            status: d.status.as_str(),
            attempts: d.attempts,
            next_attempt_at: pending.then_some(d.next_attempt_at),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
            attempt_log: d
                .attempt_log
                .into_iter()
                .map(|a| WebhookAttempt {
                    attempt: a.attempt,
                    at: a.at,
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryData {
    pub data: WebhookDelivery,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<WebhookDelivery>,
    /// Empty on the last page.
    pub next_page_token: String,
}

#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks",
    params(OwnerQuery),
    responses((status = 200, description = "The owner's endpoints, newest first", body = WebhookList)))]
pub async fn list(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<OwnerQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    let hooks = state.admin.list_webhooks(&owner_id).await?;
    Ok(Json(WebhookList {
        data: hooks.into_iter().map(Webhook::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks",
    request_body = CreateWebhookBody,
    responses((status = 201, description = "Registered; `secret` is shown only in this response", body = RegisteredWebhookData)))]
pub async fn create(
    State(state): Shared,
    principal: Principal,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): JsonBody<CreateWebhookBody>,
) -> Result<(StatusCode, Json<RegisteredWebhookData>), ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let request = CreateWebhook {
        owner_id,
        url: body.url,
        events: body.events,
        enabled: body.enabled,
    };
    let registered = state
        .admin
        .run_to_completion(move |admin| async move {
            admin.create_webhook(principal.caller(), request).await
        })
        .await?;
    let data = RegisteredWebhook {
        secret: registered.secret.expose(),
        message: SECRET_SHOWN_ONCE,
        webhook: registered.webhook.into(),
    };
    Ok((StatusCode::CREATED, Json(RegisteredWebhookData { data })))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), OwnerQuery),
    responses((status = 200, description = "The endpoint", body = WebhookData)))]
pub async fn get(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
) -> Result<Json<WebhookData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    let hook = state.admin.get_webhook(&owner_id, &id).await?;
    Ok(Json(WebhookData { data: hook.into() }))
}

#[utoipa::path(patch, path = "/v1/webhooks/{id}", operation_id = "update_webhook", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), OwnerQuery),
    request_body = UpdateWebhookBody,
    responses((status = 200, description = "The updated endpoint", body = WebhookData)))]
pub async fn update(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): JsonBody<UpdateWebhookBody>,
) -> Result<Json<WebhookData>, ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let mut update = UpdateWebhook::default();
    if let Some(url) = body.url {
        update.paths.push("url".to_owned());
        update.url = url;
    }
    if let Some(events) = body.events {
        update.paths.push("events".to_owned());
        update.events = events;
    }
    if let Some(enabled) = body.enabled {
        update.paths.push("enabled".to_owned());
        update.enabled = enabled;
    }
    let hook = state
        .admin
        .run_to_completion(move |admin| async move {
            admin.update_webhook(&owner_id, &id, update).await
        })
        .await?;
    Ok(Json(WebhookData { data: hook.into() }))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), OwnerQuery),
    responses((status = 204, description = "Deleted, with its deliveries")))]
pub async fn delete(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
) -> Result<StatusCode, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    state
        .admin
        .run_to_completion(move |admin| async move { admin.delete_webhook(&owner_id, &id).await })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), DeliveriesQuery),
    responses((status = 200, description = "Deliveries, newest first, each with every attempt", body = DeliveryList)))]
pub async fn deliveries(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let owner_id = principal.owner(query.owner_id, None)?;
    let page = state
        .admin
        .list_webhook_deliveries(ListDeliveries {
            owner_id,
            webhook_id: id,
            page_size: query.page_size.unwrap_or_default(),
            page_token: query.page_token.unwrap_or_default(),
        })
        .await?;
    Ok(Json(DeliveryList {
        data: page.items.into_iter().map(WebhookDelivery::from).collect(),
        next_page_token: page.next_page_token,
    }))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/redeliver", operation_id = "redeliver_webhook", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), OwnerQuery),
    request_body = RedeliverBody,
    responses((status = 202, description = "Queued again, due now, same webhook-id", body = DeliveryData)))]
pub async fn redeliver(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): JsonBody<RedeliverBody>,
) -> Result<(StatusCode, Json<DeliveryData>), ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let queued = state
        .admin
        .run_to_completion(move |admin| async move {
            admin
                .redeliver_webhook(&owner_id, &id, &body.event_id)
                .await
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryData {
            data: queued.into(),
        }),
    ))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/test", operation_id = "send_test_webhook", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's UUID"), OwnerQuery),
    request_body(content = Option<TestWebhookBody>, description = "May be omitted"),
    responses((status = 202, description = "A `webhook.test` event, queued", body = DeliveryData)))]
pub async fn send_test(
    State(state): Shared,
    principal: Principal,
    Segment(id): Segment,
    QueryParams(query): QueryParams<OwnerQuery>,
    JsonBody(body): super::extract::OptionalJsonBody<TestWebhookBody>,
) -> Result<(StatusCode, Json<DeliveryData>), ApiError> {
    let owner_id = principal.owner(query.owner_id, body.owner_id)?;
    let queued = state
        .admin
        .run_to_completion(move |admin| async move {
            admin
                .send_test_webhook(principal.caller(), &owner_id, &id)
                .await
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryData {
            data: queued.into(),
        }),
    ))
}
