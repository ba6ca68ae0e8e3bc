//! The test server's tests, one binary: unmodified whatsapp-rust clients pair with the server,
//! exchange messages and media through it and meet its faults; and the binary's own contract.
//! One binary, not one per file: each links the whole client (~70 MB), and CI's disk and
//! link time pay for every copy.

mod binary;
mod common;
mod faults;
mod hard_cases;
mod lid;
mod media;
mod messages;
mod pairing;
mod redelivery;
