//! Airlock's sessions: the session service every surface goes through ([`service`], its
//! texts for people in [`messages`]) and the broker that runs each turn in a sandbox
//! ([`broker`], with the full output log of [`output_log`]).
//!
//! The layers it stands on are crates of their own: `airlock-domain` (the vocabulary, no
//! I/O), `airlock-store` (configuration and storage), `airlock-github` (the GitHub client) and
//! `airlock-sandbox` (runtimes, the sandbox endpoint, the manager). The first three are
//! re-exported here under their old paths; the gateway depends on them, not on this.

pub mod broker;
pub mod messages;
pub mod output_log;
pub mod service;

// The layers below, under their old paths (`airlock_core::store::Store`, ...).
pub use airlock_github as github;
pub use airlock_store::{config, domain, ids, plan, render, secrets, store, timefmt};
pub use airlock_store::{Config, Store, StoreError};
