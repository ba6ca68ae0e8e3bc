//! Signal prekeys on the server: devices upload their bundle, other clients fetch it to open a
//! session (each fetch consumes one one-time prekey, as on WhatsApp), and a device can ask for
//! a digest of what the server holds to check it.

use whatsapp_rust::wacore::prekeys::compute_key_bundle_digest;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;

use crate::Hub;
use crate::iq::signed_pre_key;
use crate::nodes::{addr_of, bytes, child, children, iq_error, iq_result, jid_attr};
use crate::state::{DeviceAddr, SignedPreKey};

/// `<iq xmlns="encrypt" type="set"><registration/><type/><identity/><list/><skey/></iq>`
pub fn store_upload(hub: &Hub, addr: &DeviceAddr, node: &Node) {
    let keys: Vec<(u32, Vec<u8>)> = child(node, "list")
        .map(children)
        .unwrap_or_default()
        .iter()
        .filter_map(|key| {
            let id = child(key, "id").and_then(bytes)?;
            let value = child(key, "value").and_then(bytes)?;
            Some((be(id), value.to_vec()))
        })
        .collect();
    let registration = child(node, "registration").and_then(bytes).map(be);
    let identity = child(node, "identity").and_then(bytes).map(<[u8]>::to_vec);
    let skey = child(node, "skey").and_then(signed_pre_key);
    let mut state = hub.state.lock().expect("state lock");
    let Some(device) = state.device_mut(addr) else {
        return;
    };
    if let Some(registration) = registration {
        device.registration_id = registration;
    }
    if let Some(identity) = identity {
        device.identity = identity;
    }
    if skey.is_some() {
        device.signed_pre_key = skey;
    }
    device.pre_keys.extend(keys);
}

/// The answer to a bundle fetch: `<list><user jid=…>bundle</user>…</list>`, with an
/// `<error code="404"/>` for a device the server does not know.
pub fn bundles(hub: &Hub, request: &Node) -> Node {
    let mut state = hub.state.lock().expect("state lock");
    let users = children(request)
        .iter()
        .filter_map(|user| jid_attr(user, "jid"))
        .map(|jid| {
            let found = addr_of(&jid).and_then(|addr| {
                let phone = state.resolve_user(&addr.user)?;
                let device = state.device_mut(&DeviceAddr::new(phone, addr.device))?;
                let skey = device.signed_pre_key.clone()?;
                let one_time = device.pre_keys.pop_front();
                Some(bundle_children(
                    device.registration_id,
                    &device.identity,
                    &skey,
                    one_time,
                    device.device_identity.clone(),
                ))
            });
            let builder = NodeBuilder::new("user").attr("jid", jid.to_string());
            match found {
                Some(children) => builder.children(children).build(),
                None => builder
                    .children([NodeBuilder::new("error")
                        .attr("code", "404")
                        .attr("text", "item-not-found")
                        .build()])
                    .build(),
            }
        })
        .collect::<Vec<_>>();
    NodeBuilder::new("list").children(users).build()
}

fn bundle_children(
    registration_id: u32,
    identity: &[u8],
    skey: &SignedPreKey,
    one_time: Option<(u32, Vec<u8>)>,
    device_identity: Option<Vec<u8>>,
) -> Vec<Node> {
    let mut nodes = vec![
        NodeBuilder::new("registration")
            .bytes(registration_id.to_be_bytes().to_vec())
            .build(),
        NodeBuilder::new("type").bytes(vec![5]).build(),
        NodeBuilder::new("identity").bytes(identity.to_vec()).build(),
        NodeBuilder::new("skey")
            .children([
                NodeBuilder::new("id").bytes(be3(skey.id)).build(),
                NodeBuilder::new("value").bytes(skey.public.clone()).build(),
                NodeBuilder::new("signature").bytes(skey.signature.clone()).build(),
            ])
            .build(),
    ];
    if let Some((id, value)) = one_time {
        nodes.push(
            NodeBuilder::new("key")
                .children([
                    NodeBuilder::new("id").bytes(be3(id)).build(),
                    NodeBuilder::new("value").bytes(value).build(),
                ])
                .build(),
        );
    }
    if let Some(device_identity) = device_identity {
        nodes.push(NodeBuilder::new("device-identity").bytes(device_identity).build());
    }
    nodes
}

/// `<digest>`: what the server holds for the asking device, with the SHA-1 the client compares
/// against its own keys (`compute_key_bundle_digest`). 404 when it holds nothing, which makes
/// the client upload again.
pub fn digest(hub: &Hub, addr: &DeviceAddr, id: &str) -> Node {
    let state = hub.state.lock().expect("state lock");
    let Some((device, skey)) = state.device(addr).and_then(|d| Some((d, d.signed_pre_key.clone()?))) else {
        return iq_error(id, 404, "item-not-found");
    };
    let publics: Vec<&[u8]> = device.pre_keys.iter().map(|(_, v)| v.as_slice()).collect();
    let hash = compute_key_bundle_digest(&device.identity, &skey.public, &skey.signature, &publics);
    let ids = device
        .pre_keys
        .iter()
        .map(|(id, _)| NodeBuilder::new("id").bytes(be3(*id)).build());
    iq_result(
        id,
        vec![
            NodeBuilder::new("digest")
                .children([
                    NodeBuilder::new("registration")
                        .bytes(device.registration_id.to_be_bytes().to_vec())
                        .build(),
                    NodeBuilder::new("type").bytes(vec![5]).build(),
                    NodeBuilder::new("identity").bytes(device.identity.clone()).build(),
                    NodeBuilder::new("skey")
                        .children([
                            NodeBuilder::new("id").bytes(be3(skey.id)).build(),
                            NodeBuilder::new("value").bytes(skey.public.clone()).build(),
                            NodeBuilder::new("signature").bytes(skey.signature.clone()).build(),
                        ])
                        .build(),
                    NodeBuilder::new("list").children(ids.collect::<Vec<_>>()).build(),
                    NodeBuilder::new("hash").bytes(hash).build(),
                ])
                .build(),
        ],
    )
}

fn be(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b))
}

fn be3(n: u32) -> Vec<u8> {
    n.to_be_bytes()[1..].to_vec()
}
