//! Pure types and rules: no IO, no sqlx, reqwest or axum. Everything here is parsed once at the
//! edge and trusted afterwards.

mod clip;
mod ids;
pub mod jid;
mod message;
mod outbound;
pub mod phone;
mod queue;
pub mod render;

pub use clip::{Clipped, clip};
pub use ids::{Incarnation, InvalidId, LocationId, is_id};
pub use message::{
    Content, InboundMessage, Media, MediaKind, MessageContext, OutgoingContent, Quote, QuoteAuthor, UNAVAILABLE_KIND,
    Unavailable,
};
pub use outbound::{Fetched, OutboundRequest, plan_parts};
pub use queue::{InboxState, OutboxState, PartStatus, UnknownState};
