//! The admin JSON API (bearer `WAGHL_ADMIN_TOKEN`): locations and their health. The console
//! shows the same [`Location`] and runs the same connection test ([`test_connection`]).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorDetail;
use super::openapi::{IdPath, one_of};
use super::sessions::{Session, session_view};
use super::{AdminAuth, ApiError, ErrorBody, LocationPath};
use crate::domain::LocationId;
use crate::ghl::GhlError;
use crate::sessions::StateView;
use crate::state::AppState;
use crate::store::{LocationRecord, LocationStatus, QueueCounts, TokenOwner, TokenSource};
use crate::time::rfc3339;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_locations))
        .routes(routes!(get_location))
        .routes(routes!(test_location))
}

fn status_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&["installed", "reauth_required", "uninstalled"])
}

fn token_source_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    one_of(&["oauth", "company"])
}

/// The `LOCATION` shape of ARCHITECTURE.md ("Interfaces"), plus a few extra fields.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Location {
    pub id: String,
    pub name: Option<String>,
    pub company_id: Option<String>,
    #[schema(schema_with = status_schema)]
    pub status: LocationStatus,
    /// GHL refused a token refresh: the app must be installed again.
    pub needs_reinstall: bool,
    #[schema(schema_with = token_source_schema)]
    pub token_source: TokenSource,
    pub token_expires_at: Option<String>,
    pub installed_at: String,
    pub session: Session,
    pub queues: Queues,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Queues {
    pub inbound_pending: i64,
    pub outbound_pending: i64,
    pub dead: i64,
}

impl From<QueueCounts> for Queues {
    fn from(counts: QueueCounts) -> Self {
        Self {
            inbound_pending: counts.inbound_pending,
            outbound_pending: counts.outbound_pending,
            dead: counts.dead,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct LocationList {
    locations: Vec<Location>,
}

/// Every location with its session and queues, in one pass over the queues.
pub async fn all_locations(state: &AppState) -> Result<Vec<Location>, ApiError> {
    let records = state.store.locations().await?;
    let mut queues = state.store.all_queue_counts().await?;
    let mut views: std::collections::HashMap<LocationId, StateView> =
        state.sessions.views().await?.into_iter().collect();
    let mut locations = Vec::with_capacity(records.len());
    for record in &records {
        let counts = queues.remove(&record.location_id).unwrap_or_default();
        let id = stored_id(record)?;
        let view = views
            .remove(&id)
            .unwrap_or_else(|| StateView::unpaired(record.installed_at));
        locations.push(location_view(state, record, &id, view, counts).await);
    }
    Ok(locations)
}

/// Every installed location.
#[utoipa::path(get, path = "/api/v1/locations", tag = "locations", security(("admin" = [])),
    responses((status = 200, body = LocationList, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn list_locations(_: AdminAuth, State(state): State<AppState>) -> Result<Json<LocationList>, ApiError> {
    Ok(Json(LocationList {
        locations: all_locations(&state).await?,
    }))
}

/// One location.
#[utoipa::path(get, path = "/api/v1/locations/{id}", tag = "locations", params(IdPath), security(("admin" = [])),
    responses((status = 200, body = Location, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn get_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<Location>, ApiError> {
    Ok(Json(location(&state, id.as_str()).await?))
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionTest {
    pub ok: bool,
    /// Why the call failed (`ghl_reauth_required`, `ghl_unavailable`…).
    pub error: Option<ErrorDetail>,
    pub location: Location,
}

/// A connection test: one cheap authenticated GHL call. The answer says whether it worked; the
/// location's status and last error are updated either way.
pub async fn test_connection(state: &AppState, id: &LocationId) -> Result<ConnectionTest, ApiError> {
    let before = find(state, id.as_str()).await?;
    state.ghl.ensure_configured()?;
    let outcome = state.ghl.test_connection(id.as_str()).await;
    // A refused refresh has already marked the location; anything else is recorded here.
    if !matches!(outcome, Err(GhlError::ReauthRequired(_))) {
        let last_error = outcome.as_ref().err().map(ToString::to_string);
        state
            .store
            .set_status(TokenOwner::Location(id.as_str()), before.status, last_error.as_deref())
            .await?;
    }
    Ok(ConnectionTest {
        ok: outcome.is_ok(),
        error: outcome.as_ref().err().map(|e| ErrorDetail {
            code: e.code().to_owned(),
            message: e.to_string(),
        }),
        location: location(state, id.as_str()).await?,
    })
}

/// Test the location's GHL connection with one cheap authenticated call.
#[utoipa::path(post, path = "/api/v1/locations/{id}/test", tag = "locations", params(IdPath),
    security(("admin" = [])),
    responses((status = 200, body = ConnectionTest, description = "Done"), (status = "default", body = ErrorBody, description = "An error")))]
async fn test_location(
    _: AdminAuth,
    State(state): State<AppState>,
    LocationPath(id): LocationPath,
) -> Result<Json<ConnectionTest>, ApiError> {
    Ok(Json(test_connection(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> Result<LocationRecord, ApiError> {
    state
        .store
        .location(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no location {id}")))
}

/// One location as the API shows it; 404 when it is not installed.
pub async fn location(state: &AppState, id: &str) -> Result<Location, ApiError> {
    let record = find(state, id).await?;
    let queues = state.store.queue_counts(id).await?;
    let id = stored_id(&record)?;
    let view = state.sessions.view_or_unpaired(&id, record.installed_at).await?;
    Ok(location_view(state, &record, &id, view, queues).await)
}

fn stored_id(record: &LocationRecord) -> Result<LocationId, ApiError> {
    Ok(LocationId::parse(&record.location_id).map_err(|e| anyhow::anyhow!("stored location id: {e}"))?)
}

async fn location_view(
    state: &AppState,
    record: &LocationRecord,
    id: &LocationId,
    view: StateView,
    queues: QueueCounts,
) -> Location {
    Location {
        session: session_view(state, id, &view).await,
        id: record.location_id.clone(),
        name: record.name.clone(),
        company_id: record.company_id.clone(),
        status: record.status,
        needs_reinstall: record.status == LocationStatus::ReauthRequired,
        token_source: record.token_source,
        token_expires_at: record.token_expires_at.map(rfc3339),
        installed_at: rfc3339(record.installed_at),
        queues: queues.into(),
        last_error: record.last_error.clone(),
    }
}
