//! A WhatsApp server on loopback for tests. The unmodified whatsapp-rust client connects to it
//! at `ws://127.0.0.1:PORT/ws/chat`, pairs with an account's phone, and exchanges messages with
//! contacts, who are themselves whatsapp-rust clients run in-process (see `peers`). The control
//! API under `/_ctl/` drives the phones and contacts and reports what they saw (see `ctl`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = wa_testserver::TestServer::start("127.0.0.1:0".parse()?).await?;
//! println!("point the client at {}", server.ws_url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod conn;
mod ctl;
mod faults;
mod history;
mod http;
mod iq;
mod loopback;
mod media;
mod nodes;
mod noise;
mod pair_code;
mod pairing;
mod peers;
mod prekeys;
mod routing;
mod state;
mod usync;
mod web;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;

pub use loopback::LoopbackHttpClient;
pub use peers::CLIENT_VERSION;

use conn::Conn;
use state::{Account, DeviceAddr, Out, State, Stats, now};

/// A running server. Dropping it does not stop it; call [`TestServer::shutdown`].
pub struct TestServer {
    addr: SocketAddr,
    hub: Arc<Hub>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Binds `addr` (use port 0 for a free port) and serves until [`TestServer::shutdown`].
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let hub = Arc::new_cyclic(|me| Hub::new(addr, me.clone()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(http::serve(listener, hub.clone(), stop.clone()));
        Ok(Self { addr, hub, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws/chat`, for `TokioWebSocketTransportFactory::with_url`.
    pub fn ws_url(&self) -> String {
        self.hub.ws_url.clone()
    }

    /// `http://127.0.0.1:PORT`: media and the control API.
    pub fn http_url(&self) -> String {
        self.hub.http_url.clone()
    }

    /// Stops accepting, closes every connection and the in-process clients.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.hub.close_all();
    }
}

/// Everything the server's parts share.
pub(crate) struct Hub {
    /// Itself, for tasks it starts.
    me: Weak<Hub>,
    pub state: Mutex<State>,
    pub stats: Stats,
    pub identity: noise::ServerIdentity,
    pub pairings: pairing::Pairings,
    pub pair_codes: pair_code::PairCodes,
    pub peers: peers::Peers,
    pub media: media::MediaStore,
    pub ws_url: String,
    pub http_url: String,
    pub faults: faults::Faults,
    pub web: web::WebRelease,
    /// Phones whose own device list the server has answered (see `peers::start`).
    own_lists_synced: Mutex<HashSet<String>>,
    next_conn: AtomicU64,
}

impl Hub {
    fn new(addr: SocketAddr, me: Weak<Hub>) -> Self {
        Self {
            me,
            state: Mutex::default(),
            stats: Stats::default(),
            identity: noise::ServerIdentity::generate(),
            pairings: pairing::Pairings::default(),
            pair_codes: pair_code::PairCodes::default(),
            peers: peers::Peers::default(),
            media: media::MediaStore::default(),
            ws_url: format!("ws://{addr}/ws/chat"),
            http_url: format!("http://{addr}"),
            faults: faults::Faults::default(),
            web: web::WebRelease::default(),
            own_lists_synced: Mutex::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The account of `phone` (digits), created with a fresh LID on first mention.
    pub fn account_mut<'a>(&self, state: &'a mut State, phone: &str) -> &'a mut Account {
        state.accounts.entry(phone.to_owned()).or_insert_with(|| Account {
            lid: format!(
                "{}",
                100_000_000_000_000u64 + rand::random_range(0..899_999_999_999_999u64)
            ),
            lid_only: false,
            lid_revealed: false,
            devices: Default::default(),
            next_device: 0,
            devices_changed_at: now(),
        })
    }

    /// The phone number (`+digits`) behind a user part that may be a LID.
    pub fn phone_of(&self, user: &str) -> String {
        let state = self.state.lock().expect("state lock");
        format!("+{}", state.resolve_user(user).unwrap_or_else(|| user.to_owned()))
    }

    /// Why a device may not log in, as the `<failure>` WhatsApp sends; `None` lets it in.
    pub fn login_refusal(&self, state: &State, addr: &DeviceAddr, noise_pub: &[u8; 32], revision: u32) -> Option<Out> {
        let failure = |reason: &str| Out::CloseWith(NodeBuilder::new("failure").attr("reason", reason).build());
        let Some(device) = state.device(addr) else {
            // Unknown or removed device: logged out.
            return Some(failure("401"));
        };
        if &device.noise_pub != noise_pub {
            return Some(failure("401"));
        }
        self.faults.login_failure(addr, revision)
    }

    pub fn disconnected(&self, conn: &Conn) {
        self.pairings.forget(conn.id);
        self.pair_codes.forget(conn.id);
        if let Some(addr) = conn.device() {
            let mut state = self.state.lock().expect("state lock");
            if state.online.get(addr).is_some_and(|o| o.conn == conn.id) {
                state.online.remove(addr);
                state.requeue_unacked(addr);
            }
        }
    }

    /// The device left passive mode: it gets what waited for it, then the offline marker
    /// (`Connected` waits for that marker).
    pub fn went_active(&self, addr: &DeviceAddr) {
        let mut state = self.state.lock().expect("state lock");
        // While the server holds deliveries back (`/_ctl/offline`) the queue stays queued.
        let queued: Vec<Node> = match state.paused(addr) {
            true => Vec::new(),
            false => state
                .device_mut(addr)
                .map(|d| d.queue.drain(..).collect())
                .unwrap_or_default(),
        };
        let Some(online) = state.online.get_mut(addr) else {
            return;
        };
        online.active = true;
        let tx = online.tx.clone();
        let count = queued.len();
        for mut node in queued {
            node.attrs.insert("offline", "1");
            if let Some(device) = state.device_mut(addr) {
                device.in_flight(node.clone());
            }
            if node.tag == "message"
                && let Some(id) = nodes::attr(&node, "id")
                && nodes::jid_attr(&node, "from").is_some_and(|f| f.user != addr.user)
            {
                state.deliveries.entry(id).or_default().delivered_to.push(addr.clone());
            }
            let _ = tx.send(Out::Node(node));
        }
        let share = state
            .device_mut(addr)
            .is_some_and(|d| std::mem::take(&mut d.key_share_pending));
        if share && let Some(hub) = self.me.upgrade() {
            let addr = addr.clone();
            tokio::spawn(async move { peers::share_app_state_key(&hub, &addr).await });
        }
        let marker = NodeBuilder::new("ib")
            .children([NodeBuilder::new("offline").attr("count", count.to_string()).build()])
            .build();
        let _ = tx.send(Out::Node(marker));
    }

    /// A usync from `addr` was answered; note it if it asked for the phone's own devices.
    pub fn usync_answered(&self, addr: &DeviceAddr, asked_own: bool) {
        if addr.device == 0 && asked_own {
            self.own_lists_synced
                .lock()
                .expect("synced lock")
                .insert(addr.user.clone());
        }
    }

    pub fn own_list_synced(&self, phone: &str) -> bool {
        self.own_lists_synced.lock().expect("synced lock").contains(phone)
    }

    /// Tells every connected device that `phone`'s device list changed.
    pub fn devices_changed(&self, phone: &str) {
        let state = self.state.lock().expect("state lock");
        let Some(account) = state.accounts.get(phone) else {
            return;
        };
        let Some((&device, last)) = account.devices.iter().next_back() else {
            return;
        };
        let list = usync::key_index_list(account);
        let node = routing::devices_notification(
            phone,
            device,
            last.key_index,
            true,
            account.devices_changed_at,
            Some(list),
        );
        for (addr, online) in &state.online {
            if addr.device != device || addr.user != phone {
                let _ = online.tx.send(Out::Node(node.clone()));
            }
        }
    }

    fn close_all(&self) {
        self.peers.stop_all();
        let mut state = self.state.lock().expect("state lock");
        for (_, online) in state.online.drain() {
            let _ = online.tx.send(Out::Drop);
        }
    }
}
