//! The command channel: an operation on a session that another instance runs — start pairing,
//! log out, a control call of the simulated WhatsApp — is written as a `session_commands` row
//! for the lease owner (and announced with a notification on PostgreSQL), carried out there and
//! answered in the same row. The asker waits for the answer with a deadline: an owner that does
//! not take the command within [`PICKUP_TIMEOUT`] is taken for dead (its sessions move within the
//! lease TTL), and the caller gets a clear "try again" error instead of a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::slot::lock;
use super::state::StateView;
use super::supervisor::{Here, SessionError, Shared, Supervisor, Unlink};
use crate::domain::LocationId;
use crate::store::PendingCommand;
use crate::wa::{BoxFuture, Pairing, WaError};

/// The owner takes a command at once when notified, or within a second by polling.
const PICKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a command may take once taken (a simulated message waits up to 30 s to be stored).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(35);
/// How often an asker looks for its answer when no notification comes (SQLite, a lost one).
const ANSWER_POLL: Duration = Duration::from_millis(200);
/// How often the owner looks for commands when no notification comes.
const COMMAND_POLL: Duration = Duration::from_secs(1);
/// Commands older than this are deleted: their askers gave up long ago.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Carries out, on the owner, the commands that the sessions module does not own: a control
/// request of the simulated WhatsApp, replayed through this instance's own router.
pub trait Replay: Send + Sync {
    /// Answers the request's status and body.
    fn replay(&self, method: String, path: String, body: String) -> BoxFuture<'static, (u16, String)>;
}

/// What this instance waits for and who carries out replays.
#[derive(Default)]
pub(super) struct Channel {
    /// Woken when a command for this instance may be waiting.
    incoming: Notify,
    /// Askers waiting for an answer, by command id.
    waiting: Mutex<HashMap<i64, Arc<Notify>>>,
    replay: OnceLock<Arc<dyn Replay>>,
}

impl Channel {
    pub fn command_arrived(&self) {
        self.incoming.notify_one();
    }

    pub fn answered(&self, command_id: i64) {
        if let Some(waiter) = lock(&self.waiting).get(&command_id) {
            waiter.notify_one();
        }
    }
}

/// An operation asked of the instance that runs the session.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Command {
    /// Start pairing: by QR, or by code for `phone`.
    StartPairing {
        phone: Option<String>,
    },
    Logout {
        force: bool,
    },
    /// A control request of the simulated WhatsApp (`/sim/{id}/…`), replayed on the owner.
    Sim {
        method: String,
        path: String,
        body: String,
    },
}

impl Command {
    pub fn start_pairing(pairing: &Pairing) -> Self {
        Self::StartPairing {
            phone: match pairing {
                Pairing::Qr => None,
                Pairing::Code { phone } => Some(phone.clone()),
            },
        }
    }

