//! The server's half of WhatsApp's Noise transport: the `WA` connection header, 3-byte length
//! framing, the XX / IK / XXfallback handshakes, and the per-frame AES-GCM afterwards.
//!
//! The client half is whatsapp-rust's own (`wacore-noise`), so every step here mirrors the order
//! in which the client mixes keys; the responder in the crate's `tests/handshake_integration.rs`
//! is the reference this follows.

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{Message, WebSocketStream};
use wacore_noise::framing::FrameDecoder;
use wacore_noise::{NoiseCipher, NoiseHandshake};
use whatsapp_rust::buffa::{Message as _, MessageField};
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore_binary::consts::{
    NOISE_PATTERN_IK, NOISE_PATTERN_XX, NOISE_PATTERN_XXFALLBACK, WA_CONN_HEADER,
};
use whatsapp_rust::waproto::whatsapp as wa;

/// The server's long-lived Noise identity and the certificate chain that vouches for it. The
/// chain is signed by nobody WhatsApp knows: only clients built with
/// `danger-skip-cert-chain-verify` accept it.
pub struct ServerIdentity {
    keys: KeyPair,
    cert_chain: Vec<u8>,
}

impl ServerIdentity {
    pub fn generate() -> Self {
        let keys = KeyPair::generate(&mut rand::rng());
        let cert_chain = wacore_noise::test_util::build_cert_chain_bytes(&public(&keys));
        Self { keys, cert_chain }
    }
}

fn public(keys: &KeyPair) -> [u8; 32] {
    keys.public_key
        .public_key_bytes()
        .try_into()
        .expect("an X25519 public key is 32 bytes")
}

/// What the handshake learned: the client's static key and its `ClientPayload`.
pub struct Hello {
    pub client_static: [u8; 32],
    pub payload: wa::ClientPayload,
}

/// Reads frames off the WebSocket: strips the connection header of the first one and
/// reassembles frames that span (or share) WebSocket messages.
pub struct FrameReader<S> {
    ws: futures_util::stream::SplitStream<WebSocketStream<S>>,
    decoder: FrameDecoder,
    header_seen: bool,
}

/// Writes frames to the WebSocket.
pub struct FrameWriter<S> {
    ws: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
}

pub fn split<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>) -> (FrameReader<S>, FrameWriter<S>) {
    let (sink, stream) = ws.split();
    (
        FrameReader {
            ws: stream,
            decoder: FrameDecoder::new(),
            header_seen: false,
        },
        FrameWriter { ws: sink },
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameReader<S> {
    /// The next whole frame, or `None` once the peer closed the socket.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.decoder.decode_frame() {
                return Ok(Some(frame));
            }
            let Some(message) = self.ws.next().await else {
                return Ok(None);
            };
            let message = message.context("WebSocket read")?;
            if message.is_close() {
                return Ok(None);
            }
            if !message.is_binary() {
                continue;
            }
            let payload = message.into_payload();
            let mut data: &[u8] = &payload;
            if !self.header_seen {
                data = strip_connection_header(data)?;
                self.header_seen = true;
            }
            self.decoder.feed(data);
        }
    }
}

