//! A location's entry in the supervisor's registry: its state as this instance last saw or set
//! it, the code to scan, and — while this instance runs the session — its runner and client.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::actor::Command;
use super::state::StateView;
use crate::time::now_ms;
use crate::wa::WaSession;

/// The code a person scans or types right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    pub qr: Option<String>,
    pub code: Option<String>,
    /// Unix ms until the QR code is valid.
    pub valid_until: Option<i64>,
}

impl PairingCode {
    pub fn new(qr: Option<String>, code: Option<String>, valid_for: Option<Duration>) -> Self {
        Self {
            qr,
            code,
            valid_until: valid_for.map(|d| now_ms() + d.as_millis() as i64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.qr.is_none() && self.code.is_none()
    }
}

pub(super) struct RunnerHandle {
    pub stop: CancellationToken,
    pub commands: mpsc::Sender<Command>,
    pub done: watch::Receiver<bool>,
}

pub(super) struct Slot {
    pub view: watch::Sender<StateView>,
    pairing: Mutex<PairingCode>,
    /// The live client, for senders; `None` between clients.
    pub session: Mutex<Option<Arc<dyn WaSession>>>,
    pub runner: Mutex<Option<RunnerHandle>>,
    /// Serialises pairing starts and logouts of this location, so two requests at once can
    /// never leave two runners (two clients) behind.
    pub operations: tokio::sync::Mutex<()>,
    /// Unix ms when this instance last took the lease: a renewal round that began before it
    /// cannot have renewed it, and must not take its absence for a lost lease.
    pub lease_taken_at: AtomicI64,
    /// The actor is storing an inbound message: the session is not idle (not handed over).
    pub storing: AtomicBool,
}

impl Slot {
    pub fn new(view: StateView) -> Self {
        Self {
            view: watch::channel(view).0,
            pairing: Mutex::default(),
            session: Mutex::default(),
            runner: Mutex::default(),
            operations: tokio::sync::Mutex::new(()),
            lease_taken_at: AtomicI64::new(0),
            storing: AtomicBool::new(false),
        }
    }

    pub fn view(&self) -> StateView {
        self.view.borrow().clone()
    }

    pub fn set_code(&self, code: PairingCode) {
        *lock(&self.pairing) = code;
    }

    pub fn pairing_code(&self) -> PairingCode {
        lock(&self.pairing).clone()
    }

    pub fn runner(&self) -> Option<(CancellationToken, mpsc::Sender<Command>, watch::Receiver<bool>)> {
        lock(&self.runner)
            .as_ref()
            .filter(|r| !*r.done.borrow())
            .map(|r| (r.stop.clone(), r.commands.clone(), r.done.clone()))
    }

    /// This instance runs the session (a runner lives, with or without a client right now).
    pub fn runs_here(&self) -> bool {
        self.runner().is_some()
    }

    pub fn took_lease(&self) {
        self.lease_taken_at.store(now_ms(), Ordering::Release);
    }

    pub fn lease_taken_at(&self) -> i64 {
        self.lease_taken_at.load(Ordering::Acquire)
    }

    pub fn is_storing(&self) -> bool {
        self.storing.load(Ordering::Acquire)
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
