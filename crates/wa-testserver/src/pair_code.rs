//! Linking a new device by pairing code ("link with phone number instead"). The new device
//! (whatsapp-rust's own `pair_code` flow) sends `companion_hello` with its ephemeral key
//! wrapped under the code; the phone, once the user types the code (`/_ctl/pair-code`),
//! answers with its own wrapped ephemeral key and identity (`primary_hello`); the device sends
//! its key bundle (`companion_finish`), from which both derive the new ADV secret; then
//! `pair-success` as for a QR scan.
//!
//! whatsapp-rust has no primary side for this flow, so the phone's steps are written here with
//! wacore's primitives, as the exact inverse of `PairCodeUtils::prepare_key_bundle`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use whatsapp_rust::wacore::crypto::hkdf_sha256_into;
use whatsapp_rust::wacore::libsignal::crypto::aes_256_gcm_decrypt;
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PublicKey};
use whatsapp_rust::wacore::pair_code::PairCodeUtils;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;

use crate::Hub;
use crate::conn::Conn;
use crate::nodes::{SERVER, attr, bytes, child, iq_error, iq_result, jid_attr, server_id};
use crate::pairing::{self, Registration, send_pair_success};
use crate::state::Out;

/// A device that asked for a pairing code, by the phone number it named.
struct Pending {
    conn: u64,
    tx: mpsc::UnboundedSender<Out>,
    registration: Arc<Registration>,
    wrapped_companion_ephemeral: Vec<u8>,
    pairing_ref: Vec<u8>,
    /// Set once the phone entered the code.
    entered: Option<Entered>,
}

struct Entered {
    primary_ephemeral: KeyPair,
    companion_ephemeral: [u8; 32],
    done: pairing::Done,
}

#[derive(Default)]
pub struct PairCodes {
    pending: Mutex<HashMap<String, Pending>>,
}

/// The new device's `<link_code_companion_reg>` iq, at either stage.
pub fn handle(hub: &Arc<Hub>, conn: &Conn, node: &Node, registration: &Arc<Registration>) {
    let id = attr(node, "id").unwrap_or_default();
    let Some(reg) = child(node, "link_code_companion_reg") else {
        return;
    };
    let Some(phone) = jid_attr(reg, "jid").map(|j| j.user.to_string()) else {
        conn.send(iq_error(&id, 400, "bad-request"));
        return;
    };
    match attr(reg, "stage").as_deref() {
        Some("companion_hello") => {
            let Some(wrapped) = child(reg, "link_code_pairing_wrapped_companion_ephemeral_pub").and_then(bytes) else {
                conn.send(iq_error(&id, 400, "bad-request"));
                return;
            };
            let pairing_ref: [u8; 16] = rand::random();
            let pairing_ref = format!("{:x}", u128::from_be_bytes(pairing_ref)).into_bytes();
            hub.pair_codes.pending.lock().expect("pair codes lock").insert(
                phone,
                Pending {
                    conn: conn.id,
                    tx: conn.tx.clone(),
                    registration: registration.clone(),
                    wrapped_companion_ephemeral: wrapped.to_vec(),
                    pairing_ref: pairing_ref.clone(),
                    entered: None,
                },
            );
            conn.send(iq_result(
                &id,
                vec![
                    NodeBuilder::new("link_code_companion_reg")
                        .children([NodeBuilder::new("link_code_pairing_ref").bytes(pairing_ref).build()])
                        .build(),
                ],
            ));
        }
        Some("companion_finish") => {
            conn.send(iq_result(&id, vec![]));
            let wrapped_bundle = child(reg, "link_code_pairing_wrapped_key_bundle")
                .and_then(bytes)
                .map(<[u8]>::to_vec);
            finish(hub, &phone, wrapped_bundle);
        }
        _ => conn.send(iq_error(&id, 400, "bad-request")),
    }
}

