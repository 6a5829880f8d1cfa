//! Airlock's core: the domain model, configuration, storage, the session service every
//! surface goes through, the broker and the sandbox runtime.
//!
//! This crate owns every word of the domain (Human, Identity, Profile, Session, Event,
//! Credential, Trigger, Delivery, Audit) and every byte Airlock keeps. It never logs,
//! returns or formats a credential value: those exist in clear only inside
//! [`secrets::SecretValue`], whose `Debug` is redacted.

pub mod broker;
pub mod config;
pub mod docker;
pub mod domain;
pub mod github;
pub mod ids;
pub mod image;
pub mod messages;
pub mod output_log;
pub mod plan;
pub mod render;
pub mod sandbox;
pub mod secrets;
pub mod service;
pub mod store;
pub mod timefmt;

pub use config::Config;
pub use store::{Store, StoreError};