/// The first bytes are an optional edge-routing pre-intro (`ED\0\1` + 3-byte length + data),
/// then `WA` + magic + dictionary version.
fn strip_connection_header(mut data: &[u8]) -> Result<&[u8]> {
    if data.starts_with(b"ED") {
        if data.len() < 7 {
            bail!("truncated edge-routing pre-intro");
        }
        let len = (usize::from(data[4]) << 16) | (usize::from(data[5]) << 8) | usize::from(data[6]);
        data = data
            .get(7 + len..)
            .ok_or_else(|| anyhow!("truncated edge-routing data"))?;
    }
    data.strip_prefix(&WA_CONN_HEADER[..])
        .ok_or_else(|| anyhow!("the first frame does not start with the WA header"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameWriter<S> {
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<()> {
        let framed = wacore_noise::framing::encode_frame(payload, None)?;
        self.ws.send(Message::binary(framed)).await?;
        Ok(())
    }

    pub async fn close(&mut self) {
        let _ = self.ws.send(Message::close(None, "")).await;
        let _ = self.ws.close().await;
    }
}

/// Answers the client's handshake; returns what it learned and the two transport ciphers
/// (the server's write cipher, then its read cipher).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    identity: &ServerIdentity,
    reader: &mut FrameReader<S>,
    writer: &mut FrameWriter<S>,
) -> Result<(Hello, Transport)> {
    let frame = reader
        .next_frame()
        .await?
        .ok_or_else(|| anyhow!("closed before hello"))?;
    let hello = wa::HandshakeMessage::decode_from_slice(&frame)?
        .client_hello
        .into_option()
        .ok_or_else(|| anyhow!("no client hello"))?;
    let client_eph: [u8; 32] = hello
        .ephemeral
        .ok_or_else(|| anyhow!("no client ephemeral"))?
        .try_into()
        .map_err(|_| anyhow!("client ephemeral is not 32 bytes"))?;

    // IK: the client already knows our static key from a cached chain and sends its own static
    // key and payload in the hello. If it cached another server's key (this server restarted),
    // the decrypt fails and we switch it to XXfallback, as WhatsApp does after a key rotation.
    if let (Some(enc_static), Some(enc_payload)) = (hello.r#static, hello.payload) {
        if let Some(done) = try_ik(identity, client_eph, &enc_static, &enc_payload, writer).await? {
            return Ok(done);
        }
        return xx(identity, NOISE_PATTERN_XXFALLBACK, client_eph, reader, writer).await;
    }
    xx(identity, NOISE_PATTERN_XX, client_eph, reader, writer).await
}

async fn try_ik<S: AsyncRead + AsyncWrite + Unpin>(
    identity: &ServerIdentity,
    client_eph: [u8; 32],
    enc_static: &[u8],
    enc_payload: &[u8],
    writer: &mut FrameWriter<S>,
) -> Result<Option<(Hello, Transport)>> {
    let server_priv = identity.keys.private_key.serialize().to_vec();
    let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER)?;
    noise.authenticate(&public(&identity.keys));
    noise.authenticate(&client_eph);
    noise.mix_shared_secret(&server_priv, &client_eph)?;
    let Ok(client_static) = noise.decrypt(enc_static) else {
        return Ok(None);
    };
    let client_static: [u8; 32] = client_static
        .try_into()
        .map_err(|_| anyhow!("client static is not 32 bytes"))?;
    noise.mix_shared_secret(&server_priv, &client_static)?;
    let payload = noise.decrypt(enc_payload)?;

    let eph = KeyPair::generate(&mut rand::rng());
    let eph_priv = eph.private_key.serialize().to_vec();
    noise.authenticate(&public(&eph));
    noise.mix_shared_secret(&eph_priv, &client_eph)?;
    noise.mix_shared_secret(&eph_priv, &client_static)?;
    let enc_cert = noise.encrypt(&identity.cert_chain)?;
    send_server_hello(writer, public(&eph), None, enc_cert).await?;
    let (client_write, client_read) = noise.finish()?;
    let hello = Hello {
        client_static,
        payload: wa::ClientPayload::decode_from_slice(&payload)?,
    };
    Ok(Some((hello, Transport::new(client_read, client_write))))
}

/// XX and XXfallback differ only in the protocol name mixed into the transcript.
async fn xx<S: AsyncRead + AsyncWrite + Unpin>(
    identity: &ServerIdentity,
    pattern: &str,
    client_eph: [u8; 32],
    reader: &mut FrameReader<S>,
    writer: &mut FrameWriter<S>,
) -> Result<(Hello, Transport)> {
    let server_priv = identity.keys.private_key.serialize().to_vec();
    let mut noise = NoiseHandshake::new(pattern, &WA_CONN_HEADER)?;
    noise.authenticate(&client_eph);
    let eph = KeyPair::generate(&mut rand::rng());
    let eph_priv = eph.private_key.serialize().to_vec();
    noise.authenticate(&public(&eph));
    noise.mix_shared_secret(&eph_priv, &client_eph)?;
    let enc_static = noise.encrypt(&public(&identity.keys))?;
    noise.mix_shared_secret(&server_priv, &client_eph)?;
    let enc_cert = noise.encrypt(&identity.cert_chain)?;
    send_server_hello(writer, public(&eph), Some(enc_static), enc_cert).await?;

    let frame = reader
        .next_frame()
        .await?
        .ok_or_else(|| anyhow!("closed before finish"))?;
    let finish = wa::HandshakeMessage::decode_from_slice(&frame)?
        .client_finish
        .into_option()
        .ok_or_else(|| anyhow!("no client finish"))?;
    let client_static = noise.decrypt(finish.r#static.as_deref().unwrap_or_default())?;
    let client_static: [u8; 32] = client_static
        .try_into()
        .map_err(|_| anyhow!("client static is not 32 bytes"))?;
    noise.mix_shared_secret(&eph_priv, &client_static)?;
    let payload = noise.decrypt(finish.payload.as_deref().unwrap_or_default())?;
    let (client_write, client_read) = noise.finish()?;
    let hello = Hello {
        client_static,
        payload: wa::ClientPayload::decode_from_slice(&payload)?,
    };
    Ok((hello, Transport::new(client_read, client_write)))
}

async fn send_server_hello<S: AsyncRead + AsyncWrite + Unpin>(
    writer: &mut FrameWriter<S>,
    ephemeral: [u8; 32],
    enc_static: Option<Vec<u8>>,
    enc_cert: Vec<u8>,
) -> Result<()> {
    let message = wa::HandshakeMessage {
        server_hello: MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(ephemeral.to_vec()),
            r#static: enc_static,
            payload: Some(enc_cert),
            ..Default::default()
        }),
        ..Default::default()
    };
    writer.send_frame(&message.encode_to_vec()).await
}

/// The transport ciphers after the handshake; each direction counts its own frames from 0.
pub struct Transport {
    pub write: Sealer,
    pub read: Opener,
}

impl Transport {
    fn new(write: NoiseCipher, read: NoiseCipher) -> Self {
        Self {
            write: Sealer {
                cipher: write,
                counter: 0,
            },
            read: Opener {
                cipher: read,
                counter: 0,
            },
        }
    }
}

pub struct Sealer {
    cipher: NoiseCipher,
    counter: u32,
}

impl Sealer {
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let out = self.cipher.encrypt_with_counter(self.counter, plaintext)?;
        self.counter += 1;
        Ok(out)
    }
}

pub struct Opener {
    cipher: NoiseCipher,
    counter: u32,
}

impl Opener {
    pub fn open(&mut self, mut frame: BytesMut) -> Result<BytesMut> {
        self.cipher.decrypt_in_place_with_counter(self.counter, &mut frame)?;
        self.counter += 1;
        Ok(frame)
    }
}
