//! The sandbox protocol, shared by sandboxd (inside each sandbox) and the server.

pub mod outbox;
pub mod proto;
