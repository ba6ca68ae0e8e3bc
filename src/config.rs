//! Every setting of the daemon, read from the environment (and an optional `.env`) once at
//! start and validated there: a bad value stops the daemon with one line naming the variable
//! and what it expects. No other module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::crypto::Secret;
use crate::ghl::GhlConfig;
use crate::store::DatabaseUrl;
use crate::telemetry::LogFormat;

/// GHL's published Ed25519 key for `x-ghl-signature` (GHL_API.md §8.2).
const GHL_ED25519_KEY: &str = include_str!("../keys/ghl_webhook_ed25519_pub.pem");
/// GHL's published RSA key for the legacy `x-wh-signature` (GHL_API.md §8.1).
const GHL_RSA_KEY: &str = include_str!("../keys/ghl_webhook_rsa_pub_legacy.pem");

/// What a conversation provider needs (GHL_API.md §2); agency installs add
/// `oauth.readonly oauth.write` through `GHL_SCOPES`.
const DEFAULT_SCOPES: &str = "conversations/message.readonly conversations/message.write \
     conversations.readonly conversations.write contacts.readonly contacts.write";

/// A setting that is missing or malformed: which variable, and what it should look like.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn bad(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// Which WhatsApp implementation sits behind the transport seam.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaBackend {
    WhatsApp,
    Sim,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    /// The address GHL and browsers reach this daemon at, without a trailing slash.
    pub public_url: String,
    /// Generated files (SQLite database, generated key and token) live here.
    pub data_dir: PathBuf,
    /// Base64 of 32 bytes. `None` with SQLite: generated into `data_dir/secret.key`.
    pub secret_key: Option<Secret>,
    /// `None` with SQLite: generated into `data_dir/admin.token`.
    pub admin_token: Option<Secret>,
    pub sessions_dir: PathBuf,
    pub wa_backend: WaBackend,
    /// The WhatsApp test server to talk to instead of WhatsApp (builds with the
    /// `wa-test-server` feature only; loopback only).
    pub wa_test_server: Option<crate::wa::whatsapp::TestServer>,
    /// What the business's presence shows while waghl is connected.
    pub wa_presence: crate::wa::Presence,
    /// The country whose numbering plan reads phone numbers written without a country code.
    pub default_country: crate::domain::phone::Region,
    /// Least gap between two sends of one WhatsApp session (jittered); zero turns pacing off.
    pub send_gap: Duration,
    /// Message bodies are purged after this many days; ids and states stay.
    pub retention_days: u32,
    pub ghl: GhlConfig,
    pub sessions: crate::sessions::SessionSettings,
    /// Names this instance (with a nonce per start, see `domain::Incarnation`) in session leases
    /// and queue claims; unique per instance sharing a database. Stable across restarts (the
    /// host name), so a restarted daemon frees its earlier life's leases and takes its sessions
    /// back at once instead of waiting for them to expire.
    pub instance_id: String,
    pub relay: crate::relay::RelaySettings,
    /// An outbound message waits this long for WhatsApp to connect, then fails.
    pub outbound_ttl: Duration,
    /// Largest attachment fetched for an outbound message.
    pub attachment_max_bytes: usize,
    /// Downloads of an attachment before its message fails (retried with the message backoff).
    pub attachment_attempts: u32,
    /// Fetch attachments over plain http and from loopback too (tests); https only otherwise.
    pub allow_http_attachments: bool,
    /// Scales the simulated transport's QR schedule (1.0 = WhatsApp's own timings).
    pub sim_time_scale: f64,
    pub log_format: LogFormat,
    pub body_limit_bytes: usize,
    /// Timeouts and the connection cap that keep slow or idle clients from holding the daemon:
    /// `WAGHL_HTTP_HEADER_TIMEOUT_MS`, `WAGHL_HTTP_BODY_TIMEOUT_MS`, `WAGHL_HTTP_IDLE_TIMEOUT_MS`,
    /// `WAGHL_HTTP_MAX_CONNECTIONS`.
    pub server: crate::http::ServerSettings,
    /// How long a shutdown may take to drain requests and background tasks.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can build a configuration without touching
    /// the process environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let listen = match (get("WAGHL_LISTEN"), get("PORT")) {
            (Some(addr), _) => addr
                .parse()
                .map_err(|_| bad("WAGHL_LISTEN", "expected host:port, e.g. 0.0.0.0:8080"))?,
            (None, Some(port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| bad("PORT", "expected a port number 0–65535"))?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
            (None, None) => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let database_url = DatabaseUrl::parse(&get("DATABASE_URL").unwrap_or_else(|| "sqlite://data/waghl.db".into()))
            .map_err(|problem| bad("DATABASE_URL", problem))?;
        let public_url = match get("WAGHL_PUBLIC_URL") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_owned()
            }
            Some(_) => {
                return Err(bad("WAGHL_PUBLIC_URL", "expected an http:// or https:// URL"));
            }
            None => format!("http://localhost:{}", listen.port()),
        };
        let secret_key = get("WAGHL_SECRET_KEY").map(Secret::new);
        if let Some(key) = &secret_key {
            crate::crypto::SecretKey::from_base64(key.expose()).map_err(|e| bad("WAGHL_SECRET_KEY", e.to_string()))?;
        }
        let admin_token = get("WAGHL_ADMIN_TOKEN").map(Secret::new);
        if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(bad("WAGHL_ADMIN_TOKEN", "expected at least 16 characters"));
        }
        if !database_url.is_sqlite() {
            if secret_key.is_none() {
                return Err(bad(
                    "WAGHL_SECRET_KEY",
                    "required with PostgreSQL (base64 of 32 random bytes: `openssl rand -base64 32`)",
                ));
            }
            if admin_token.is_none() {
                return Err(bad("WAGHL_ADMIN_TOKEN", "required with PostgreSQL"));
            }
        }
        let wa_backend = match get("WAGHL_WA_BACKEND").as_deref() {
            None | Some("whatsapp") => WaBackend::WhatsApp,
            Some("sim") => WaBackend::Sim,
            Some(_) => return Err(bad("WAGHL_WA_BACKEND", "expected `whatsapp` or `sim`")),
        };
        let wa_test_server = wa_test_server(get("WAGHL_WA_SERVER_URL"), get("WAGHL_WA_MEDIA_URL"))?;
        let wa_presence = match get("WAGHL_WA_PRESENCE").as_deref() {
            None | Some("unavailable") => crate::wa::Presence::Unavailable,
            Some("available") => crate::wa::Presence::Available,
            Some(_) => return Err(bad("WAGHL_WA_PRESENCE", "expected `unavailable` or `available`")),
        };
        let default_country =
            crate::domain::phone::Region::parse(&get("WAGHL_DEFAULT_COUNTRY").unwrap_or_else(|| "US".into()))
                .ok_or_else(|| {
                    bad(
                        "WAGHL_DEFAULT_COUNTRY",
                        "expected a two-letter ISO 3166 country code, e.g. US, GB, BR, MX, IN",
                    )
                })?;
        let ghl = GhlConfig {
            client_id: get("GHL_CLIENT_ID"),
            client_secret: get("GHL_CLIENT_SECRET").map(Secret::new),
            conversation_provider_id: get("GHL_CONVERSATION_PROVIDER_ID"),
            api_base_url: http_url(
                "GHL_API_BASE_URL",
                get("GHL_API_BASE_URL"),
                "https://services.leadconnectorhq.com",
            )?,
            marketplace_url: http_url(
                "GHL_MARKETPLACE_URL",
                get("GHL_MARKETPLACE_URL"),
                "https://marketplace.gohighlevel.com",
            )?,
            api_version: get("GHL_API_VERSION").unwrap_or_else(|| "2021-07-28".into()),
            webhook_public_key: pem("GHL_WEBHOOK_PUBLIC_KEY", get("GHL_WEBHOOK_PUBLIC_KEY"))?
                .unwrap_or_else(|| GHL_ED25519_KEY.into()),
            webhook_legacy_public_key: pem("GHL_WEBHOOK_LEGACY_PUBLIC_KEY", get("GHL_WEBHOOK_LEGACY_PUBLIC_KEY"))?
                .unwrap_or_else(|| GHL_RSA_KEY.into()),
            webhook_key: get("WAGHL_WEBHOOK_KEY").map(Secret::new),
            rate_limit: number("WAGHL_GHL_RATE_LIMIT", get("WAGHL_GHL_RATE_LIMIT"), 90)?,
            rate_window: millis("WAGHL_GHL_RATE_WINDOW_MS", get("WAGHL_GHL_RATE_WINDOW_MS"), 10_000)?,
            request_timeout: millis("WAGHL_GHL_TIMEOUT_MS", get("WAGHL_GHL_TIMEOUT_MS"), 30_000)?,
            max_retries: number("WAGHL_GHL_MAX_RETRIES", get("WAGHL_GHL_MAX_RETRIES"), 4)?,
            retry_base_delay: millis("WAGHL_GHL_RETRY_BASE_MS", get("WAGHL_GHL_RETRY_BASE_MS"), 500)?,
            retry_max_delay: millis("WAGHL_GHL_RETRY_MAX_MS", get("WAGHL_GHL_RETRY_MAX_MS"), 30_000)?,
            status_lag_delay: millis("WAGHL_GHL_STATUS_LAG_MS", get("WAGHL_GHL_STATUS_LAG_MS"), 3_000)?,
            status_lag_retries: number("WAGHL_GHL_STATUS_LAG_RETRIES", get("WAGHL_GHL_STATUS_LAG_RETRIES"), 5)?,
            scopes: get("GHL_SCOPES").unwrap_or_else(|| DEFAULT_SCOPES.into()),
            app_shared_secret: get("GHL_APP_SHARED_SECRET").map(Secret::new),
            page_frame_ancestors: frame_ancestors(get("GHL_PAGE_FRAME_ANCESTORS"))?,
        };
        if ghl.rate_limit == 0 {
            return Err(bad("WAGHL_GHL_RATE_LIMIT", "expected at least 1"));
        }
        let sessions = crate::sessions::SessionSettings {
            health_interval: millis("WAGHL_HEALTH_INTERVAL_MS", get("WAGHL_HEALTH_INTERVAL_MS"), 30_000)?,
            policy: crate::sessions::PolicySettings {
                base_delay: millis("WAGHL_RESTART_BASE_MS", get("WAGHL_RESTART_BASE_MS"), 2_000)?,
                max_delay: millis("WAGHL_RESTART_MAX_MS", get("WAGHL_RESTART_MAX_MS"), 300_000)?,
                stable_after: millis("WAGHL_RESTART_STABLE_MS", get("WAGHL_RESTART_STABLE_MS"), 120_000)?,
                crash_limit: number("WAGHL_CRASH_LOOP_RESTARTS", get("WAGHL_CRASH_LOOP_RESTARTS"), 5)?,
                crash_window: millis("WAGHL_CRASH_LOOP_WINDOW_MS", get("WAGHL_CRASH_LOOP_WINDOW_MS"), 600_000)?,
            },
            lease_ttl: millis("WAGHL_LEASE_TTL_MS", get("WAGHL_LEASE_TTL_MS"), 30_000)?,
            restore_spread: millis("WAGHL_RESTORE_SPREAD_MS", get("WAGHL_RESTORE_SPREAD_MS"), 5_000)?,
            store_budget: millis(
                "WAGHL_INBOX_STORE_BUDGET_MS",
                get("WAGHL_INBOX_STORE_BUDGET_MS"),
                60_000,
            )?,
        };
        // WhatsApp's client waits two minutes for a message to be stored.
        if sessions.store_budget.is_zero() || sessions.store_budget > Duration::from_secs(100) {
            return Err(bad("WAGHL_INBOX_STORE_BUDGET_MS", "expected 1 to 100000"));
        }
        if sessions.health_interval.is_zero() || sessions.lease_ttl.is_zero() {
            return Err(bad("WAGHL_HEALTH_INTERVAL_MS", "intervals must be above zero"));
        }
        let relay = crate::relay::RelaySettings {
            retry_base: millis("WAGHL_RETRY_BASE_MS", get("WAGHL_RETRY_BASE_MS"), 2_000)?,
            retry_max: millis("WAGHL_RETRY_MAX_MS", get("WAGHL_RETRY_MAX_MS"), 300_000)?,
            retry_budget: millis("WAGHL_RETRY_BUDGET_MS", get("WAGHL_RETRY_BUDGET_MS"), 24 * 3_600_000)?,
            lid_wait: millis("WAGHL_LID_WAIT_MS", get("WAGHL_LID_WAIT_MS"), 3_600_000)?,
            batch: number("WAGHL_RELAY_BATCH", get("WAGHL_RELAY_BATCH"), 32)?,
            claim_for: millis("WAGHL_RELAY_CLAIM_MS", get("WAGHL_RELAY_CLAIM_MS"), 300_000)?,
            poll_interval: millis("WAGHL_RELAY_POLL_MS", get("WAGHL_RELAY_POLL_MS"), 1_000)?,
        };
        if relay.batch < 1 {
            return Err(bad("WAGHL_RELAY_BATCH", "expected at least 1"));
        }
        let sim_time_scale: f64 = number("WAGHL_SIM_TIME_SCALE", get("WAGHL_SIM_TIME_SCALE"), 1.0)?;
        if !(sim_time_scale > 0.0 && sim_time_scale <= 10.0) {
            return Err(bad("WAGHL_SIM_TIME_SCALE", "expected a number above 0 and at most 10"));
        }
        let log_format = match get("WAGHL_LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(bad("WAGHL_LOG_FORMAT", "expected `pretty` or `json`")),
        };
        let server = crate::http::ServerSettings {
            header_timeout: millis(
                "WAGHL_HTTP_HEADER_TIMEOUT_MS",
                get("WAGHL_HTTP_HEADER_TIMEOUT_MS"),
                10_000,
            )?,
            body_timeout: millis("WAGHL_HTTP_BODY_TIMEOUT_MS", get("WAGHL_HTTP_BODY_TIMEOUT_MS"), 30_000)?,
            idle_timeout: millis("WAGHL_HTTP_IDLE_TIMEOUT_MS", get("WAGHL_HTTP_IDLE_TIMEOUT_MS"), 30_000)?,
            max_connections: number("WAGHL_HTTP_MAX_CONNECTIONS", get("WAGHL_HTTP_MAX_CONNECTIONS"), 512)?,
        };
        if server.header_timeout.is_zero() || server.body_timeout.is_zero() || server.idle_timeout.is_zero() {
            return Err(bad("WAGHL_HTTP_HEADER_TIMEOUT_MS", "HTTP timeouts must be above zero"));
        }
        if server.max_connections == 0 {
            return Err(bad("WAGHL_HTTP_MAX_CONNECTIONS", "expected at least 1"));
        }
        Ok(Self {
            listen,
            database_url,
            public_url,
            data_dir: get("WAGHL_DATA_DIR").unwrap_or_else(|| "data".into()).into(),
            secret_key,
            admin_token,
            sessions_dir: get("WAGHL_SESSIONS_DIR").unwrap_or_else(|| "sessions".into()).into(),
            wa_backend,
            wa_test_server,
            wa_presence,
            default_country,
            send_gap: millis("WAGHL_SEND_GAP_MS", get("WAGHL_SEND_GAP_MS"), 1_500)?,
            retention_days: number("WAGHL_RETENTION_DAYS", get("WAGHL_RETENTION_DAYS"), 30)?,
            ghl,
            sessions,
            instance_id: get("WAGHL_INSTANCE_ID")
                .or_else(|| get("HOSTNAME"))
                .or_else(|| {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .filter(|h| !h.is_empty())
                // `#` separates the instance from the nonce in claim holders.
                .map(|h| h.replace('#', "-"))
                .unwrap_or_else(|| "waghl".into()),
            relay,
            outbound_ttl: millis("WAGHL_OUTBOUND_TTL_MS", get("WAGHL_OUTBOUND_TTL_MS"), 24 * 3_600_000)?,
            attachment_max_bytes: number(
                "WAGHL_ATTACHMENT_MAX_BYTES",
                get("WAGHL_ATTACHMENT_MAX_BYTES"),
                64 << 20,
            )?,
            attachment_attempts: number("WAGHL_ATTACHMENT_ATTEMPTS", get("WAGHL_ATTACHMENT_ATTEMPTS"), 5)?,
            allow_http_attachments: match get("WAGHL_ALLOW_HTTP_ATTACHMENTS").as_deref() {
                None | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(_) => return Err(bad("WAGHL_ALLOW_HTTP_ATTACHMENTS", "expected true or false")),
            },
            sim_time_scale,
            log_format,
            body_limit_bytes: number("WAGHL_BODY_LIMIT_BYTES", get("WAGHL_BODY_LIMIT_BYTES"), 1 << 20)?,
            server,
            shutdown_timeout: millis("WAGHL_SHUTDOWN_TIMEOUT_MS", get("WAGHL_SHUTDOWN_TIMEOUT_MS"), 8_000)?,
        })
    }
}

