//! GHL's webhooks: the conversation provider's Delivery URL (outbound messages) and the app's
//! default webhook URL (INSTALL / UNINSTALL). Both authenticate the raw body first; nothing
//! that fails authentication is parsed, stored or logged with its body.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{bytes_rejection, refuse_other_types};
use super::openapi::one_of;
use super::{ApiError, ErrorBody};
use crate::domain::{OutboundRequest, clip, is_id};
use crate::ghl::webhook::{Rejection, check_timestamp};
use crate::ghl::{Action, GhlError};
use crate::intake::Queued;
use crate::metrics::ReasonLabels;
use crate::state::AppState;
use crate::store::{IntakeRow, LocationStatus, TokenOwner};
use crate::time::now_ms;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provider))
        .routes(routes!(app_event))
}

fn ack_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&[
        "queued",
        "duplicate",
        "ignored",
        "installed",
        "uninstalled",
        "awaiting_oauth",
    ])
}

/// What waghl did with a webhook.
#[derive(Serialize, ToSchema)]
struct WebhookAck {
    #[schema(schema_with = ack_schema)]
    status: &'static str,
    /// Why it was ignored, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl WebhookAck {
    fn status(status: &'static str) -> Json<Self> {
        Json(Self { status, reason: None })
    }
}

/// A webhook body that proved it comes from GHL, parsed as JSON.
pub struct VerifiedWebhook {
    pub body: Value,
    pub webhook_id: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyQuery {
    /// `$WAGHL_WEBHOOK_KEY`, for webhooks GHL delivers unsigned.
    key: Option<String>,
}

impl FromRequest<AppState> for VerifiedWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned();
        let key = Query::<KeyQuery>::try_from_uri(req.uri()).ok().and_then(|q| q.0.key);
        let headers: HeaderMap = req.headers().clone();
        refuse_other_types(&headers)?;
        let raw = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        // Raw bytes: a signature header that is not even ASCII is present, and wrong.
        let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
        let verified = state.webhooks.verify(
            header("x-ghl-signature"),
            header("x-wh-signature"),
            key.as_deref(),
            &raw,
        );
        let body: Value = match verified {
            Ok(_) => serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?,
            Err(rejection) => return Err(refuse(state, &route, rejection)),
        };
        check_timestamp(&body, now_ms()).map_err(|rejection| refuse(state, &route, rejection))?;
        let webhook_id = match body.get("webhookId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if is_id(id, 128) => Some(id.clone()),
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_webhook",
                    format!("webhookId {} is not an id", clip(&other.to_string())),
                ));
            }
        };
        Ok(Self { body, webhook_id })
    }
}

/// Counts and logs (without the body) a refused webhook, and answers 401.
fn refuse(state: &AppState, route: &str, rejection: Rejection) -> ApiError {
    state
        .metrics
        .webhook_rejections
        .get_or_create(&ReasonLabels {
            reason: rejection.code().into(),
        })
        .inc();
    tracing::warn!(http.route = route, reason = rejection.code(), "webhook refused");
    ApiError::Unauthorized(rejection.to_string())
}

