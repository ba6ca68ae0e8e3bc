//! Commands one instance asks of the instance that runs a session, and their answers: a row per
//! command, sealed both ways, deleted once the asker read the answer (or gave up on it).

use super::instances::channels;
use super::{Result, Store, on_db};
use crate::time::now_ms;

/// A command for this instance to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCommand {
    pub command_id: i64,
    pub location_id: String,
    /// JSON, unsealed.
    pub command: String,
}

impl Store {
    /// Queues a command for `target` and wakes it; returns the command's id.
    pub async fn send_command(&self, location_id: &str, target: &str, command: &str) -> Result<i64> {
        let sealed = self.key().seal_str(COMMAND, command);
        let id: i64 = on_db!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO session_commands (location_id, target, command, created_at) VALUES ($1, $2, $3, $4) \
                 RETURNING command_id",
            )
            .bind(location_id)
            .bind(target)
            .bind(sealed)
            .bind(now_ms())
            .fetch_one(pool)
            .await?
        });
        self.notify(channels::COMMANDS, target).await?;
        Ok(id)
    }

    /// Takes the commands sent to `me` that nobody took yet, oldest first.
    pub async fn take_commands(&self, me: &str) -> Result<Vec<PendingCommand>> {
        let rows: Vec<(i64, String, Vec<u8>)> = on_db!(self, pool => {
            sqlx::query_as(
                "UPDATE session_commands SET taken_at = $2 WHERE target = $1 AND taken_at IS NULL \
                 RETURNING command_id, location_id, command",
            )
            .bind(me)
            .bind(now_ms())
            .fetch_all(pool)
            .await?
        });
        let mut commands = rows
            .into_iter()
            .map(|(command_id, location_id, sealed)| {
                Ok(PendingCommand {
                    command_id,
                    location_id,
                    command: self.key().open_str(COMMAND, &sealed)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        commands.sort_by_key(|c| c.command_id);
        Ok(commands)
    }

    /// Records the answer (JSON) and wakes the asker.
    pub async fn answer_command(&self, command_id: i64, answer: &str) -> Result<()> {
        let sealed = self.key().seal_str(ANSWER, answer);
        on_db!(self, pool => {
            sqlx::query("UPDATE session_commands SET answer = $2, answered_at = $3 WHERE command_id = $1")
                .bind(command_id)
                .bind(sealed)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        self.notify(channels::ANSWERS, &command_id.to_string()).await
    }

    /// Where a command stands: `None` when it is gone; else whether it was taken, and the answer
    /// (JSON) once there is one.
    pub async fn command_status(&self, command_id: i64) -> Result<Option<(bool, Option<String>)>> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = on_db!(self, pool => {
            sqlx::query_as("SELECT taken_at, answer FROM session_commands WHERE command_id = $1")
                .bind(command_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(match row {
            None => None,
            Some((taken, answer)) => Some((
                taken.is_some(),
                answer.map(|sealed| self.key().open_str(ANSWER, &sealed)).transpose()?,
            )),
        })
    }

    /// Forgets a command (answered and read, or given up on).
    pub async fn delete_command(&self, command_id: i64) -> Result<()> {
        on_db!(self, pool => {
            sqlx::query("DELETE FROM session_commands WHERE command_id = $1")
                .bind(command_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes commands older than `before` (unix ms): their askers died or gave up.
    pub async fn prune_commands(&self, before: i64) -> Result<u64> {
        Ok(on_db!(self, pool => {
            sqlx::query("DELETE FROM session_commands WHERE created_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}

const COMMAND: &str = "session-command";
const ANSWER: &str = "session-command-answer";
