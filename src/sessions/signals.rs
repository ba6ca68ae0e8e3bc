//! What this instance hears from the others on PostgreSQL (`LISTEN/NOTIFY`): an outbound
//! message queued for a session it runs wakes its outbound relay, a command for it wakes the
//! command server, an answer wakes its asker, another instance's clean stop wakes the lease
//! round. Every one of them is also found by polling, so a lost notification only costs time.
//! SQLite runs one instance: nothing to hear.

use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::supervisor::Supervisor;
use crate::domain::LocationId;
use crate::store::channels;

/// How long to wait before listening again after the listening connection failed.
const RECONNECT: Duration = Duration::from_secs(2);

impl Supervisor {
    pub fn spawn_listener(&self, tasks: &TaskTracker) {
        let supervisor = self.clone();
        tasks.spawn(async move {
            let shutdown = supervisor.shared.shutdown.clone();
            loop {
                let listening = tokio::select! {
                    () = shutdown.cancelled() => return,
                    listening = supervisor.shared.store.listen() => listening,
                };
                let mut listener = match listening {
                    Ok(Some(listener)) => listener,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for the other instances; polling meanwhile");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(RECONNECT) => continue,
                        }
                    }
                };
                loop {
                    let heard = tokio::select! {
                        () = shutdown.cancelled() => return,
                        heard = listener.recv() => heard,
                    };
                    match heard {
                        Ok(notification) => supervisor.heard(notification.channel(), notification.payload()),
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the notifications of the other instances; listening again");
                            break;
                        }
                    }
                }
            }
        });
    }

    fn heard(&self, channel: &str, payload: &str) {
        let shared = &self.shared;
        match channel {
            channels::OUTBOX if LocationId::parse(payload).is_ok_and(|l| self.runs_here(&l)) => {
                shared.postbox.wake_outbound();
            }
            channels::COMMANDS if payload == shared.me.as_str() => shared.commands.command_arrived(),
            channels::ANSWERS if let Ok(id) = payload.parse() => shared.commands.answered(id),
            channels::LEASES if payload != shared.me.as_str() => shared.wake_leases.notify_one(),
            _ => {}
        }
    }
}
