//! Sandboxes: the runtime trait ([`runtime`]) and its providers (Docker in [`docker`], over
//! the engine connection in [`engine`]; an in-memory fake in `fake` with the feature
//! `fake-runtime`), the base image ([`image`]), the sandbox endpoint that sandboxd connects to
//! ([`hub`]), and the manager the broker uses ([`manager`]: starts, warm pools, snapshots,
//! reconciliation). It stands on `airlock-store` and the sandboxd protocol; it knows nothing
//! of sessions' turns (that is the broker's, in `airlock-core`).

pub mod docker;
pub mod engine;
#[cfg(feature = "fake-runtime")]
pub mod fake;
pub mod hub;
pub mod image;
pub mod manager;
pub mod runtime;

pub use engine::LABEL_MANAGED;
pub use hub::{ExecEvent, ExecRequest, ExecStream, Hub, HubError};
pub use manager::{Origin, Reconciled, SandboxError, SandboxSettings, Sandboxes};
pub use runtime::{ContainerSpec, Instance, Network, Runtime, RuntimeError};

/// The deployment a container, network or image belongs to.
pub const LABEL_DEPLOYMENT: &str = "org.airlock.deployment";
pub const LABEL_SANDBOX: &str = "org.airlock.sandbox";
pub const LABEL_SESSION: &str = "org.airlock.session";
pub const LABEL_PROFILE: &str = "org.airlock.profile";
pub const LABEL_PROFILE_VERSION: &str = "org.airlock.profile-version";
/// Who created a sandbox: a server id, or `cli`.
pub const LABEL_SERVER: &str = "org.airlock.server";
/// `session`, `warm` or `build`.
pub const LABEL_ROLE: &str = "org.airlock.role";
/// On snapshot images: `profile` or `session`.
pub const LABEL_SNAPSHOT: &str = "org.airlock.snapshot";
/// On profile snapshots: the hash of the base image and setup steps.
pub const LABEL_SETUP: &str = "org.airlock.setup";
