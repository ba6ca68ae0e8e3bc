//! What the outbound relay hears about the messages it sent and tells GHL: WhatsApp's
//! receipts, late acks and refusals applied to the parts, and each message's status reported.

use std::sync::Arc;

use super::OutboundRelay;
use crate::domain::{LocationId, OutboxState, PartStatus};
use crate::ghl::types::{StatusError, StatusUpdate};
use crate::ghl::{Action, GhlError};
use crate::relay::workers::Workers;
use crate::store::{OutboxWrite, StatusToReport};
use crate::time::now_ms;
use crate::wa::{ReceiptStatus, WaEvent};

impl OutboundRelay {
    /// Starts up to `most` of the status reports due. Bounded like the sends: a report that
    /// ended keeps its task's memory until joined.
    pub(super) async fn start_reports(self: &Arc<Self>, reporting: &mut Workers, most: usize) {
        if most == 0 {
            return;
        }
        let in_flight: Vec<i64> = reporting.in_flight().collect();
        let due = self.store.statuses_to_report(most as i64, &in_flight).await;
        let report = |relay: Arc<Self>, due: StatusToReport| async move { relay.report(due).await };
        reporting
            .start_found(due, "read the statuses to report", |due| due.outbox_id, self, report)
            .await;
    }

    /// A receipt, or a server ack no send waited for, moves parts forward; the message follows
    /// its least advanced part, and GHL is told on the next round. (The postbox hands acks to
    /// the sends waiting for them.)
    #[tracing::instrument(skip_all, fields(location.id = %location))]
    pub(super) async fn apply_receipt(&self, location: &LocationId, event: WaEvent) {
        let (ids, status) = match event {
            WaEvent::ServerAck { id } => (vec![id], PartStatus::Sent),
            WaEvent::ServerRefused { id, code } => return self.refused(location, &id, &code).await,
            WaEvent::Receipt { ids, status } => {
                let status = match status {
                    ReceiptStatus::Delivered => PartStatus::Delivered,
                    ReceiptStatus::Read => PartStatus::Read,
                };
                (ids, status)
            }
            _ => return,
        };
        for id in ids {
            match self.store.advance_part(location.as_str(), &id, status).await {
                Ok(Some(outbox_id)) => {
                    if let Err(e) = self.store.settle_outbound(outbox_id).await {
                        tracing::error!(outbox.id = outbox_id, error = %e, "could not apply a receipt");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "could not apply a receipt"),
            }
        }
    }

    /// WhatsApp refused a part after its send stopped waiting: the part and its message fail.
    async fn refused(&self, location: &LocationId, id: &str, code: &str) {
        let reason = refusal(code);
        let outcome = match self.store.advance_part(location.as_str(), id, PartStatus::Failed).await {
            Ok(Some(outbox_id)) => {
                self.metrics.count_relay("outbound", "failed");
                self.store.fail_outbound(outbox_id, OutboxState::Failed, &reason).await
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "could not record a refused send");
        }
    }

    /// Tells GHL the message's status: `sent` (or `delivered` where GHL refuses `sent`),
    /// `delivered`, `read`, or `failed` with the reason.
    async fn report(&self, report: StatusToReport) {
        let failed = report.state.is_failure();
        let mut status = if failed { OutboxState::Failed } else { report.state };
        if status == OutboxState::Sent && self.sent_unsupported.load(std::sync::atomic::Ordering::Relaxed) {
            status = OutboxState::Delivered;
        }
        let reason = report.last_error.clone().unwrap_or_else(|| "not sent".into());
        let update = StatusUpdate {
            status: status.as_str(),
            error: failed.then(|| StatusError {
                code: "whatsapp",
                kind: "whatsapp_error",
                message: &reason,
            }),
        };
        let mut outcome = self
            .ghl
            .update_message_status(&report.location_id, &report.ghl_message_id, &update)
            .await;
        if status == OutboxState::Sent && matches!(outcome, Err(GhlError::Rejected { status: 400 | 422, .. })) {
            tracing::info!("GHL refuses the `sent` status; reporting `delivered` for sent messages");
            self.sent_unsupported.store(true, std::sync::atomic::Ordering::Relaxed);
            let fallback = StatusUpdate {
                status: "delivered",
                error: None,
            };
            outcome = self
                .ghl
                .update_message_status(&report.location_id, &report.ghl_message_id, &fallback)
                .await;
            status = OutboxState::Delivered;
        }
        let recorded = match outcome {
            Ok(()) => {
                let reported = if failed { report.state } else { status };
                let write = OutboxWrite::Reported {
                    outbox_id: report.outbox_id,
                    status: reported,
                };
                self.write(write).await
            }
            Err(e) if e.action() == Action::GiveUp => {
                tracing::warn!(outbox.id = report.outbox_id, error = %e, "GHL refused a status update");
                self.store.report_later(report.outbox_id, None).await
            }
            Err(e) => {
                let at = now_ms() + self.settings.retry_max.as_millis() as i64 / 4;
                tracing::debug!(outbox.id = report.outbox_id, error = %e, "status update deferred");
                self.store.report_later(report.outbox_id, Some(at)).await
            }
        };
        if let Err(e) = recorded {
            tracing::error!(outbox.id = report.outbox_id, error = %e, "could not record a status report");
        }
    }
}

/// The reason GHL is told when WhatsApp's server refused a part, with its error code.
pub(super) fn refusal(code: &str) -> String {
    format!("WhatsApp refused the message (error {code})")
}
