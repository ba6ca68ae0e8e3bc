//! WhatsApp sessions: one supervised client per location, its state machine and health, spread
//! over the instances that share the database. `supervisor.rs` owns the registry and the
//! operations on it (`slot.rs`: one location's entry, `views.rs`: what a session looks like
//! from any instance), `runner.rs` keeps one location's client going, `actor.rs` runs one
//! client, `policy.rs` decides restarts, `state.rs` names the states and reason codes;
//! `leases.rs` decides which instance runs which session, `commands.rs` carries an operation
//! to the instance that runs the session, `signals.rs` hears the other instances.

mod actor;
mod commands;
mod leases;
mod policy;
mod runner;
mod signals;
mod slot;
mod state;
mod supervisor;
mod views;

pub use commands::Replay;
pub use policy::{Decision, PolicySettings, RestartPolicy};
pub use slot::PairingCode;
pub use state::{SessionState, StateView, reasons};
pub use supervisor::{SessionError, SessionSettings, Supervisor, Unlink};
