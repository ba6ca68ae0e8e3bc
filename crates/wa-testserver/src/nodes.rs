//! Small helpers over whatsapp-rust's binary nodes: reading attributes and children, building the
//! few stanza shapes every handler answers with.

use std::sync::atomic::{AtomicU64, Ordering};

use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};

use crate::state::DeviceAddr;

pub const SERVER: &str = "s.whatsapp.net";

pub fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.as_str().into_owned())
}

pub fn jid_attr(node: &Node, key: &str) -> Option<Jid> {
    node.attrs.get(key).and_then(|v| v.to_jid())
}

pub fn child<'a>(node: &'a Node, tag: &str) -> Option<&'a Node> {
    node.get_optional_child(tag)
}

pub fn children(node: &Node) -> &[Node] {
    node.children().unwrap_or_default()
}

pub fn bytes(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(b)) => Some(b),
        _ => None,
    }
}

pub fn text(node: &Node) -> Option<String> {
    match &node.content {
        Some(NodeContent::String(s)) => Some(s.to_string()),
        Some(NodeContent::Bytes(b)) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// The address of a device JID; `None` for anything that is not a user's device (groups,
/// broadcasts, the server).
pub fn addr_of(jid: &Jid) -> Option<DeviceAddr> {
    if jid.user.is_empty() || !(jid.is_pn() || jid.is_lid()) {
        return None;
    }
    Some(DeviceAddr::new(jid.user.to_string(), jid.device))
}

/// `<iq type="result" id=… from="s.whatsapp.net">children</iq>`
pub fn iq_result(id: &str, children: Vec<Node>) -> Node {
    let builder = NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "result")
        .attr("id", id);
    if children.is_empty() {
        builder.build()
    } else {
        builder.children(children).build()
    }
}

/// `<iq type="error">` with WhatsApp's `<error code text/>` child.
pub fn iq_error(id: &str, code: u16, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "error")
        .attr("id", id)
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text)
            .build()])
        .build()
}

/// An id for a stanza the server originates.
pub fn server_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("srv-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
