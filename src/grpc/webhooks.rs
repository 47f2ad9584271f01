//! The webhook RPCs of KeyAdmin. Handlers translate: proto → use-case
//! request, one call into [`KeyAdmin`]'s webhook use-cases, result → proto.

use std::sync::Arc;

use tonic::Status;

use super::convert;
use crate::{
    admin::{
        webhooks::{CreateWebhook, ListDeliveries, UpdateWebhook},
        Caller, KeyAdmin,
    },
    domain::webhook::{Attempt, Delivery, DeliveryStatus, Webhook},
    proto,
};

const SECRET_SHOWN_ONCE: &str =
    "Store this signing secret now: it is shown only once and cannot be recovered.";

pub async fn create(
    admin: Arc<KeyAdmin>,
    caller: Caller,
    r: proto::CreateWebhookRequest,
) -> Result<proto::CreateWebhookResponse, Status> {
    let create = CreateWebhook {
        owner_id: r.owner_id,
        url: r.url,
        events: r.events,
        enabled: r.enabled,
    };
    let registered = admin
        .run_to_completion(move |admin| async move { admin.create_webhook(&caller, create).await })
        .await?;
    Ok(proto::CreateWebhookResponse {
        webhook: Some(webhook(registered.webhook)),
        secret: registered.secret.expose(),
        message: SECRET_SHOWN_ONCE.to_owned(),
    })
}

pub async fn list(
    admin: Arc<KeyAdmin>,
    _caller: Caller,
    r: proto::ListWebhooksRequest,
) -> Result<proto::ListWebhooksResponse, Status> {
    let hooks = admin.list_webhooks(&r.owner_id).await?;
    Ok(proto::ListWebhooksResponse {
        webhooks: hooks.into_iter().map(webhook).collect(),
    })
}

pub async fn update(
    admin: Arc<KeyAdmin>,
    _caller: Caller,
    r: proto::UpdateWebhookRequest,
) -> Result<proto::Webhook, Status> {
    let update = UpdateWebhook {
        paths: r.update_mask.map(|m| m.paths).unwrap_or_default(),
        url: r.url,
        events: r.events,
        enabled: r.enabled,
    };
    let hook = admin
        .run_to_completion(move |admin| async move {
            admin.update_webhook(&r.owner_id, &r.id, update).await
        })
        .await?;
    Ok(webhook(hook))
}

pub async fn delete(
    admin: Arc<KeyAdmin>,
    _caller: Caller,
    r: proto::DeleteWebhookRequest,
) -> Result<proto::DeleteWebhookResponse, Status> {
    admin
        .run_to_completion(
            move |admin| async move { admin.delete_webhook(&r.owner_id, &r.id).await },
        )
        .await?;
    Ok(proto::DeleteWebhookResponse {})
}

pub async fn deliveries(
    admin: Arc<KeyAdmin>,
    _caller: Caller,
    r: proto::ListWebhookDeliveriesRequest,
) -> Result<proto::ListWebhookDeliveriesResponse, Status> {
    let page = admin
        .list_webhook_deliveries(ListDeliveries {
            owner_id: r.owner_id,
            webhook_id: r.webhook_id,
            page_size: r.page_size,
            page_token: r.page_token,
        })
        .await?;
    Ok(proto::ListWebhookDeliveriesResponse {
        deliveries: page.items.into_iter().map(delivery).collect(),
        next_page_token: page.next_page_token,
    })
}

pub async fn redeliver(
    admin: Arc<KeyAdmin>,
    _caller: Caller,
    r: proto::RedeliverWebhookRequest,
) -> Result<proto::WebhookDelivery, Status> {
    let queued = admin
        .run_to_completion(move |admin| async move {
            admin
                .redeliver_webhook(&r.owner_id, &r.webhook_id, &r.event_id)
                .await
        })
        .await?;
    Ok(delivery(queued))
}

pub async fn send_test(
    admin: Arc<KeyAdmin>,
    caller: Caller,
    r: proto::SendTestWebhookRequest,
) -> Result<proto::WebhookDelivery, Status> {
    let queued = admin
        .run_to_completion(move |admin| async move {
            admin
                .send_test_webhook(&caller, &r.owner_id, &r.webhook_id)
                .await
        })
        .await?;
    Ok(delivery(queued))
}

fn webhook(hook: Webhook) -> proto::Webhook {
    proto::Webhook {
        id: hook.id.to_string(),
        owner_id: hook.owner_id,
        url: hook.url,
        events: hook.events,
        enabled: hook.enabled,
        created_at: Some(convert::timestamp(hook.created_at)),
        updated_at: Some(convert::timestamp(hook.updated_at)),
        paused_until: hook.paused_until.map(convert::timestamp),
    }
}

fn delivery(d: Delivery) -> proto::WebhookDelivery {
    use proto::webhook_delivery::Status as S;
    let status = match d.status {
        DeliveryStatus::Pending => S::Pending,
        DeliveryStatus::Delivered => S::Delivered,
        DeliveryStatus::Failed => S::Failed,
    };
    proto::WebhookDelivery {
        event_id: d.event_id.to_string(),
        webhook_id: d.webhook_id.to_string(),
        event_type: d.event_type,
        payload: d.payload,
        status: status as i32,
        attempts: d.attempts,
        next_attempt_at: (d.status == DeliveryStatus::Pending)
            .then(|| convert::timestamp(d.next_attempt_at)),
        last_status_code: d.last_status_code.map(u32::from).unwrap_or_default(),
        last_error: d.last_error.unwrap_or_default(),
        created_at: Some(convert::timestamp(d.created_at)),
        delivered_at: convert::optional_timestamp(d.delivered_at),
        attempt_log: d.attempt_log.into_iter().map(attempt).collect(),
    }
}

fn attempt(a: Attempt) -> proto::WebhookAttempt {
    proto::WebhookAttempt {
        attempt: a.attempt,
        at: Some(convert::timestamp(a.at)),
        status_code: a.status_code.map(u32::from).unwrap_or_default(),
        latency_ms: a.latency_ms,
        error: a.error.unwrap_or_default(),
    }
}
