//! `POST /v1/secret-scanning/github`: GitHub's secret-scanning partner
//! reports of leaked keys (docs/behaviour.md, "Key hygiene"). Only a body
//! signed with a configured key is acted on; the answer labels each token
//! and says nothing more about tokens that are not keys of ours.

use std::sync::Arc;

use axum::{body::Bytes, extract::State, http::HeaderMap, Json};

use super::{error::ApiError, RestState};
use crate::{
    admin::hygiene::ReportOutcome,
    leaks::{self, Label, ReportedToken, Verdict},
};

/// The audit actor of reports that come from GitHub.
pub const ACTOR: &str = "github-secret-scanning";

pub async fn github(
    State(state): State<Arc<RestState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<Verdict>>, ApiError> {
    let Some(keys) = &state.leaks else {
        return Err(ApiError::not_found("no such route"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(error) = keys.verify(
        header(leaks::KEY_ID_HEADER),
        header(leaks::SIGNATURE_HEADER),
        &body,
    ) {
        tracing::warn!(%error, "secret-scanning report refused");
        return Err(ApiError::unauthenticated(
            "the report is not signed with a configured GitHub key",
        ));
    }
    let reported: Vec<ReportedToken> = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request("the body must be a JSON array of {token, type, url, source}")
    })?;
    let (body, tokens) = (body.to_vec(), reported.clone());
    let outcome = state
        .admin
        .run_to_completion(move |admin| async move {
            admin.handle_leak_report(ACTOR, &body, &tokens).await
        })
        .await?;
    let known = match outcome {
        ReportOutcome::Handled(known) => known,
        ReportOutcome::Replayed => {
            tracing::warn!("secret-scanning report refused: the same body was handled before");
            return Err(ApiError::unauthenticated(
                "this report was already received",
            ));
        }
    };
    let verdicts = reported
        .into_iter()
        .zip(known)
        .map(|(token, known)| Verdict {
            token_raw: token.token,
            token_type: token.token_type,
            label: if known {
                Label::TruePositive
            } else {
                Label::FalsePositive
            },
        })
        .collect::<Vec<_>>();
    tracing::info!(
        target: "keygate::leaks",
        reported = verdicts.len(),
        known = verdicts.iter().filter(|v| v.label == Label::TruePositive).count(),
        "secret-scanning report handled"
    );
    Ok(Json(verdicts))
}
