//! The one error type of the HTTP surface. Every error answers
//! `{"error":{"code":"snake_case","message":"…"}}` with the right status; internal causes are
//! logged once (inside the request span) and never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ghl::GhlError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field is invalid.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no or wrong credentials, or a bad webhook signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a pairing link that is tampered with or expired.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the request body is larger than the limit (WAGHL_BODY_LIMIT_BYTES)")]
    PayloadTooLarge,
    /// 408: the body did not arrive within WAGHL_HTTP_BODY_TIMEOUT_MS.
    #[error("the request body did not arrive in time (WAGHL_HTTP_BODY_TIMEOUT_MS)")]
    RequestTimeout,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503: a dependency is missing or not ready; the message says what to do.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// 502: GHL answered with an error the caller should see.
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unavailable { code, .. }
            | Self::BadGateway { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Internal(_) => "internal",
        }
    }
}

/// The body of every error: `{"error":{"code":"snake_case","message":"…"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: what a program matches on.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: String) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message: shortened(message),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "request failed");
        }
        (self.status(), Json(ErrorBody::new(self.code(), self.to_string()))).into_response()
    }
}

/// Messages quote what was wrong (serde quotes a mistyped value whole): a 900 KB value is
/// not sent back.
fn shortened(mut message: String) -> String {
    const MAX_CHARS: usize = 300;
    if let Some((cut, _)) = message.char_indices().nth(MAX_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::Conflict(what) => Self::Conflict {
                code: "conflict",
                message: format!("conflicts with an existing record ({what})"),
            },
            other => Self::Internal(other.into()),
        }
    }
}

impl From<GhlError> for ApiError {
    fn from(e: GhlError) -> Self {
        let message = e.to_string();
        match e {
            GhlError::NotConfigured(_) => Self::Unavailable {
                code: "ghl_not_configured",
                message,
            },
            GhlError::Unavailable(_) | GhlError::Uncertain(_) | GhlError::RateLimited { .. } => Self::Unavailable {
                code: "ghl_unavailable",
                message,
            },
            GhlError::NotInstalled => Self::Conflict {
                code: "ghl_not_installed",
                message,
            },
            GhlError::ReauthRequired(_) => Self::Conflict {
                code: "ghl_reauth_required",
                message,
            },
            GhlError::Rejected { .. } => Self::BadGateway {
                code: "ghl_rejected",
                message,
            },
            GhlError::Store(e) => e.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}
