//! Airlock's end-to-end tests, one module per capability, in one test binary: each module
//! used to be its own binary, and linking eighteen copies of the whole product (and compiling
//! the test helpers' generic code eighteen times) was a large part of the suite's build.
//! Run one module with `cargo test -p airlock-tests --test e2e -- slack::`.

mod abuse;
mod admin;
mod broker;
mod capacity;
mod cli;
mod discord;
mod engine;
mod gateway;
mod gateway_backlog;
mod gateway_limits;
mod gateway_proxy;
mod gateway_push_bytes;
mod github;
mod output;
mod readme;
mod repos;
mod sandboxd;
mod sandboxes;
mod service;
mod sessions;
mod sessions_cli;
mod slack;
mod surfaces;
mod triggers;
mod wall;
