//! Request parsing at the edge, so that every bad input becomes a precise
//! [`ApiError`] rather than axum's plain-text rejections: 413 past the body
//! limit, 415 for a body that is not JSON, 400 for malformed JSON (invalid
//! UTF-8 included), 422 naming the field for wrong types, unknown fields or
//! a bad query parameter.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body. With `OPTIONAL`, an empty body (no content at all) stands for
/// `T::default()`, for the routes whose body is optional (revoke, rotate).
pub struct JsonBody<T, const OPTIONAL: bool = false>(pub T);

/// A body that may be omitted.
pub type OptionalJsonBody<T> = JsonBody<T, true>;

impl<S, T, const OPTIONAL: bool> FromRequest<S> for JsonBody<T, OPTIONAL>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|media| {
                media.type_() == mime::APPLICATION
                    && (media.subtype() == mime::JSON || media.suffix() == Some(mime::JSON))
            });
        let has_content_type = request.headers().contains_key(header::CONTENT_TYPE);
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(BODY_LIMIT)
                } else {
                    ApiError::bad_request("the request body could not be read")
                }
            })?;
        if OPTIONAL && bytes.is_empty() && (!has_content_type || is_json) {
            return Ok(Self(T::default()));
        }
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut json)
            .map_err(|error| json_error(&error.path().to_string(), error.into_inner()))?;
        json.end().map_err(|error| json_error("", error))?;
        Ok(Self(value))
    }
}

/// Query parameters, parsed into `T`; a wrong type or an unknown name is a
/// 422 naming the parameter.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let parser = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(parser)
            .map(Self)
            .map_err(|error| {
                let field = error.path().to_string();
                ApiError::invalid(field_or_body(&field), error.into_inner().to_string())
            })
    }
}

/// One path segment, e.g. a key id. Its meaning (a UUID) is checked by the
/// use-case, so that both transports answer a malformed id the same way.
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(segment)| Self(segment))
            .map_err(|_| ApiError::invalid("id", "the path segment is not valid UTF-8"))
    }
}

/// 422 for JSON of the wrong shape, 400 for text that is not JSON.
fn json_error(field: &str, error: serde_json::Error) -> ApiError {
    if error.is_data() {
        ApiError::invalid(field_or_body(field), error.to_string())
    } else {
        ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
    }
}

fn field_or_body(path: &str) -> &str {
    if path.is_empty() || path == "." {
        "body"
    } else {
        path
    }
}
