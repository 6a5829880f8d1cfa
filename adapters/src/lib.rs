//! Adapters: GitHub (octocrab), Slack (slack-morphism) and Discord (serenity).
//!
//! Each adapter verifies an inbound request before anything parses its body, stores it (so a
//! replay is recognised and nothing is lost), answers at once, then turns it into one typed
//! request for the core: the Human behind the account ([`identity`]), checked for
//! permission, becomes the requester of a session ([`requests`]). Session status goes back to
//! the thread through the outbox ([`notify`]), rendered per surface ([`status`]). An adapter
//! never acts for an account that is not linked to a human and never reads an unverified body.

pub mod chat;
/// The command language (its own crate, `adapters/command`, so its fuzz target builds only it).
pub use airlock_command as command;
pub mod discord;
pub mod github;
pub mod identity;
pub mod inbound;
pub mod notify;
pub mod requests;
pub mod room;
pub mod slack;
pub mod status;
pub mod triggers;
pub mod verify;