/// The conversation provider's Delivery URL: an agent's message (GHL's `ProviderOutboundMessage`),
/// queued for WhatsApp and answered at once. Signed with `x-ghl-signature` (Ed25519) or
/// `x-wh-signature` (RSA), or carrying `?key=`.
#[utoipa::path(post, path = "/webhooks/ghl/provider", tag = "webhooks", params(KeyQuery),
    request_body(content = Object, description = "GHL's ProviderOutboundMessage body"),
    responses((status = 200, body = WebhookAck, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn provider(State(state): State<AppState>, webhook: VerifiedWebhook) -> Result<Json<WebhookAck>, ApiError> {
    state.ghl.ensure_configured()?;
    let row = match intake_row(&state, &webhook) {
        Ok(row) => row,
        // A redelivery of a webhook handled before is a duplicate even when it would be
        // refused now; checked only here, so an accepted webhook costs no read for it.
        Err(_) if already_processed(&state, &webhook).await? => return Ok(WebhookAck::status("duplicate")),
        Err(e) => return Err(e),
    };
    let (location_id, message_id) = (row.location_id.clone(), row.ghl_message_id.clone());
    let queued = state.intake.queue(row).await.map_err(|e| ApiError::Unavailable {
        code: "intake_unavailable",
        message: e.to_string(),
    })?;
    let status = match queued {
        Queued::New(_) => "queued",
        Queued::Duplicate => "duplicate",
        Queued::UnknownLocation if already_processed(&state, &webhook).await? => "duplicate",
        Queued::UnknownLocation => {
            return Err(ApiError::not_found(format!("no location {location_id} is installed")));
        }
    };
    tracing::info!(location.id = %location_id, ghl.message_id = %message_id, status, "outbound message received");
    Ok(WebhookAck::status(status))
}

/// The outbox row a provider webhook asks for (the intake writer checks its location); or why
/// it cannot be queued.
fn intake_row(state: &AppState, webhook: &VerifiedWebhook) -> Result<IntakeRow, ApiError> {
    let provider_id = state.config.ghl.conversation_provider_id.as_deref();
    let request = OutboundRequest::from_webhook(&webhook.body, provider_id)
        .map_err(|message| ApiError::bad_request("invalid_webhook", message))?;
    let location_id = request
        .location_id
        .clone()
        .expect("parsed webhooks name their location");
    Ok(IntakeRow {
        body: serde_json::to_string(&request).map_err(anyhow::Error::from)?,
        location_id: location_id.as_str().to_owned(),
        ghl_contact_id: request.ghl_contact_id,
        to_phone: request.phone,
        ghl_message_id: request.ghl_message_id,
        written_at: request.created_at,
        webhook_id: webhook.webhook_id.clone(),
    })
}

/// A repeated `webhookId` is answered 200 and changes nothing (GHL may be retrying after a
/// lost answer). Ids are recorded once the webhook was handled.
async fn already_processed(state: &AppState, webhook: &VerifiedWebhook) -> Result<bool, ApiError> {
    match &webhook.webhook_id {
        Some(id) => Ok(state.store.webhook_seen(id).await?),
        None => Ok(false),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    app_id: Option<String>,
    location_id: Option<String>,
    company_id: Option<String>,
}

impl AppEvent {
    /// The ids are used in GHL calls, stored and logged: each must look like one.
    fn check_ids(&self) -> Result<(), ApiError> {
        let ids = [
            ("appId", &self.app_id),
            ("locationId", &self.location_id),
            ("companyId", &self.company_id),
        ];
        match ids
            .iter()
            .find(|(_, id)| id.as_deref().is_some_and(|id| !is_id(id, 64)))
        {
            Some((field, Some(id))) => Err(ApiError::bad_request(
                "invalid_webhook",
                format!("{field} {} is not an id", clip(id)),
            )),
            _ => Ok(()),
        }
    }
}

/// The app's default webhook: INSTALL and UNINSTALL of the marketplace app. 429 asks GHL to
/// retry later.
#[utoipa::path(post, path = "/webhooks/ghl/app", tag = "webhooks", params(KeyQuery),
    request_body(content = Object, description = "GHL's INSTALL / UNINSTALL body"),
    responses((status = 200, body = WebhookAck, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn app_event(State(state): State<AppState>, webhook: VerifiedWebhook) -> Result<Response, ApiError> {
    state.ghl.ensure_configured()?;
    if already_processed(&state, &webhook).await? {
        return Ok(WebhookAck::status("duplicate").into_response());
    }
    let event: AppEvent = serde_json::from_value(webhook.body)
        .map_err(|e| ApiError::bad_request("invalid_webhook", format!("unexpected field type: {e}")))?;
    event.check_ids()?;
    if event.app_id.as_deref() != state.ghl.app_id() {
        let ack = WebhookAck {
            status: "ignored",
            reason: Some("another app"),
        };
        return Ok(Json(ack).into_response());
    }
    let outcome = match event.kind.as_deref() {
        Some("INSTALL") => install(&state, &event).await,
        Some("UNINSTALL") => uninstall(&state, &event).await.map_err(GhlError::from),
        _ => Ok("ignored"),
    };
    match outcome {
        Ok(status) => {
            if let Some(id) = &webhook.webhook_id {
                state.store.record_webhook(id).await?;
            }
            Ok(WebhookAck::status(status).into_response())
        }
        // GHL retries app webhooks only after a 429 (GHL_API.md §8.5): ask for a retry when
        // the failure is on GHL's side and will heal.
        Err(e) if e.action() == Action::RetryLater => {
            tracing::warn!(error = %e, "app event deferred; GHL will retry it");
            Ok((
                StatusCode::TOO_MANY_REQUESTS,
                Json(ErrorBody::new(e.code(), e.to_string())),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// A location install completes through the OAuth callback; an install that GHL announces for
/// an agency whose company token waghl holds is completed here by minting the location token.
async fn install(state: &AppState, event: &AppEvent) -> Result<&'static str, GhlError> {
    let Some(company_id) = event.company_id.as_deref() else {
        return Ok("awaiting_oauth");
    };
    let company = state.store.credentials(TokenOwner::Company(company_id)).await?;
    if company.is_none_or(|c| c.status != LocationStatus::Installed) {
        return Ok("awaiting_oauth");
    }
    match event.location_id.as_deref() {
        Some(location_id) => {
            state
                .ghl
                .install_company_location(company_id, location_id, None)
                .await?
        }
        None => {
            state.ghl.install_company_locations(company_id).await?;
        }
    }
    Ok("installed")
}

/// Deletes the tokens and marks the location(s) uninstalled; message history stays.
async fn uninstall(state: &AppState, event: &AppEvent) -> Result<&'static str, crate::store::StoreError> {
    let locations = match (&event.location_id, &event.company_id) {
        (Some(location_id), _) => vec![location_id.clone()],
        (None, Some(company_id)) => {
            state.store.uninstall(TokenOwner::Company(company_id)).await?;
            state.store.company_location_ids(company_id).await?
        }
        (None, None) => return Ok("ignored"),
    };
    for location_id in &locations {
        if let Ok(location) = crate::domain::LocationId::parse(location_id)
            && state.sessions.view(&location).await?.is_some()
            && let Err(e) = state
                .sessions
                .logout(&location, crate::sessions::Unlink::BestEffort)
                .await
        {
            tracing::warn!(location.id = %location_id, error = %e, "could not log the WhatsApp session out");
        }
        state.store.uninstall(TokenOwner::Location(location_id)).await?;
        tracing::info!(location.id = %location_id, "location uninstalled");
    }
    Ok("uninstalled")
}
