//! The one integration-test binary: every test starts real parts (SQLite or PostgreSQL, the
//! HTTP server on a loopback port, the fake GHL) and checks what a client would observe.

mod attachments;
mod helpers;
mod hostile;
mod logs;
mod outbound;
mod pairing;
mod phones;
mod recovery;

mod crash;
mod daemon;
mod ghl;
mod health;
mod inbound;
mod sessions;
mod store;
mod supervision;
mod timeouts;
mod webhooks;
