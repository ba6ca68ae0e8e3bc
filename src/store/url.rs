//! The database's address; its scheme selects the backend.

use std::fmt;

use crate::crypto::Secret;

/// Where the daemon keeps its data. The URL scheme selects the backend.
#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(String),
    Postgres(Secret),
}

impl DatabaseUrl {
    /// The backend a URL names; the error says what was expected.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(url.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(Secret::new(url)))
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(format!("expected sqlite:… or postgres://… (got a `{scheme}:` URL)"))
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(_))
    }
}

impl fmt::Debug for DatabaseUrl {
    /// Prints the SQLite path, or the PostgreSQL host and database without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(url) => f.write_str(url),
            Self::Postgres(url) => {
                let url = url.expose();
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                write!(f, "{scheme}://[redacted]@{host}")
            }
        }
    }
}
