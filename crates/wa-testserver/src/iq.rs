//! Answers to the client's `<iq>` requests. The parsers in wacore `src/iq/*.rs` are the spec of
//! each answer's shape. Requests the server has nothing to say about get an empty result, which
//! every one of the client's parsers accepts or logs and moves past.

use std::sync::Arc;

use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;

use crate::conn::{Conn, Who};
use crate::nodes::{attr, bytes, child, children, iq_result};
use crate::state::{SignedPreKey, Stats};
use crate::{Hub, media, pair_code, pairing, prekeys, usync};

pub async fn handle(hub: &Arc<Hub>, conn: &Conn, node: Node) {
    let id = attr(&node, "id").unwrap_or_default();
    let kind = attr(&node, "type").unwrap_or_default();
    let xmlns = attr(&node, "xmlns").unwrap_or_default();
    let first = children(&node).first().map(|c| c.tag.to_string()).unwrap_or_default();

    if kind == "result" || kind == "error" {
        // Answers to what the server asked; only the new device's answer to pair-success matters.
        if let Who::Unpaired(registration) = &conn.who {
            pairing::device_answered(hub, conn, &node, registration);
        }
        return;
    }
    let addr = match &conn.who {
        Who::Device(addr) => addr.clone(),
        Who::Unpaired(registration) if xmlns == "md" && first == "link_code_companion_reg" => {
            pair_code::handle(hub, conn, &node, registration);
            return;
        }
        // Otherwise an unpaired device only pings while it shows its codes.
        Who::Unpaired(_) => {
            conn.send(iq_result(&id, vec![]));
            return;
        }
    };
    let answer = match (xmlns.as_str(), first.as_str()) {
        ("md", "pair-device-sign") => {
            pairing::phone_confirmed(hub, conn, &node);
            return;
        }
        // The linked device unlinks itself (its client's logout): the server answers, then
        // removes it like the phone would, stream error included.
        ("md", "remove-companion-device") => {
            conn.send(iq_result(&id, vec![]));
            crate::faults::remove_linked(hub, &addr.user, Some(addr.device));
            return;
        }
        ("passive", "active") => {
            conn.send(iq_result(&id, vec![]));
            hub.went_active(&addr);
            return;
        }
        ("encrypt", "count") => {
            let count = hub
                .state
                .lock()
                .expect("state lock")
                .device(&addr)
                .map_or(0, |d| d.pre_keys.len());
            iq_result(
                &id,
                vec![NodeBuilder::new("count").attr("value", count.to_string()).build()],
            )
        }
        ("encrypt", "registration") => {
            prekeys::store_upload(hub, &addr, &node);
            iq_result(&id, vec![])
        }
        ("encrypt", "rotate") => {
            let skey = child(&node, "rotate")
                .and_then(|r| child(r, "skey"))
                .and_then(signed_pre_key);
            if let Some(device) = hub.state.lock().expect("state lock").device_mut(&addr) {
                device.signed_pre_key = skey.or(device.signed_pre_key.take());
            }
            iq_result(&id, vec![])
        }
        ("encrypt", "key") => {
            Stats::bump(&hub.stats.prekey_fetches);
            iq_result(&id, vec![prekeys::bundles(hub, child(&node, "key").expect("matched"))])
        }
        ("encrypt", "digest") => prekeys::digest(hub, &addr, &id),
        ("usync", "usync") => {
            Stats::bump(&hub.stats.usync_queries);
            let (answer, asked_own) = usync::answer(hub, &addr, child(&node, "usync").expect("matched"));
            conn.send(iq_result(&id, vec![answer]));
            hub.usync_answered(&addr, asked_own);
            return;
        }
        // No A/B experiments: an empty prop set under a stable hash.
        ("abt", "props") => iq_result(
            &id,
            vec![
                NodeBuilder::new("props")
                    .attr("protocol", "1")
                    .attr("hash", "wa-testserver")
                    .build(),
            ],
        ),
        // Everyone's defaults, read receipts on: the client sends `read` receipts.
        ("privacy", "privacy") => iq_result(
            &id,
            vec![
                NodeBuilder::new("privacy")
                    .children([NodeBuilder::new("category")
                        .attr("name", "readreceipts")
                        .attr("value", "all")
                        .build()])
                    .build(),
            ],
        ),
        ("w:m", "media_conn") => iq_result(&id, vec![media::media_conn(hub)]),
        ("w:sync:app:state", "sync") => iq_result(&id, vec![empty_collections(&node)]),
        _ => {
            tracing::debug!(%xmlns, %first, %kind, "answered with an empty result");
            iq_result(&id, vec![])
        }
    };
    conn.send(answer);
}

/// Parses an uploaded `<skey><id/><value/><signature/></skey>`.
pub fn signed_pre_key(node: &Node) -> Option<SignedPreKey> {
    let id = child(node, "id").and_then(bytes)?;
    Some(SignedPreKey {
        id: id.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)),
        public: child(node, "value").and_then(bytes)?.to_vec(),
        signature: child(node, "signature").and_then(bytes)?.to_vec(),
    })
}

/// App state: every collection the client asks for is empty at version 0, which the client
/// takes as synced. (Contacts, chat settings and the push name are not modelled.)
fn empty_collections(request: &Node) -> Node {
    let sync = child(request, "sync");
    let collections = sync.map(children).unwrap_or_default().iter().filter_map(|c| {
        let name = attr(c, "name")?;
        Some(
            NodeBuilder::new("collection")
                .attr("name", name)
                .attr("version", "0")
                .build(),
        )
    });
    NodeBuilder::new("sync")
        .children(collections.collect::<Vec<_>>())
        .build()
}
