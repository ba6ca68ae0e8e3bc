//! What the rest of the daemon reads of the sessions: a session this instance runs as it runs
//! it, any other as its owner (or its last one) persisted it, and the code to scan as its owner
//! published it — so every instance answers alike for every session.

use std::sync::Arc;

use super::slot::{PairingCode, Slot, lock};
use super::state::{SessionState, StateView};
use super::supervisor::Supervisor;
use crate::domain::LocationId;
use crate::store::{SessionRow, StoreError};
use crate::wa::WaSession;

impl Supervisor {
    /// The slot of a session this instance runs.
    fn running(&self, location: &LocationId) -> Option<Arc<Slot>> {
        lock(&self.shared.registry)
            .get(location)
            .filter(|slot| slot.runs_here())
            .cloned()
    }

    /// A location's session as it stands: as this instance runs it, or as its owner (or its last
    /// one) persisted it. `None` when it never had a session.
    pub async fn view(&self, location: &LocationId) -> Result<Option<StateView>, StoreError> {
        if let Some(slot) = self.running(location) {
            return Ok(Some(slot.view()));
        }
        Ok(self.shared.store.session_row(location.as_str()).await?.map(view_of))
    }

    /// The view of a location, or a fresh `unpaired` one since `since` when it never had a
    /// session.
    pub async fn view_or_unpaired(&self, location: &LocationId, since: i64) -> Result<StateView, StoreError> {
        Ok(self.view(location).await?.unwrap_or(StateView::unpaired(since)))
    }

    /// Every session, by location (one read of the database, then the ones running here).
    pub async fn views(&self) -> Result<Vec<(LocationId, StateView)>, StoreError> {
        let rows = self.shared.store.session_rows().await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let location = LocationId::parse(&row.location_id).ok()?;
                let view = match self.running(&location) {
                    Some(slot) => slot.view(),
                    None => view_of(row),
                };
                Some((location, view))
            })
            .collect())
    }

    /// The code to scan or type: this instance's own while it runs the session, else the one its
    /// owner published.
    pub async fn pairing_code(&self, location: &LocationId) -> PairingCode {
        if let Some(slot) = self.running(location) {
            return slot.pairing_code();
        }
        match self.shared.store.pairing_code(location.as_str()).await {
            Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_default(),
            Ok(None) => PairingCode::default(),
            Err(e) => {
                tracing::warn!(location.id = %location, error = %e, "could not read the published pairing code");
                PairingCode::default()
            }
        }
    }

    /// Whether this instance runs the location's session.
    pub fn runs_here(&self, location: &LocationId) -> bool {
        self.running(location).is_some()
    }

    /// The live client of a location, when it runs here and has one.
    pub fn session(&self, location: &LocationId) -> Option<Arc<dyn WaSession>> {
        lock(&self.shared.registry)
            .get(location)
            .and_then(|slot| lock(&slot.session).clone())
    }

    /// The incarnation of another instance that holds the location's lease, if one does.
    pub async fn owner_elsewhere(&self, location: &LocationId) -> Result<Option<String>, StoreError> {
        let owner = self.shared.store.lease_owner(location.as_str()).await?;
        Ok(owner.filter(|o| o != self.shared.me.as_str()))
    }
}

/// A persisted session as a view.
pub(super) fn view_of(row: SessionRow) -> StateView {
    StateView {
        state: SessionState::parse(&row.state).unwrap_or(SessionState::Unpaired),
        reason: row.reason,
        phone: row.phone,
        since: row.state_since,
    }
}