    pub fn logout(mode: Unlink) -> Self {
        Self::Logout {
            force: mode == Unlink::BestEffort,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum Answer {
    View { view: StateView },
    Failed { kind: Failure, message: String },
    Replayed { status: u16, body: String },
}

/// A [`SessionError`] as it crosses to the asker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Failure {
    Connected,
    WhatsApp,
    NotUnlinked,
    Unavailable,
}

fn failed(kind: Failure, message: impl Into<String>) -> Answer {
    Answer::Failed {
        kind,
        message: message.into(),
    }
}

/// Asks `target` to carry out a session operation and waits for its outcome.
pub(super) async fn ask(
    shared: &Shared,
    location: &LocationId,
    target: &str,
    command: &Command,
) -> Result<StateView, SessionError> {
    match exchange(shared, location, target, command).await? {
        Answer::View { view } => Ok(view),
        Answer::Failed { kind, message } => Err(match kind {
            Failure::Connected => SessionError::Connected,
            Failure::WhatsApp => SessionError::WhatsApp(WaError::Failed(message)),
            Failure::NotUnlinked => SessionError::NotUnlinked(WaError::Failed(message)),
            Failure::Unavailable => SessionError::OwnerUnavailable(message),
        }),
        Answer::Replayed { .. } => Err(SessionError::OwnerUnavailable(
            "the instance running the session answered something else".into(),
        )),
    }
}

/// Writes the command, waits for its answer (or gives up), and forgets it.
async fn exchange(
    shared: &Shared,
    location: &LocationId,
    target: &str,
    command: &Command,
) -> Result<Answer, SessionError> {
    let text = serde_json::to_string(command).expect("a command serializes");
    let id = shared.store.send_command(location.as_str(), target, &text).await?;
    let answered = Arc::new(Notify::new());
    lock(&shared.commands.waiting).insert(id, answered.clone());
    let started = Instant::now();
    let outcome = loop {
        let elapsed = started.elapsed();
        match shared.store.command_status(id).await {
            Ok(Some((_, Some(answer)))) => {
                break serde_json::from_str(&answer)
                    .map_err(|e| SessionError::OwnerUnavailable(format!("unreadable answer: {e}")));
            }
            Ok(Some((false, None))) if elapsed > PICKUP_TIMEOUT => {
                break Err(SessionError::OwnerUnavailable(format!(
                    "the instance running this session ({target}) does not answer; if it stopped, another \
                     instance takes the session over within the lease TTL: try again then"
                )));
            }
            Ok(Some(_)) if elapsed > ANSWER_TIMEOUT => {
                break Err(SessionError::OwnerUnavailable(format!(
                    "the instance running this session ({target}) did not finish in time"
                )));
            }
            Ok(Some(_)) => {}
            Ok(None) => break Err(SessionError::OwnerUnavailable("the command was lost".into())),
            Err(e) => break Err(e.into()),
        }
        tokio::select! {
            () = answered.notified() => {}
            () = tokio::time::sleep(ANSWER_POLL) => {}
        }
    };
    lock(&shared.commands.waiting).remove(&id);
    if let Err(e) = shared.store.delete_command(id).await {
        tracing::warn!(error = %e, "could not delete an answered command");
    }
    outcome
}

impl Supervisor {
    /// Replays a control request of the simulated WhatsApp on `target`, the instance running the
    /// location's session; answers its status and body.
    pub async fn replay_on(
        &self,
        location: &LocationId,
        target: &str,
        method: String,
        path: String,
        body: String,
    ) -> Result<(u16, String), SessionError> {
        match exchange(&self.shared, location, target, &Command::Sim { method, path, body }).await? {
            Answer::Replayed { status, body } => Ok((status, body)),
            Answer::Failed { message, .. } => Err(SessionError::OwnerUnavailable(message)),
            Answer::View { .. } => Err(SessionError::OwnerUnavailable(
                "the instance running the session answered something else".into(),
            )),
        }
    }

    /// Carries out the commands other instances send this one, until shutdown. `replay` serves
    /// the control requests of the simulated WhatsApp (when it is the transport).
    pub fn serve_commands(&self, replay: Option<Arc<dyn Replay>>, tasks: &TaskTracker) {
        if let Some(replay) = replay {
            let _ = self.shared.commands.replay.set(replay);
        }
        let supervisor = self.clone();
        let running = tasks.clone();
        tasks.spawn(async move {
            let shared = &supervisor.shared;
            let mut pruned = Instant::now();
            loop {
                match shared.store.take_commands(shared.me.as_str()).await {
                    Ok(commands) => {
                        for command in commands {
                            let supervisor = supervisor.clone();
                            // Each at once: a slow one (a message waiting to be stored) does not
                            // hold the others past their pickup deadline.
                            running.spawn(async move { supervisor.answer(command).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the commands for this instance"),
                }
                if pruned.elapsed() > FORGET_AFTER / 10 {
                    pruned = Instant::now();
                    let before = crate::time::now_ms() - FORGET_AFTER.as_millis() as i64;
                    if let Err(e) = shared.store.prune_commands(before).await {
                        tracing::warn!(error = %e, "could not delete old commands");
                    }
                }
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = shared.commands.incoming.notified() => {}
                    () = tokio::time::sleep(COMMAND_POLL) => {}
                }
            }
        });
    }

    async fn answer(&self, pending: PendingCommand) {
        let answer = self.execute(&pending).await;
        let text = serde_json::to_string(&answer).expect("an answer serializes");
        if let Err(e) = self.shared.store.answer_command(pending.command_id, &text).await {
            tracing::warn!(error = %e, "could not answer a command");
        }
    }

    #[tracing::instrument(skip_all, fields(location.id = %pending.location_id))]
    async fn execute(&self, pending: &PendingCommand) -> Answer {
        let Ok(location) = LocationId::parse(&pending.location_id) else {
            return failed(Failure::Unavailable, "a command named an invalid location");
        };
        let command: Command = match serde_json::from_str(&pending.command) {
            Ok(command) => command,
            // Sent by a newer or older version that speaks another command.
            Err(e) => return failed(Failure::Unavailable, format!("this instance cannot do that: {e}")),
        };
        match command {
            Command::StartPairing { phone } => {
                let pairing = match phone {
                    Some(phone) => Pairing::Code { phone },
                    None => Pairing::Qr,
                };
                answer_of(self.start_pairing_here(&location, pairing).await)
            }
            Command::Logout { force } => {
                let mode = if force { Unlink::BestEffort } else { Unlink::Required };
                answer_of(self.logout_here(&location, mode).await)
            }
            Command::Sim { method, path, body } => match self.shared.commands.replay.get() {
                Some(replay) => {
                    let (status, body) = replay.replay(method, path, body).await;
                    Answer::Replayed { status, body }
                }
                None => failed(
                    Failure::Unavailable,
                    "the instance running the session does not run the simulated WhatsApp",
                ),
            },
        }
    }
}

fn answer_of(outcome: Result<Here<StateView>, SessionError>) -> Answer {
    match outcome {
        Ok(Here::Done(view)) => Answer::View { view },
        Ok(Here::Elsewhere(_)) => failed(
            Failure::Unavailable,
            "the session moved to another instance meanwhile; try again",
        ),
        Err(e) => match e {
            SessionError::Connected => failed(Failure::Connected, e.to_string()),
            SessionError::WhatsApp(e) => failed(Failure::WhatsApp, e.to_string()),
            SessionError::NotUnlinked(e) => failed(Failure::NotUnlinked, e.to_string()),
            SessionError::Store(e) => {
                tracing::error!(error = %e, "a command failed on the database");
                failed(
                    Failure::Unavailable,
                    "the instance running the session could not reach the database",
                )
            }
            SessionError::OwnerUnavailable(message) => failed(Failure::Unavailable, message),
        },
    }
}
