//! Keys by page number (`page`, `per_page`, a total and the last page), the
//! paging REST clients expect. `per_page` is capped rather than refused, so a
//! client asking for "everything" gets the largest page instead of an error.

use super::{AdminError, AdminResult, KeyAdmin};
use crate::domain::ApiKey;

pub const DEFAULT_PER_PAGE: u32 = 20;
pub const MAX_PER_PAGE: u32 = 100;

/// One numbered page of keys; `owner_id = None` spans owners (admin only;
/// the transport enforces the role).
#[derive(Debug, Clone, Default)]
pub struct ListKeyPage {
    pub owner_id: Option<String>,
    pub environment: String,
    pub include_revoked: bool,
    pub page: Option<u64>,
    pub per_page: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct NumberedPage<T> {
    pub items: Vec<T>,
    pub page: u64,
    pub per_page: u32,
    pub total: u64,
    pub last_page: u64,
}

impl KeyAdmin {
    pub async fn list_key_page(&self, request: ListKeyPage) -> AdminResult<NumberedPage<ApiKey>> {
        let filter = self.key_filter(
            request.owner_id.as_deref(),
            &request.environment,
            request.include_revoked,
        )?;
        let page = request.page.unwrap_or(1);
        if page == 0 {
            return Err(AdminError::InvalidPageNumber("page"));
        }
        let per_page = match request.per_page {
            None => DEFAULT_PER_PAGE,
            Some(0) => return Err(AdminError::InvalidPageSize),
            Some(n) => u32::try_from(n).unwrap_or(MAX_PER_PAGE).min(MAX_PER_PAGE),
        };
        let offset = (page - 1).saturating_mul(u64::from(per_page));
        let (items, total) = self.store.list_keys_at(&filter, offset, per_page).await?;
        let total = u64::try_from(total).unwrap_or_default();
        Ok(NumberedPage {
            items,
            page,
            per_page,
            total,
            last_page: total.div_ceil(u64::from(per_page)).max(1),
        })
    }
}
