//! Webhook endpoint use-cases, owner scoped like keys: register (the
//! `whsec_` secret is returned once), list, update, delete, list
//! deliveries with their attempts, redeliver, and send a test event.
//! Both transports call these (docs/behaviour.md, "Webhooks").

use uuid::Uuid;

use super::{
    next_token, page_token, parse_id, validate, AdminError, AdminResult, Caller, KeyAdmin, Page,
    DEFAULT_PAGE_SIZE,
};
use crate::{
    domain::{
        webhook::{self, Delivery, EventFacts, Webhook, EVENT_TYPES},
        Echo,
    },
    store::{self, NewWebhook, WebhookChanges},
    webhooks::{secret::SealKey, SigningSecret},
};

/// Endpoints one owner may register.
pub const MAX_WEBHOOKS_PER_OWNER: u32 = 20;
const MAX_DELIVERY_PAGE: u32 = 100;

#[derive(Debug, Clone, Default)]
pub struct CreateWebhook {
    pub owner_id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `None` means enabled.
    pub enabled: Option<bool>,
}

/// An update as requested: the mask's paths and the values they refer to.
#[derive(Debug, Clone, Default)]
pub struct UpdateWebhook {
    pub paths: Vec<String>,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListDeliveries {
    pub owner_id: String,
    pub webhook_id: String,
    pub page_size: i32,
    pub page_token: String,
}

/// A registered endpoint and its signing secret, shown this once.
#[derive(Debug)]
pub struct RegisteredWebhook {
    pub secret: SigningSecret,
    pub webhook: Webhook,
}

impl KeyAdmin {
    async fn seal_key(&self) -> AdminResult<&SealKey> {
        Ok(self
            .seal_key
            .get_or_try_init(|| SealKey::load(&self.store, self.now()))
            .await?)
    }

    /// Unique, known event types.
    fn event_filter(raw: &[String]) -> AdminResult<Vec<String>> {
        let mut events: Vec<String> = Vec::with_capacity(raw.len());
        for event in raw {
            let event = event.trim();
            if !EVENT_TYPES.contains(&event) {
                return Err(AdminError::UnknownEventType(Echo::of(event)));
            }
            if !events.iter().any(|e| e == event) {
                events.push(event.to_owned());
            }
        }
        Ok(events)
    }

    async fn webhook_url(&self, raw: &str) -> AdminResult<String> {
        Ok(self
            .webhook_targets
            .check_url(raw)
            .await
            .map_err(AdminError::InvalidWebhookUrl)?
            .to_string())
    }

    /// Reads an endpoint and checks that `owner_id` owns it.
    async fn owned_webhook(&self, owner_id: &str, id: &str) -> AdminResult<Webhook> {
        let owner_id = validate::owner_id(owner_id)?;
        let hook = self
            .store
            .get_webhook(parse_id(id)?)
            .await
            .map_err(not_found_as(AdminError::WebhookNotFound))?;
        if hook.owner_id != owner_id {
            return Err(AdminError::OtherOwnersWebhook);
        }
        Ok(hook.as_of(self.now()))
    }

    pub async fn create_webhook(
        &self,
        _caller: &Caller,
        request: CreateWebhook,
    ) -> AdminResult<RegisteredWebhook> {
        let owner_id = validate::owner_id(&request.owner_id)?.to_owned();
        let url = self.webhook_url(&request.url).await?;
        let events = Self::event_filter(&request.events)?;
        let secret = SigningSecret::generate().map_err(|_| AdminError::RandomSourceFailed)?;
        let now = self.now();
        let id = Uuid::now_v7();
        let sealed_secret = self
            .seal_key()
            .await?
            .seal(id, &secret)
            .map_err(|_| AdminError::RandomSourceFailed)?;
        let new = NewWebhook {
            webhook: Webhook {
                id,
                owner_id,
                url,
                events,
                enabled: request.enabled.unwrap_or(true),
                created_at: now,
                updated_at: now,
                paused_until: None,
            },
            sealed_secret,
        };
        let webhook = self
            .store
            .insert_webhook(&new, MAX_WEBHOOKS_PER_OWNER)
            .await?;
        Ok(RegisteredWebhook { secret, webhook })
    }

