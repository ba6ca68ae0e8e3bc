//! Linking a new device by QR code: the server hands the new device its `pair-device` refs, the
//! account's phone scans the QR string and confirms (real whatsapp-rust code:
//! `pair::pair_with_qr_code`, i.e. `PairUtils::prepare_master_pairing_message`), the server
//! sends the new device `pair-success` carrying an identity signed with the phone's account
//! key, the device countersigns it, and the server restarts its stream (515).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::sync::{mpsc, oneshot};
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::libsignal::crypto::hmac_sha256;
use whatsapp_rust::wacore::libsignal::protocol::KeyPair;
use whatsapp_rust::wacore::pair::PairUtils;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::waproto::whatsapp as wa;

use crate::Hub;
use crate::conn::Conn;
use crate::nodes::{SERVER, attr, bytes, child, iq_result, server_id};
use crate::state::{Device, DeviceAddr, Out, SignedPreKey, now};

/// How many refs one `pair-device` carries (WhatsApp Web shows six QR codes, then gives up).
const REFS: usize = 6;
/// ADV signature prefix for the account's signature over a device identity.
const ADV_PREFIX_ACCOUNT_SIGNATURE: &[u8] = &[6, 0];

/// What a new device registered with in its `ClientPayload`.
#[derive(Debug)]
pub struct Registration {
    pub noise_pub: [u8; 32],
    pub identity: Vec<u8>,
    pub registration_id: u32,
    pub signed_pre_key: SignedPreKey,
}

impl Registration {
    pub fn from_payload(reg: &wa::client_payload::DevicePairingRegistrationData, noise_pub: [u8; 32]) -> Option<Self> {
        let regid: [u8; 4] = reg.e_regid.as_deref()?.try_into().ok()?;
        let skey_id = reg.e_skey_id.as_deref()?;
        Some(Self {
            noise_pub,
            identity: reg.e_ident.clone()?,
            registration_id: u32::from_be_bytes(regid),
            signed_pre_key: SignedPreKey {
                id: skey_id.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)),
                public: reg.e_skey_val.clone()?,
                signature: reg.e_skey_sig.clone()?,
            },
        })
    }
}

/// A new device waiting to be scanned, and the scan in progress for it.
struct Waiting {
    registration: Arc<Registration>,
    conn: u64,
    tx: mpsc::UnboundedSender<Out>,
}

/// How a linking ends: `Ok` once the device countersigned, or why not.
pub type Done = oneshot::Sender<Result<(), String>>;

/// A scan waiting for the phone's confirmation.
struct Scan {
    qr_ref: String,
    adv_secret: Vec<u8>,
    done: Done,
}

/// A new device between `pair-success` and its countersignature.
struct Linking {
    phone: String,
    device: u16,
    done: Done,
}

#[derive(Default)]
pub struct Pairings {
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Scans whose phone has not confirmed yet, by phone.
    scanning: Mutex<HashMap<String, Scan>>,
    /// Devices sent `pair-success`, by their connection.
    linking: Mutex<HashMap<u64, Linking>>,
}

impl Pairings {
    /// Registers a new device's connection and returns its `<pair-device>` iq.
    pub fn offer(&self, registration: &Arc<Registration>, conn: u64, tx: mpsc::UnboundedSender<Out>) -> Node {
        let mut waiting = self.waiting.lock().expect("pairings lock");
        let refs: Vec<String> = (0..REFS)
            .map(|_| {
                let random: [u8; 12] = rand::random();
                format!("2@{}", B64.encode(random))
            })
            .collect();
        for r in &refs {
            waiting.insert(
                r.clone(),
                Waiting {
                    registration: registration.clone(),
                    conn,
                    tx: tx.clone(),
                },
            );
        }
        NodeBuilder::new("iq")
            .attr("from", SERVER)
            .attr("type", "set")
            .attr("id", server_id())
            .attr("xmlns", "md")
            .children([NodeBuilder::new("pair-device")
                .children(
                    refs.into_iter()
                        .map(|r| NodeBuilder::new("ref").bytes(r.into_bytes()).build()),
                )
                .build()])
            .build()
    }

