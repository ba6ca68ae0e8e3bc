//! Housekeeping that runs in the background for as long as the daemon does.

use std::time::Duration;

use crate::state::AppState;
use crate::time::now_ms;

/// How often housekeeping runs.
const PERIOD: Duration = Duration::from_secs(3600);
/// Webhook ids are kept this long for the replay defence; GHL's retries span about 70 minutes.
const WEBHOOK_ID_TTL_MS: i64 = 24 * 3600 * 1000;

/// Starts the housekeeping loop; it stops with the daemon.
pub fn spawn(state: &AppState) {
    let state = state.clone();
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        loop {
            run_once(&state).await;
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = tokio::time::sleep(PERIOD) => {}
            }
        }
    });
}

/// One round of housekeeping; failures are logged and retried next round.
pub async fn run_once(state: &AppState) {
    match state.store.prune_webhook_ids(now_ms() - WEBHOOK_ID_TTL_MS).await {
        Ok(0) => {}
        Ok(pruned) => tracing::debug!(pruned, "forgot old webhook ids"),
        Err(e) => tracing::warn!(error = %e, "pruning webhook ids failed"),
    }
    let retention_ms = i64::from(state.config.retention_days) * 24 * 3600 * 1000;
    match state.store.purge_bodies(now_ms() - retention_ms).await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "purged message bodies past the retention period"),
        Err(e) => tracing::warn!(error = %e, "purging old message bodies failed"),
    }
}
