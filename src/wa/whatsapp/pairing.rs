//! Pairing by phone number: our own task requests the code once the socket is up and only when
//! the store holds no device yet (the crate's `with_pair_code` can race an already-paired device
//! into a new pairing), and again on each refresh WhatsApp asks for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use whatsapp_rust::Client;
use whatsapp_rust::pair_code::PairCodeOptions;

use super::events::Sink;
use crate::wa::{Link, WaEvent};

/// How long the pairing-code task waits for the socket before each request.
const SOCKET_WAIT: Duration = Duration::from_secs(60);
/// How long a pairing code stays valid (the crate reports about 180 s).
const PAIR_CODE_WAIT: Duration = Duration::from_secs(180);
/// The first code plus the refreshes WhatsApp may ask for, before pairing gives up.
const PAIR_CODE_REQUESTS: usize = 3;

/// What the bus handler tells the pairing-code task.
#[derive(Debug)]
pub(super) enum PairSignal {
    /// WhatsApp asked for a new code (the old one is void).
    Refresh,
    /// The code was refused; none is coming.
    Failed,
    /// The phone linked this device.
    Paired,
}

/// Pairing by phone number: requests a code once the socket is up, then again on each refresh
/// WhatsApp asks for. If no phone links in time, it reports `QrExhausted` (pairing over,
/// nothing linked), as the QR flow does.
pub(super) async fn pair_by_code(
    client: Arc<Client>,
    phone: String,
    sink: Sink,
    mut signals: mpsc::UnboundedReceiver<PairSignal>,
    ended: CancellationToken,
) {
    let location = sink.shared.location.clone();
    let options = PairCodeOptions {
        phone_number: phone.chars().filter(char::is_ascii_digit).collect(),
        ..Default::default()
    };
    for _ in 0..PAIR_CODE_REQUESTS {
        let socket = tokio::select! {
            () = ended.cancelled() => return,
            ready = client.wait_for_socket(SOCKET_WAIT) => ready,
        };
        if let Err(e) = socket {
            tracing::warn!(location.id = %location, error = %e, "no connection to WhatsApp to request a pairing code");
            break;
        }
        // Signals about an earlier code are stale; only a link still counts.
        while let Ok(signal) = signals.try_recv() {
            if matches!(signal, PairSignal::Paired) {
                return;
            }
        }
        if sink.shared.paired.load(Ordering::Relaxed) || client.is_logged_in() {
            return;
        }
        let requested = tokio::select! {
            () = ended.cancelled() => return,
            requested = client.pair_with_code(options.clone()) => requested,
        };
        if let Err(e) = requested {
            tracing::warn!(location.id = %location, error = %e, "WhatsApp issued no pairing code");
            break;
        }
        // The code itself reaches waghl as `Event::PairingCode`, through the bus handler.
        let next = tokio::select! {
            () = ended.cancelled() => return,
            () = tokio::time::sleep(PAIR_CODE_WAIT) => None,
            signal = signals.recv() => match signal {
                Some(signal) => Some(signal),
                None => return,
            },
        };
        match next {
            Some(PairSignal::Refresh) => continue,
            Some(PairSignal::Paired) => return,
            Some(PairSignal::Failed) | None => break,
        }
    }
    if !sink.shared.paired.load(Ordering::Relaxed) && !ended.is_cancelled() {
        tracing::info!(location.id = %location, "pairing by code ended without a link");
        sink.shared.set_link(Link::Dead);
        let _ = sink.emit(WaEvent::QrExhausted);
    }
}