fn number<T: std::str::FromStr>(var: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| bad(var, "expected a non-negative number")),
    }
}

fn millis(var: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    number(var, value, default).map(Duration::from_millis)
}

fn http_url(var: &'static str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let url = value.unwrap_or_else(|| default.to_owned());
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(bad(var, "expected an http:// or https:// URL"))
    }
}

/// GHL's app domains frame marketplace Custom Pages.
const GHL_FRAME_ANCESTORS: &str = "https://app.gohighlevel.com https://*.gohighlevel.com https://*.leadconnectorhq.com";

/// Space-separated http(s) origins (wildcard subdomains allowed) for a CSP `frame-ancestors`:
/// anything else could smuggle another directive into the header.
fn frame_ancestors(value: Option<String>) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(GHL_FRAME_ANCESTORS.into());
    };
    let valid = |origin: &str| {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or_default();
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | ':'))
    };
    let origins: Vec<&str> = value.split_ascii_whitespace().collect();
    if origins.iter().all(|o| valid(o)) {
        Ok(origins.join(" "))
    } else {
        Err(bad(
            "GHL_PAGE_FRAME_ANCESTORS",
            "expected space-separated origins like https://app.gohighlevel.com https://*.example.com",
        ))
    }
}

/// A PEM given inline, or the path of a file holding it.
fn pem(var: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    if value.contains("-----BEGIN") {
        return Ok(Some(value));
    }
    let text = std::fs::read_to_string(&value)
        .map_err(|e| bad(var, format!("expected PEM text or a readable PEM file ({e})")))?;
    if !text.contains("-----BEGIN") {
        return Err(bad(var, "the file holds no PEM block"));
    }
    Ok(Some(text))
}

