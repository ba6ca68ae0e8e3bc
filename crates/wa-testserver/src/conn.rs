//! One client connection, from the Noise handshake to the socket's close: login (or the start
//! of a registration), then each stanza the client sends goes to its handler.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_websockets::WebSocketStream;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;

use crate::nodes::attr;
use crate::noise::{self, FrameWriter, Sealer};
use crate::state::{DeviceAddr, Online, Out, Stats, now};
use crate::{Hub, iq, pairing, routing};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub enum Who {
    /// A logged-in device.
    Device(DeviceAddr),
    /// A new device that is showing QR codes; the key is its registration.
    Unpaired(Arc<pairing::Registration>),
}

/// A connection as its handlers see it.
pub struct Conn {
    pub id: u64,
    pub who: Who,
    pub tx: mpsc::UnboundedSender<Out>,
}

impl Conn {
    pub fn send(&self, node: Node) {
        let _ = self.tx.send(Out::Node(node));
    }

    pub fn device(&self) -> Option<&DeviceAddr> {
        match &self.who {
            Who::Device(addr) => Some(addr),
            Who::Unpaired(_) => None,
        }
    }
}

pub async fn serve<S>(hub: Arc<Hub>, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = run(hub, ws).await {
        tracing::debug!(error = %format!("{e:#}"), "connection ended");
    }
}

async fn run<S>(hub: Arc<Hub>, ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = noise::split(ws);
    let (hello, transport) = noise::handshake(&hub.identity, &mut reader, &mut writer)
        .await
        .context("noise handshake")?;
    Stats::bump(&hub.stats.connects);
    let mut opener = transport.read;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(write_loop(writer, transport.write, rx));
    let id = hub.next_conn_id();

    let who = match login(&hub, id, &hello, &tx) {
        Some(who) => who,
        None => {
            // The failure stanza is queued; let the writer send it and close.
            drop(tx);
            let _ = writer_task.await;
            return Ok(());
        }
    };
    let conn = Conn { id, who, tx };
    let result = async {
        while let Some(frame) = reader.next_frame().await? {
            let plain = opener.open(frame)?;
            let data = unpack(&plain)?;
            let node = unmarshal_ref(&data)?.to_owned();
            handle(&hub, &conn, node).await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    hub.disconnected(&conn);
    writer_task.abort();
    result
}

/// Checks the `ClientPayload`: a paired device logs in (`<success>` or `<failure>`); a new
/// one gets its QR refs. Returns `None` when the connection is refused.
fn login(hub: &Arc<Hub>, id: u64, hello: &noise::Hello, tx: &mpsc::UnboundedSender<Out>) -> Option<Who> {
    let payload = &hello.payload;
    if let Some(reg) = payload.device_pairing_data.as_option() {
        let registration = pairing::Registration::from_payload(reg, hello.client_static)?;
        let registration = Arc::new(registration);
        let node = hub.pairings.offer(&registration, id, tx.clone());
        let _ = tx.send(Out::Node(node));
        return Some(Who::Unpaired(registration));
    }
    let user = payload.username?.to_string();
    let device = u16::try_from(payload.device.unwrap_or(0)).ok()?;
    let addr = DeviceAddr::new(user, device);
    let mut state = hub.state.lock().expect("state lock");
    let revision = payload
        .user_agent
        .as_option()
        .and_then(|agent| agent.app_version.as_option())
        .and_then(|version| version.tertiary)
        .unwrap_or(0);
    if let Some(refusal) = hub.login_refusal(&state, &addr, &hello.client_static, revision) {
        let _ = tx.send(refusal);
        return None;
    }
    let lid = state.accounts[&addr.user].lid.clone();
    // A second login of the same device takes the stream over; the old one is told so, as
    // WhatsApp does. What the old connection did not acknowledge is delivered again on this
    // one: a device that reconnects before the server noticed its old socket is gone (after a
    // drop) must not lose what was written to that socket.
    if let Some(old) = state.online.insert(
        addr.clone(),
        Online {
            conn: id,
            tx: tx.clone(),
            active: false,
        },
    ) {
        let _ = old.tx.send(Out::CloseWith(replaced()));
        state.requeue_unacked(&addr);
    }
    drop(state);
    let success = NodeBuilder::new("success")
        .attr("t", now().to_string())
        .attr("lid", format!("{lid}:{}@lid", addr.device))
        .attr("props", "1")
        .attr("location", "loopback")
        .build();
    let _ = tx.send(Out::Node(success));
    tracing::info!(device = %addr.jid(), "logged in");
    Some(Who::Device(addr))
}

/// `<stream:error><conflict type="replaced"/></stream:error>`: another client took the stream.
pub fn replaced() -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict").attr("type", "replaced").build()])
        .build()
}

async fn handle(hub: &Arc<Hub>, conn: &Conn, node: Node) {
    tracing::trace!(conn = conn.id, tag = %node.tag, "stanza in");
    match node.tag.as_ref() {
        "iq" => iq::handle(hub, conn, node).await,
        "message" => routing::message(hub, conn, node),
        "receipt" => routing::receipt(hub, conn, node),
        "presence" => {
            if let (Some(addr), Some(kind)) = (conn.device(), attr(&node, "type")) {
                hub.faults.set_presence(addr, kind);
            }
        }
        "ack" => routing::client_ack(hub, conn, &node),
        "ib" | "chatstate" => {}
        other => tracing::debug!(tag = other, "unhandled stanza"),
    }
}

async fn write_loop<S>(mut writer: FrameWriter<S>, mut sealer: Sealer, mut rx: mpsc::UnboundedReceiver<Out>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(out) = rx.recv().await {
        let (node, last) = match out {
            Out::Node(node) => (Some(node), false),
            Out::CloseWith(node) => (Some(node), true),
            Out::Drop => (None, true),
        };
        if let Some(node) = node
            && write_node(&mut writer, &mut sealer, &node).await.is_err()
        {
            return;
        }
        if last {
            writer.close().await;
            return;
        }
    }
}

async fn write_node<S>(writer: &mut FrameWriter<S>, sealer: &mut Sealer, node: &Node) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::trace!(tag = %node.tag, "stanza out");
    let plain = marshal(node)?;
    let sealed = sealer.seal(&plain)?;
    writer.send_frame(&sealed).await
}
