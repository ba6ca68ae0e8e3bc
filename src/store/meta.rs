//! Process-wide facts kept in the `meta` table.

use super::{Result, Store, on_db};

/// A known value sealed with the secret key on first start; it opens only with the same key.
const KEY_CHECK: &str = "secret_key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"waghl secret key check";

impl Store {
    /// Proves the configured secret key is the one this database was sealed with (recording it
    /// on a fresh database). A wrong key is an error here, at start, instead of garbage or
    /// failures deep inside a token refresh later.
    pub async fn verify_secret_key(&self) -> Result<()> {
        let sealed = self.key().seal(KEY_CHECK, KEY_CHECK_PLAINTEXT);
        let stored: Vec<u8> = on_db!(self, pool => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(KEY_CHECK)
                .bind(sealed)
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(KEY_CHECK)
                .fetch_one(pool)
                .await?
        });
        self.key().open(KEY_CHECK, &stored)?;
        Ok(())
    }
}