/// `WAGHL_WA_SERVER_URL` and `WAGHL_WA_MEDIA_URL`: both or neither, only in a build with the
/// `wa-test-server` feature (which trusts the test server's self-made certificate chain), and
/// only on loopback, so such a build can never talk to anything but a test server.
fn wa_test_server(
    server: Option<String>,
    media: Option<String>,
) -> Result<Option<crate::wa::whatsapp::TestServer>, ConfigError> {
    let (server, media) = match (server, media) {
        (None, None) => return Ok(None),
        (Some(server), Some(media)) => (server, media),
        (Some(_), None) => return Err(bad("WAGHL_WA_MEDIA_URL", "required with WAGHL_WA_SERVER_URL")),
        (None, Some(_)) => return Err(bad("WAGHL_WA_SERVER_URL", "required with WAGHL_WA_MEDIA_URL")),
    };
    if !cfg!(feature = "wa-test-server") {
        return Err(bad(
            "WAGHL_WA_SERVER_URL",
            "only a test build talks to a WhatsApp test server (cargo feature wa-test-server)",
        ));
    }
    let loopback = |url: &str, schemes: &[&str], var: &'static str| {
        let parsed = url::Url::parse(url).map_err(|e| bad(var, format!("not a URL: {e}")))?;
        let on_loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if !schemes.contains(&parsed.scheme()) || !on_loopback {
            return Err(bad(
                var,
                format!(
                    "expected a {} URL on loopback (127.0.0.1, [::1] or localhost)",
                    schemes.join(" or ")
                ),
            ));
        }
        Ok(url.trim_end_matches('/').to_owned())
    };
    Ok(Some(crate::wa::whatsapp::TestServer {
        ws_url: loopback(&server, &["ws"], "WAGHL_WA_SERVER_URL")?,
        media_url: loopback(&media, &["http"], "WAGHL_WA_MEDIA_URL")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_server_is_taken_only_by_a_test_build_and_only_on_loopback() {
        let both = |ws: &str, media: &str| wa_test_server(Some(ws.into()), Some(media.into()));
        let local = both("ws://127.0.0.1:4000/ws/chat", "http://127.0.0.1:4000/");
        if cfg!(feature = "wa-test-server") {
            let server = local.unwrap().unwrap();
            assert_eq!(server.media_url, "http://127.0.0.1:4000");
            assert!(both("ws://192.0.2.1:4000/ws/chat", "http://127.0.0.1:4000").is_err());
            assert!(both("wss://127.0.0.1:4000/ws/chat", "http://127.0.0.1:4000").is_err());
            assert!(both("ws://[::1]:4000/ws/chat", "http://web.whatsapp.com").is_err());
        } else {
            assert_eq!(local.unwrap_err().var, "WAGHL_WA_SERVER_URL");
        }
        assert_eq!(
            wa_test_server(Some("ws://127.0.0.1:1".into()), None).unwrap_err().var,
            "WAGHL_WA_MEDIA_URL"
        );
        assert!(wa_test_server(None, None).unwrap().is_none());
    }
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn no_settings_at_all_gives_a_runnable_sqlite_daemon_on_8080() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert!(config.database_url.is_sqlite());
        assert_eq!(config.public_url, "http://localhost:8080");
        assert_eq!(config.ghl.missing().len(), 3);
        assert_eq!(config.wa_backend, WaBackend::WhatsApp);
    }

    #[test]
    fn waghl_listen_wins_over_port() {
        let config = load(&[("PORT", "9000"), ("WAGHL_LISTEN", "127.0.0.1:7000")]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(load(&[("PORT", "9000")]).unwrap().listen.port(), 9000);
    }

    #[test]
    fn a_mysql_url_is_refused_naming_database_url() {
        let err = load(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(err.var, "DATABASE_URL");
        assert!(err.to_string().contains("mysql"));
    }

    #[test]
    fn a_short_secret_key_is_refused_naming_the_variable() {
        let err = load(&[("WAGHL_SECRET_KEY", "MDEyMzQ1Njc4OQ==")]).unwrap_err();
        assert_eq!(err.var, "WAGHL_SECRET_KEY");
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }

    #[test]
    fn postgres_requires_the_secret_key_and_admin_token() {
        let err = load(&[("DATABASE_URL", "postgres://u:p@db/waghl")]).unwrap_err();
        assert_eq!(err.var, "WAGHL_SECRET_KEY");
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let err = load(&[("DATABASE_URL", "postgresql://u:p@db/w"), ("WAGHL_SECRET_KEY", key)]).unwrap_err();
        assert_eq!(err.var, "WAGHL_ADMIN_TOKEN");
    }

    #[test]
    fn debug_output_redacts_secrets_and_database_passwords() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let config = load(&[
            ("DATABASE_URL", "postgres://waghl:hunter2hunter2@db:5432/waghl"),
            ("WAGHL_SECRET_KEY", key),
            ("WAGHL_ADMIN_TOKEN", "admin-token-0123456789"),
            ("GHL_CLIENT_SECRET", "client-secret-value"),
            ("GHL_APP_SHARED_SECRET", "app-shared-secret-value"),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        for secret in [
            key,
            "hunter2hunter2",
            "admin-token-0123456789",
            "client-secret-value",
            "app-shared-secret-value",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked");
        }
        assert!(printed.contains("db:5432/waghl"));
    }

    #[test]
    fn webhook_keys_default_to_ghl_published_keys_and_accept_a_file_path() {
        let config = load(&[]).unwrap();
        assert!(
            config
                .ghl
                .webhook_public_key
                .contains("MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=")
        );
        let path = std::env::temp_dir().join(format!("waghl-key-{}.pem", std::process::id()));
        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n").unwrap();
        let config = load(&[("GHL_WEBHOOK_PUBLIC_KEY", path.to_str().unwrap())]).unwrap();
        assert!(config.ghl.webhook_public_key.contains("abc"));
        let err = load(&[("GHL_WEBHOOK_PUBLIC_KEY", "/nonexistent/key.pem")]).unwrap_err();
        assert_eq!(err.var, "GHL_WEBHOOK_PUBLIC_KEY");
    }

    #[test]
    fn the_custom_page_may_be_framed_by_ghl_and_listed_origins_only() {
        let config = load(&[]).unwrap();
        assert!(config.ghl.page_frame_ancestors.contains("https://app.gohighlevel.com"));
        let config = load(&[(
            "GHL_PAGE_FRAME_ANCESTORS",
            "https://app.agency.example  http://127.0.0.1:9000",
        )])
        .unwrap();
        assert_eq!(
            config.ghl.page_frame_ancestors,
            "https://app.agency.example http://127.0.0.1:9000"
        );
        for bad in ["*", "https://x.example; script-src *", "'self'", "ftp://x"] {
            let err = load(&[("GHL_PAGE_FRAME_ANCESTORS", bad)]).unwrap_err();
            assert_eq!(err.var, "GHL_PAGE_FRAME_ANCESTORS", "{bad}");
        }
    }
}
