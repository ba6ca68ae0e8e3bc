//! usync, WhatsApp's user lookup: whether a phone number is on WhatsApp (`contact`), which
//! devices an account has (`devices`, with the signed key-index list the client requires for
//! companion devices) and its LID (`lid`). Other protocols are left out of the answer, which
//! the client's parser (wacore `iq/usync/query.rs`) treats as "nothing known".

use std::sync::Arc;

use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore_binary::Node;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::waproto::whatsapp as wa;

use crate::Hub;
use crate::nodes::{attr, child, children, jid_attr, text};
use crate::state::{Account, DeviceAddr, State, Stats};

/// The answer, and whether the asker asked about its own account.
pub fn answer(hub: &Arc<Hub>, asker: &DeviceAddr, usync: &Node) -> (Node, bool) {
    let protocols: Vec<String> = child(usync, "query")
        .map(children)
        .unwrap_or_default()
        .iter()
        .map(|p| p.tag.to_string())
        .collect();
    if protocols.iter().any(|p| p == "contact") {
        Stats::bump(&hub.stats.contact_lookups);
    }
    let state = hub.state.lock().expect("state lock");
    let asked = child(usync, "list").map(children).unwrap_or_default();
    let asked_own = asked.iter().any(|user| {
        jid_attr(user, "jid")
            .and_then(|j| state.resolve_user(&j.user))
            .as_deref()
            == Some(asker.user.as_str())
    });
    let users: Vec<Node> = asked.iter().map(|user| answer_user(&state, user, &protocols)).collect();
    let mut builder = NodeBuilder::new("usync");
    for key in ["sid", "mode", "context", "index", "last"] {
        if let Some(value) = attr(usync, key) {
            builder = builder.attr(key, value);
        }
    }
    let result = NodeBuilder::new("result")
        .children(protocols.iter().map(|p| NodeBuilder::new_dynamic(p.clone()).build()))
        .build();
    let node = builder
        .children([result, NodeBuilder::new("list").children(users).build()])
        .build();
    (node, asked_own)
}

fn answer_user(state: &State, user: &Node, protocols: &[String]) -> Node {
    // A user is named by its JID (phone or LID) or, in a contact query, by its phone number.
    let named = jid_attr(user, "jid");
    let contact = child(user, "contact").and_then(text);
    let phone = match (&named, &contact) {
        (Some(jid), _) => state.resolve_user(&jid.user),
        (None, Some(number)) => {
            let digits: String = number.chars().filter(char::is_ascii_digit).collect();
            state.accounts.contains_key(&digits).then_some(digits)
        }
        (None, None) => None,
    };
    let account = phone.as_ref().and_then(|p| state.accounts.get(p).map(|a| (p, a)));
    let jid = match (&account, &named) {
        (Some((phone, _)), None) => Some(format!("{phone}@s.whatsapp.net")),
        (_, Some(jid)) => Some(jid.to_string()),
        (None, None) => None,
    };
    let mut builder = NodeBuilder::new("user");
    if let Some(jid) = jid {
        builder = builder.attr("jid", jid);
    }
    let mut results = Vec::new();
    for protocol in protocols {
        match (protocol.as_str(), &account) {
            ("contact", _) => {
                let kind = if account.is_some() { "in" } else { "out" };
                let mut node = NodeBuilder::new("contact").attr("type", kind);
                if let Some(number) = &contact {
                    node = node.string_content(number.as_str());
                }
                results.push(node.build());
            }
            ("devices", Some((_, account))) => results.push(devices(account)),
            ("lid", Some((_, account))) => {
                results.push(
                    NodeBuilder::new("lid")
                        .attr("val", format!("{}@lid", account.lid))
                        .build(),
                );
            }
            _ => {}
        }
    }
    builder.children(results).build()
}

/// `<devices><device-list><device id key-index/>…</device-list><key-index-list ts>…`
fn devices(account: &Account) -> Node {
    let list = account.devices.iter().map(|(id, device)| {
        let mut node = NodeBuilder::new("device").attr("id", id.to_string());
        if *id != 0 {
            node = node.attr("key-index", device.key_index.to_string());
        }
        node.build()
    });
    let mut nodes = vec![
        NodeBuilder::new("device-list")
            .children(list.collect::<Vec<_>>())
            .build(),
    ];
    if account.devices.len() > 1 {
        nodes.push(
            NodeBuilder::new("key-index-list")
                .attr("ts", account.devices_changed_at.to_string())
                .bytes(key_index_list(account))
                .build(),
        );
    }
    NodeBuilder::new("devices").children(nodes).build()
}

/// The account's signed list of valid companion key indexes. The client reads it to keep only
/// current companions (wacore `adv.rs`); it does not check the signature.
pub fn key_index_list(account: &Account) -> Vec<u8> {
    let valid: Vec<u32> = account
        .devices
        .iter()
        .filter(|(id, _)| **id != 0)
        .map(|(_, d)| d.key_index)
        .collect();
    let details = wa::ADVKeyIndexList {
        raw_id: Some(1),
        timestamp: Some(account.devices_changed_at as u64),
        current_index: valid.iter().copied().max(),
        valid_indexes: valid,
        ..Default::default()
    }
    .encode_to_vec();
    wa::ADVSignedKeyIndexList {
        details: Some(details),
        ..Default::default()
    }
    .encode_to_vec()
}
