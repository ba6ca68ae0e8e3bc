//! Extractors that turn every bad request into an [`ApiError`]: JSON bodies, query strings,
//! path ids and the admin bearer token. axum's own rejections answer plain text; none of them
//! is used directly by a handler.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::domain::LocationId;
use crate::state::AppState;

/// `axum::Json`, but malformed, mistyped or oversized bodies answer our JSON error.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected `Content-Type: application/json`".into())
        }
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// An optional JSON body: an empty body is `None`; anything else must parse.
pub struct MaybeJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for MaybeJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        refuse_other_types(req.headers())?;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        serde_json::from_slice(&bytes)
            .map(|value| Self(Some(value)))
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
    }
}

/// 415 when the body is declared as something else than JSON (`application/json` or
/// `application/…+json`): a form, a text or a multipart body is never read as JSON. A body
/// with no `Content-Type` at all is read as JSON: GHL does not document the header of its
/// webhooks, and refusing them all would stop every message.
pub fn refuse_other_types(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(declared) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = declared
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "expected `Content-Type: application/json`".into(),
        ))
    }
}

/// `axum::extract::Query`, but a malformed value, a duplicated key or an unknown shape answers
/// 400 `invalid_query` in our JSON error.
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A path parameter as text, percent-decoded; one that is not UTF-8 answers 400 `invalid_path`.
pub struct AppPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AppPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// A body that could not be read: too large (413), too slow (408) or cut short (400).
pub fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(e) = cause {
        if e.is::<super::server::BodyTimeout>() {
            return ApiError::RequestTimeout;
        }
        cause = e.source();
    }
    ApiError::bad_request("unreadable_body", rejection.body_text())
}

/// The `{id}` of a location route, checked before any lookup.
pub struct LocationPath(pub LocationId);

impl<S: Send + Sync> FromRequestParts<S> for LocationPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AppPath(raw) = AppPath::from_request_parts(parts, state).await?;
        LocationId::parse(&raw)
            .map(Self)
            .map_err(|e| ApiError::bad_request("invalid_location_id", e.to_string()))
    }
}

/// Proof that the request carries `Authorization: Bearer $WAGHL_ADMIN_TOKEN`.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("expected `Authorization: Bearer <admin token>`".into()))?;
        let expected = state.admin_token.expose().as_bytes();
        // Constant time, so the token cannot be guessed byte by byte from response times.
        if bool::from(presented.trim().as_bytes().ct_eq(expected)) {
            Ok(Self)
        } else {
            Err(ApiError::Unauthorized("the admin token is wrong".into()))
        }
    }
}
