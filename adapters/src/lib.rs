//! Adapters: Slack (slack-morphism), GitHub (octocrab) and Discord (serenity).
//!
//! Each adapter verifies an inbound request before anything parses its body, turns it into one
//! typed request for the core, finds the Human behind the account, and renders session events
//! back into its surface. An adapter never acts for an account that is not linked to a human
//! and never sees an unverified body.
//!
//! Status: the boundary is fixed here; the adapters arrive with issues 6 (GitHub) and
//! 7 (Slack, Discord). Nothing in this crate is wired into the server yet.
