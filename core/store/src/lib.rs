//! Everything Airlock keeps and how it is configured: the configuration file, the store
//! (SQLite or PostgreSQL: sessions, events, the audit chain, credentials sealed under the
//! master key, deliveries, triggers), and a session turn's plan.
//!
//! It never logs, returns or formats a credential value: those exist in clear only inside
//! [`secrets::SecretValue`], whose `Debug` is redacted.

pub mod config;
pub mod plan;
pub mod store;

pub use airlock_domain as domain;
pub use airlock_domain::{ids, render, secrets, timefmt};
pub use config::Config;
pub use store::{Store, StoreError};
