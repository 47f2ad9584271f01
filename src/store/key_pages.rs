//! Numbered pages of keys (`page`, `per_page`), for the REST API whose
//! clients show "page 3 of 7". KeyAdmin over gRPC pages by cursor instead
//! (`keys.rs`); both share one filter and one order, newest first.

use sqlx::QueryBuilder;

use super::{
    keys::{push_key_filter, KeyFilter},
    rows::{key_columns, keys_from_rows, KeyRow},
    with_pool, Store, StoreResult,
};
use crate::domain::ApiKey;

impl Store {
    /// The keys matching `filter` after skipping `offset`, at most `limit`,
    /// and how many match in all.
    pub async fn list_keys_at(
        &self,
        filter: &KeyFilter,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(Vec<ApiKey>, i64)> {
        // Beyond i64 no database holds that many rows; the page is empty.
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        with_pool!(&self.main, pool => {
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM api_keys k");
            push_key_filter(&mut count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            if offset >= total {
                return Ok((Vec::new(), total));
            }
            let mut page = QueryBuilder::new(concat!("SELECT ", key_columns!(), " FROM api_keys k"));
            push_key_filter(&mut page, filter);
            page.push(" ORDER BY k.created_at DESC, k.id DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(" OFFSET ")
                .push_bind(offset);
            let rows: Vec<KeyRow> = page.build_query_as().fetch_all(pool).await?;
            Ok((keys_from_rows(rows)?, total))
        })
    }
}
