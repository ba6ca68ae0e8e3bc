//! waghl bridges WhatsApp into GoHighLevel: one WhatsApp linked-device session per GHL
//! location, two durable message queues, and the GHL credentials of every installed location.
//! ARCHITECTURE.md (in the shared folder beside the repository) is the map of these modules.

/// The one retry backoff (exponential, capped, jittered), pure.
pub mod backoff;
/// Every setting, read once from the environment and validated.
pub mod config;
/// AES-256-GCM sealing of secrets at rest.
pub mod crypto;
/// Pure types and rules: ids, phone numbers, message conversions. No IO.
pub mod domain;
/// The GHL API: OAuth, tokens, rate limits, retries, typed calls.
pub mod ghl;
/// Group commit: one writer task, one transaction per batch of concurrent requests.
pub mod group_commit;
/// The axum router and one file per HTTP surface.
pub mod http;
/// The provider webhooks' intake into the outbox, through group commit.
pub mod intake;
/// Periodic housekeeping: pruning replay-defence ids, purging old message bodies.
pub mod maintenance;
/// Prometheus metrics, shared by every module that counts something.
pub mod metrics;
/// The workers that move messages between the queues, WhatsApp and GHL.
pub mod relay;
/// WhatsApp sessions: the per-location supervisor, state machine and health checks.
pub mod sessions;
/// Stopping on SIGTERM / SIGINT.
pub mod shutdown;
/// Builds the application and runs it until it is told to stop.
pub mod startup;
/// The cheap-to-clone state every request handler and worker shares.
pub mod state;
/// All SQL, behind functions named for what they do.
pub mod store;
/// Tracing set up once per process.
pub mod telemetry;
/// Current time as unix milliseconds, and its RFC 3339 form.
pub mod time;
/// The WhatsApp transport seam and its implementations.
pub mod wa;
