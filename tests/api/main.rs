//! The one integration-test binary: every test starts real parts (SQLite or PostgreSQL, the
//! HTTP server on a loopback port, the fake GHL) and checks what a client would observe.

mod attachments;
mod browser;
mod console;
mod ghl_page;
mod helpers;
mod hostile;
mod intake;
mod logs;
mod openapi;
mod outbound;
mod pairing;
mod phones;
#[cfg(feature = "wa-test-server")]
#[macro_use]
mod wa_rig;
#[cfg(feature = "wa-test-server")]
mod instances;
#[cfg(feature = "wa-test-server")]
mod real_transport;
mod recovery;
mod screens;
#[cfg(feature = "wa-test-server")]
mod wa_connection;
#[cfg(feature = "wa-test-server")]
mod wa_device_store;
#[cfg(feature = "wa-test-server")]
mod wa_kill;
#[cfg(feature = "wa-test-server")]
mod wa_kinds;
#[cfg(feature = "wa-test-server")]
mod wa_receives;
#[cfg(feature = "wa-test-server")]
mod wa_replies;
#[cfg(feature = "wa-test-server")]
mod wa_sends;
#[cfg(feature = "wa-test-server")]
mod wa_takeover;

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
