//! Airlock's sessions and sandboxes: the session service every surface goes through
//! ([`service`]), the broker that runs turns ([`broker`]), and the sandbox runtime
//! ([`sandbox`], [`docker`], [`image`]).
//!
//! The layers it stands on are crates of their own, re-exported here under their old paths:
//! `airlock-domain` (the vocabulary, no I/O), `airlock-store` (configuration and storage)
//! and `airlock-github` (the GitHub client). The gateway depends on those, not on this.

pub mod broker;
pub mod docker;
pub mod image;
pub mod messages;
pub mod output_log;
pub mod sandbox;
pub mod service;

// The layers below, under their old paths (`airlock_core::store::Store`, ...).
pub use airlock_github as github;
pub use airlock_store::{config, domain, ids, plan, render, secrets, store, timefmt};
pub use airlock_store::{Config, Store, StoreError};
