//! The chat cluster's server side: the controller (accounts, conversations, attachments, the
//! least-loaded answer) and the chat node (WebSocket sessions, persistence, cross-node
//! delivery), with the backends they stand on.
//!
//! Code map:
//! - [`store`]: history and accounts behind the `Store` trait (SQLite embedded, PostgreSQL).
//! - [`registry`]: nodes, leases, loads and user locations behind the `Registry` trait.
//! - [`bus`]: envelopes between nodes behind the `Bus` trait.
//! - [`backends`]: choosing those implementations from URLs.
//! - [`link`]: the node ↔ controller link of the embedded setup (registry and bus in the
//!   controller).
//! - [`sealed`]: the node-admission key's MACs over every bus envelope and registry node
//!   entry, one layer above all backends.
//! - [`route`]: recipients → target nodes → publishes.
//! - [`recovery`]: publishing again what a dead node may not have published.
//! - [`node`]: the chat node (sessions, delivery order, group commit, publisher).
//! - [`controller`]: the controller's HTTP API and its background tasks.
//! - [`auth`]: the key rings, the operator's token, password hashes and device-bound tokens.
//! - [`conn`]: the accepted TCP connections (no Nagle delay; a reset instead of a close).
//! - [`serve`]: the HTTP server loop over them (a deadline on request heads).
//! - [`limit`]: token buckets (a device's frames, the controller's login throttles).
//! - [`teaching`]: the switches that break a guarantee on purpose, for the lab's lessons.
//! - [`ids`]: clocks and Snowflake ids; [`metrics`]: Prometheus; [`trace`]: hop events.
pub mod auth;
pub mod backends;
pub mod bus;
pub mod conn;
pub mod controller;
pub mod ids;
pub mod limit;
pub mod link;
pub mod metrics;
pub mod node;
pub mod recovery;
pub mod registry;
pub mod route;
pub mod sealed;
pub mod serve;
pub mod store;
pub mod teaching;
pub mod trace;