/// `/_ctl/pair-code`: the phone of `phone` enters `code`. Resolves once the device is linked.
pub async fn enter(hub: &Arc<Hub>, phone: &str, code: &str) -> Result<(), String> {
    let code: String = code.chars().filter(|c| *c != '-').collect();
    let phone_identity = {
        hub.peers.phone(hub, phone).await.map_err(|e| format!("{e:#}"))?;
        hub.peers.identity_of(phone).ok_or("the phone has no identity")?
    };
    let (done, finished) = oneshot::channel();
    {
        let mut pending = hub.pair_codes.pending.lock().expect("pair codes lock");
        let entry = pending
            .get_mut(phone)
            .ok_or("no device asked for a code for this number")?;
        // The wrapping is AES-CTR without a tag: a wrong code yields a wrong key, which the
        // key bundle's AES-GCM later refuses.
        let companion_ephemeral =
            PairCodeUtils::decrypt_primary_ephemeral_pub(&entry.wrapped_companion_ephemeral, &code)
                .map_err(|e| e.to_string())?;
        let primary_ephemeral = KeyPair::generate(&mut rand::rng());
        let public: [u8; 32] = primary_ephemeral
            .public_key
            .public_key_bytes()
            .try_into()
            .expect("32 bytes");
        let wrapped = PairCodeUtils::encrypt_ephemeral_pub(&public, &code);
        let hello = NodeBuilder::new("notification")
            .attr("from", SERVER)
            .attr("type", "link_code_companion_reg")
            .attr("id", server_id())
            .attr("t", crate::state::now().to_string())
            .children([NodeBuilder::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(wrapped.to_vec())
                        .build(),
                    NodeBuilder::new("primary_identity_pub")
                        .bytes(phone_identity.public_key.public_key_bytes().to_vec())
                        .build(),
                    NodeBuilder::new("link_code_pairing_ref")
                        .bytes(entry.pairing_ref.clone())
                        .build(),
                ])
                .build()])
            .build();
        let _ = entry.tx.send(Out::Node(hello));
        entry.entered = Some(Entered {
            primary_ephemeral,
            companion_ephemeral,
            done,
        });
    }
    pairing::outcome(finished).await
}

/// The device's key bundle: open it as the phone would, derive the ADV secret the device
/// derived, and link the device.
fn finish(hub: &Arc<Hub>, phone: &str, wrapped_bundle: Option<Vec<u8>>) {
    let Some(pending) = hub.pair_codes.pending.lock().expect("pair codes lock").remove(phone) else {
        return;
    };
    let Some(entered) = pending.entered else {
        return;
    };
    let Some(phone_identity) = hub.peers.identity_of(phone) else {
        let _ = entered.done.send(Err("the phone has no identity".into()));
        return;
    };
    match open_bundle(&entered, &phone_identity, wrapped_bundle.as_deref()) {
        Ok(adv_secret) => send_pair_success(
            hub,
            phone,
            pending.conn,
            &pending.tx,
            &pending.registration,
            &adv_secret,
            entered.done,
        ),
        Err(reason) => {
            let _ = entered.done.send(Err(reason));
        }
    }
}

/// The inverse of `PairCodeUtils::prepare_key_bundle`: salt(32) ‖ iv(12) ‖ AES-GCM of
/// companion identity(32) ‖ primary identity(32) ‖ random(32).
fn open_bundle(entered: &Entered, phone_identity: &KeyPair, wrapped: Option<&[u8]>) -> Result<[u8; 32], String> {
    let wrapped = wrapped
        .filter(|w| w.len() == 32 + 12 + 96 + 16)
        .ok_or("malformed key bundle")?;
    let companion_ephemeral =
        PublicKey::from_djb_public_key_bytes(&entered.companion_ephemeral).map_err(|e| e.to_string())?;
    let ephemeral_shared = entered
        .primary_ephemeral
        .private_key
        .calculate_agreement(&companion_ephemeral)
        .map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    hkdf_sha256_into(
        &ephemeral_shared,
        Some(&wrapped[..32]),
        b"link_code_pairing_key_bundle_encryption_key",
        &mut key,
    )
    .map_err(|e| e.to_string())?;
    let iv: [u8; 12] = wrapped[32..44].try_into().expect("12 bytes");
    let mut bundle = Vec::new();
    aes_256_gcm_decrypt(&key, &iv, b"", &wrapped[44..], &mut bundle)
        .map_err(|_| "the key bundle does not open: wrong code".to_string())?;
    let companion_identity = PublicKey::from_djb_public_key_bytes(&bundle[..32]).map_err(|e| e.to_string())?;
    let identity_shared = phone_identity
        .private_key
        .calculate_agreement(&companion_identity)
        .map_err(|e| e.to_string())?;
    let secret = [&ephemeral_shared[..], &identity_shared[..], &bundle[64..96]].concat();
    let mut adv_secret = [0u8; 32];
    hkdf_sha256_into(&secret, None, b"adv_secret", &mut adv_secret).map_err(|e| e.to_string())?;
    Ok(adv_secret)
}

impl PairCodes {
    /// The device behind `conn` went away.
    pub fn forget(&self, conn: u64) {
        self.pending
            .lock()
            .expect("pair codes lock")
            .retain(|_, p| p.conn != conn);
    }
}
