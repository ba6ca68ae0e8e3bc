//! The session state machine of ARCHITECTURE.md: `unpaired → pairing → connected ⇄
//! reconnecting → logged_out`, plus `parked`. Every state but a fresh `unpaired` carries a
//! stable reason code.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Unpaired,
    Pairing,
    Connected,
    Reconnecting,
    /// The phone removed the device: needs a new pairing.
    LoggedOut,
    /// Stopped on purpose (ban, stream replaced, crash loop); an admin starts it again.
    Parked,
}

impl SessionState {
    pub const ALL: [Self; 6] = [
        Self::Unpaired,
        Self::Pairing,
        Self::Connected,
        Self::Reconnecting,
        Self::LoggedOut,
        Self::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unpaired => "unpaired",
            Self::Pairing => "pairing",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::LoggedOut => "logged_out",
            Self::Parked => "parked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// A session in one of these states holds (or is about to hold) a live connection.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Connected | Self::Reconnecting)
    }

    /// States from which the pairing page may start pairing again.
    pub fn may_restart_pairing(self, reason: Option<&str>) -> bool {
        match self {
            Self::Unpaired => reason != Some(reasons::PAIRING_STARTING),
            Self::LoggedOut => true,
            Self::Pairing => reason == Some(reasons::QR_EXHAUSTED),
            _ => false,
        }
    }
}

/// Stable reason codes (ARCHITECTURE.md); the README says what each means.
pub mod reasons {
    pub const WA_LOGGED_OUT: &str = "wa_logged_out";
    pub const WA_DISCONNECTED: &str = "wa_disconnected";
    pub const RESTARTING: &str = "restarting";
    pub const HEALTH_CHECK: &str = "health_check_failed";
    pub const QR_EXHAUSTED: &str = "qr_exhausted";
    pub const CRASH_LOOP: &str = "crash_loop";
    pub const PHONE_IN_USE: &str = "phone_already_paired";
    pub const RESTORING: &str = "restoring";
    pub const WA_UNREACHABLE: &str = "wa_unreachable";
    pub const LEASE_LOST: &str = "lease_lost";
    /// Its instance stopped, or handed it to a less loaded one: another instance resumes it.
    pub const HANDED_OVER: &str = "handed_over";
    /// A client was started to pair and has no code to show yet (`unpaired`).
    pub const PAIRING_STARTING: &str = "pairing_starting";
}

/// A session as the admin API and the pairing page show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    pub state: SessionState,
    pub reason: Option<String>,
    pub phone: Option<String>,
    /// Unix ms when the state (or its reason) last changed.
    pub since: i64,
}

impl StateView {
    /// A location that never had a session, since `since` (unix ms).
    pub fn unpaired(since: i64) -> Self {
        Self {
            state: SessionState::Unpaired,
            reason: None,
            phone: None,
            since,
        }
    }

    /// Pairing, or started to pair and waiting for its first code.
    pub fn is_pairing(&self) -> bool {
        self.state == SessionState::Pairing
            || (self.state == SessionState::Unpaired && self.reason.as_deref() == Some(reasons::PAIRING_STARTING))
    }
}