    pub async fn list_webhooks(&self, owner_id: &str) -> AdminResult<Vec<Webhook>> {
        let owner_id = validate::owner_id(owner_id)?;
        let now = self.now();
        let hooks = self.store.list_webhooks(owner_id).await?;
        Ok(hooks.into_iter().map(|hook| hook.as_of(now)).collect())
    }

    pub async fn get_webhook(&self, owner_id: &str, id: &str) -> AdminResult<Webhook> {
        self.owned_webhook(owner_id, id).await
    }

    pub async fn update_webhook(
        &self,
        owner_id: &str,
        id: &str,
        update: UpdateWebhook,
    ) -> AdminResult<Webhook> {
        if update.paths.is_empty() {
            return Err(AdminError::EmptyUpdateMask);
        }
        let mut changes = WebhookChanges::default();
        for path in &update.paths {
            match path.as_str() {
                "url" => changes.url = Some(self.webhook_url(&update.url).await?),
                "events" => changes.events = Some(Self::event_filter(&update.events)?),
                "enabled" => changes.enabled = Some(update.enabled),
                "id" | "owner_id" | "created_at" | "updated_at" | "paused_until" => {
                    return Err(AdminError::ImmutableField(Echo::of(path)))
                }
                other => return Err(AdminError::UnknownField(Echo::of(other))),
            }
        }
        let hook = self.owned_webhook(owner_id, id).await?;
        self.store
            .update_webhook(hook.id, &changes, self.now())
            .await
            .map_err(not_found_as(AdminError::WebhookNotFound))
    }

    pub async fn delete_webhook(&self, owner_id: &str, id: &str) -> AdminResult<()> {
        let hook = self.owned_webhook(owner_id, id).await?;
        self.store
            .delete_webhook(hook.id)
            .await
            .map_err(not_found_as(AdminError::WebhookNotFound))
    }

    /// An endpoint's deliveries, newest first, each with every attempt.
    pub async fn list_webhook_deliveries(
        &self,
        request: ListDeliveries,
    ) -> AdminResult<Page<Delivery>> {
        let hook = self
            .owned_webhook(&request.owner_id, &request.webhook_id)
            .await?;
        let limit = validate::page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_DELIVERY_PAGE)?;
        let query = page_token::fingerprint(&["deliveries", &hook.id.to_string()]);
        let page_key = self.page_key().await?;
        let after = page_token::decode(page_key, &request.page_token, query)?;
        let deliveries = self.store.list_deliveries(hook.id, after, limit).await?;
        let next_page_token = next_token(page_key, &deliveries, limit, query, |d| {
            (d.created_at, d.event_id)
        });
        Ok(Page {
            items: deliveries,
            next_page_token,
            total_size: None,
        })
    }

    /// Queues a delivery again, due now; receivers see the same
    /// `webhook-id`.
    pub async fn redeliver_webhook(
        &self,
        owner_id: &str,
        webhook_id: &str,
        event_id: &str,
    ) -> AdminResult<Delivery> {
        let hook = self.owned_webhook(owner_id, webhook_id).await?;
        let event_id = parse_id(event_id)?;
        self.store
            .redeliver(event_id, hook.id, self.now())
            .await
            .map_err(not_found_as(AdminError::DeliveryNotFound))
    }

    /// Queues a `webhook.test` event for this endpoint alone.
    pub async fn send_test_webhook(
        &self,
        caller: &Caller,
        owner_id: &str,
        webhook_id: &str,
    ) -> AdminResult<Delivery> {
        let hook = self.owned_webhook(owner_id, webhook_id).await?;
        let now = self.now();
        let event_id = Uuid::now_v7();
        let metadata: std::collections::BTreeMap<String, String> =
            [("webhook_id".to_owned(), hook.id.to_string())].into();
        let payload = webhook::payload(&EventFacts {
            event_id,
            audit_event: "webhook.test",
            owner_id: &hook.owner_id,
            key_id: None,
            key_prefix: None,
            actor: &caller.actor,
            metadata: &metadata,
            at: now,
        });
        Ok(self
            .store
            .enqueue_for_endpoint(hook.id, event_id, "webhook.test", &payload, now)
            .await?)
    }
}

/// Maps the store's `NotFound` to the webhook error that names the thing.
fn not_found_as(error: AdminError) -> impl FnOnce(store::StoreError) -> AdminError {
    move |store_error| match store_error {
        store::StoreError::NotFound => error,
        other => other.into(),
    }
}
