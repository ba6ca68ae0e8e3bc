//! WhatsApp sessions: one supervised client per location, its state machine and health.
//! `supervisor.rs` owns the registry and the operations on it, `runner.rs` keeps one
//! location's client going, `actor.rs` runs one client,
//! `policy.rs` decides restarts, `state.rs` names the states and reason codes.

mod actor;
mod policy;
mod runner;
mod state;
mod supervisor;

pub use policy::{Decision, PolicySettings, RestartPolicy};
pub use state::{SessionState, StateView, reasons};
pub use supervisor::{PairingCode, SessionError, SessionSettings, Supervisor, Unlink};
