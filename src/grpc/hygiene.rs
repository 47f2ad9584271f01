//! The key-hygiene RPCs of KeyAdmin (docs/behaviour.md, "Key hygiene"):
//! `ImportKeys` and `ReportLeakedKey`. Handlers translate: proto →
//! use-case request, one call into [`KeyAdmin`], result → proto.

use std::sync::Arc;

use tonic::Status;

use super::convert;
use crate::{
    admin::{
        hygiene::{ImportRow, ImportedSecret, RowOutcome},
        Caller, KeyAdmin,
    },
    proto::{self, import_key_result::Outcome, import_key_row::Secret},
};

/// The audit actor is the admin token's name, as for every other change.
pub async fn import(
    admin: Arc<KeyAdmin>,
    caller: Caller,
    r: proto::ImportKeysRequest,
) -> Result<proto::ImportKeysResponse, Status> {
    let rows: Vec<Result<ImportRow, String>> = r.rows.into_iter().map(import_row).collect();
    let outcomes = admin
        .run_to_completion(move |admin| async move { admin.import_keys(&caller, rows).await })
        .await?;
    let mut response = proto::ImportKeysResponse::default();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let row = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let result = match outcome {
            RowOutcome::Imported { id } => {
                response.imported += 1;
                result(row, Outcome::Imported, id.to_string(), String::new())
            }
            RowOutcome::AlreadyPresent { id } => {
                response.already_present += 1;
                result(row, Outcome::AlreadyPresent, id.to_string(), String::new())
            }
            RowOutcome::Invalid { reason } => {
                response.invalid += 1;
                result(row, Outcome::Invalid, String::new(), reason)
            }
        };
        response.results.push(result);
    }
    Ok(response)
}

fn result(row: u32, outcome: Outcome, id: String, reason: String) -> proto::ImportKeyResult {
    proto::ImportKeyResult {
        row,
        outcome: outcome as i32,
        id,
        reason,
    }
}

fn import_row(row: proto::ImportKeyRow) -> Result<ImportRow, String> {
    let (key, key_sha256) = match row.secret {
        Some(Secret::Key(key)) => (Some(ImportedSecret::new(key)), None),
        Some(Secret::KeySha256(digest)) => (None, Some(digest)),
        None => (None, None),
    };
    Ok(ImportRow {
        owner_id: row.owner_id,
        name: row.name,
        environment: row.environment,
        abilities: row.abilities,
        superkey: row.superkey,
        expires_at: convert::instant(row.expires_at, "expires_at")
            .map_err(|status| status.message().to_owned())?,
        metadata: convert::metadata(row.metadata),
        allowed_cidrs: row.allowed_cidrs,
        key,
        key_sha256,
        key_prefix: Some(row.key_prefix).filter(|p| !p.is_empty()),
    })
}

pub async fn report_leaked(
    admin: Arc<KeyAdmin>,
    caller: Caller,
    r: proto::ReportLeakedKeyRequest,
) -> Result<proto::ReportLeakedKeyResponse, Status> {
    let found = admin
        .run_to_completion(move |admin| async move {
            admin.report_leak(&caller.actor, &r.key, &r.url).await
        })
        .await?;
    Ok(proto::ReportLeakedKeyResponse {
        known: found.is_some(),
        api_key: found.map(|key| convert::api_key(key, admin.now())),
    })
}
