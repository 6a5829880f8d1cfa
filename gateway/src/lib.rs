//! The gateway: the egress proxy that is a sandbox's only way out.
//!
//! It authenticates each request with the session's egress token, matches it against the
//! session's routes, injects the route's credential at request time, scrubs that credential
//! from responses, meters model usage, and audits every request. Everything without a route is
//! refused. It never logs or returns a credential value, and never lets a request carrying a
//! stored credential value leave.
//!
//! Status: the boundary is fixed here; the proxy arrives with issue 4. Nothing in this crate
//! is wired into the server yet.
