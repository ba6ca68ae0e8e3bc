//! WhatsApp sessions: one supervised client per location, its state machine and health.
//! `supervisor.rs` owns the registry and restart policy, `actor.rs` runs one client,
//! `policy.rs` decides restarts, `state.rs` names the states and reason codes.

mod actor;
mod policy;
mod state;
mod supervisor;

pub use policy::{Decision, PolicySettings, RestartPolicy};
pub use state::{SessionState, StateView, reasons};
pub use supervisor::{PairingCode, SessionError, SessionSettings, Supervisor, Unlink};