    /// The device behind `conn` went away: its refs are dead.
    pub fn forget(&self, conn: u64) {
        self.waiting
            .lock()
            .expect("pairings lock")
            .retain(|_, w| w.conn != conn);
        self.linking.lock().expect("pairings lock").remove(&conn);
    }
}

/// `POST /_ctl/scan`: the phone of `phone` scans `qr`. Resolves once the device countersigned
/// its identity (so it is linked), or with the reason it was not.
pub async fn scan(hub: &Arc<Hub>, phone: &str, qr: &str) -> Result<(), String> {
    let (qr_ref, _noise, _identity) = PairUtils::parse_qr_code(qr).map_err(|e| e.to_string())?;
    let adv_secret = qr
        .split(',')
        .nth(3)
        .and_then(|s| B64.decode(s).ok())
        .ok_or("the QR string has no ADV secret")?;
    if !hub
        .pairings
        .waiting
        .lock()
        .expect("pairings lock")
        .contains_key(&qr_ref)
    {
        return Err("unknown or expired QR code".into());
    }
    let client = hub.peers.phone(hub, phone).await.map_err(|e| format!("{e:#}"))?;
    let (done, finished) = oneshot::channel();
    hub.pairings.scanning.lock().expect("pairings lock").insert(
        phone.to_owned(),
        Scan {
            qr_ref,
            adv_secret,
            done,
        },
    );
    // The phone's half, in the crate's own code: it sends `pair-device-sign` to this server.
    whatsapp_rust::pair::pair_with_qr_code(&client, qr)
        .await
        .map_err(|e| format!("the phone could not confirm: {e:#}"))?;
    outcome(finished).await
}

/// Waits for a linking to end.
pub async fn outcome(finished: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(30), finished).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("the new device went away while linking".into()),
        Err(_) => Err("the new device did not answer".into()),
    }
}

/// The phone's `<pair-device-sign>` confirmation of the scan in progress: the server sends the
/// new device `pair-success`.
pub fn phone_confirmed(hub: &Arc<Hub>, conn: &Conn, node: &Node) {
    let id = attr(node, "id").unwrap_or_default();
    conn.send(iq_result(&id, vec![]));
    let Some(phone) = conn.device().filter(|a| a.device == 0).map(|a| a.user.clone()) else {
        return;
    };
    let Some(scan) = hub.pairings.scanning.lock().expect("pairings lock").remove(&phone) else {
        return;
    };
    let Some(waiting) = hub.pairings.waiting.lock().expect("pairings lock").remove(&scan.qr_ref) else {
        let _ = scan.done.send(Err("the QR code expired".into()));
        return;
    };
    send_pair_success(
        hub,
        &phone,
        waiting.conn,
        &waiting.tx,
        &waiting.registration,
        &scan.adv_secret,
        scan.done,
    );
}

/// Sends the new device `pair-success`: its identity signed with the phone's account key, in
/// an HMAC under the ADV secret the two share (from the QR code, or derived in pairing by
/// code). The device is linked once it countersigns (`device_answered`).
pub fn send_pair_success(
    hub: &Hub,
    phone: &str,
    conn: u64,
    tx: &mpsc::UnboundedSender<Out>,
    registration: &Registration,
    adv_secret: &[u8],
    done: Done,
) {
    let Some(account_key) = hub.peers.identity_of(phone) else {
        let _ = done.send(Err("the phone has no identity".into()));
        return;
    };
    let (device, lid) = {
        let mut state = hub.state.lock().expect("state lock");
        let account = hub.account_mut(&mut state, phone);
        account.next_device += 1;
        (account.next_device, account.lid.clone())
    };
    let identity = signed_identity(&account_key, &registration.identity, device, adv_secret);
    let success = NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "set")
        .attr("id", server_id())
        .attr("xmlns", "md")
        .attr("t", now().to_string())
        .children([NodeBuilder::new("pair-success")
            .children([
                NodeBuilder::new("device-identity").bytes(identity).build(),
                NodeBuilder::new("platform").attr("name", "android").build(),
                // Accounts here are businesses (waghl's users are): WhatsApp names them in
                // pair-success, and the device takes it as its push name.
                NodeBuilder::new("biz")
                    .attr("name", format!("Business +{phone}"))
                    .build(),
                NodeBuilder::new("device")
                    .attr("jid", format!("{phone}:{device}@s.whatsapp.net"))
                    .attr("lid", format!("{lid}:{device}@lid"))
                    .build(),
            ])
            .build()])
        .build();
    let _ = tx.send(Out::Node(success));
    hub.pairings.linking.lock().expect("pairings lock").insert(
        conn,
        Linking {
            phone: phone.to_owned(),
            device,
            done,
        },
    );
}

/// The account's signature over the new device's identity, wrapped in the HMAC the device
/// checks with the ADV secret from its QR code (`PairUtils::do_pair_crypto` is the reader).
fn signed_identity(account: &KeyPair, device_identity: &[u8], key_index: u16, adv_secret: &[u8]) -> Vec<u8> {
    let details = wa::ADVDeviceIdentity {
        raw_id: Some(rand::random()),
        timestamp: Some(now() as u64),
        key_index: Some(u32::from(key_index)),
        ..Default::default()
    }
    .encode_to_vec();
    let message = [ADV_PREFIX_ACCOUNT_SIGNATURE, &details, device_identity].concat();
    let signature = account
        .private_key
        .calculate_signature(&message, &mut rand::rng())
        .expect("signing with a valid key");
    let signed = wa::ADVSignedDeviceIdentity {
        details: Some(details),
        account_signature_key: Some(account.public_key.public_key_bytes().to_vec()),
        account_signature: Some(signature.to_vec()),
        device_signature: None,
    }
    .encode_to_vec();
    wa::ADVSignedDeviceIdentityHMAC {
        hmac: Some(hmac_sha256(adv_secret, &signed).to_vec()),
        details: Some(signed),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The new device's answer to `pair-success`: its countersigned identity (the device is now
/// linked; its stream restarts with 515) or a pairing error.
pub fn device_answered(hub: &Arc<Hub>, conn: &Conn, node: &Node, registration: &Registration) {
    let Some(linking) = hub.pairings.linking.lock().expect("pairings lock").remove(&conn.id) else {
        return;
    };
    let signed = child(node, "pair-device-sign")
        .and_then(|s| child(s, "device-identity"))
        .and_then(bytes)
        .map(<[u8]>::to_vec);
    let Some(signed) = signed else {
        let reason = child(node, "error")
            .and_then(|e| attr(e, "text"))
            .unwrap_or_else(|| "the device refused the pairing".into());
        let _ = linking.done.send(Err(reason));
        return;
    };
    {
        let mut state = hub.state.lock().expect("state lock");
        let account = hub.account_mut(&mut state, &linking.phone);
        account.devices.insert(
            linking.device,
            Device {
                noise_pub: registration.noise_pub,
                registration_id: registration.registration_id,
                identity: registration.identity.clone(),
                signed_pre_key: Some(registration.signed_pre_key.clone()),
                pre_keys: Default::default(),
                device_identity: Some(signed),
                key_index: u32::from(linking.device),
                linked_at: now(),
                queue: Default::default(),
                unacked: Vec::new(),
                key_share_pending: true,
            },
        );
        account.devices_changed_at = now();
    }
    hub.devices_changed(&linking.phone);
    tracing::info!(device = %DeviceAddr::new(&linking.phone, linking.device).jid(), "linked");
    // WhatsApp restarts the stream so the device logs in with its new identity.
    let _ = conn.tx.send(Out::CloseWith(
        NodeBuilder::new("stream:error").attr("code", "515").build(),
    ));
    let _ = linking.done.send(Ok(()));
}
