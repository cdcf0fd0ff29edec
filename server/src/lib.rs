//! The chat cluster's server side: the controller (accounts, conversations, attachments, the
//! least-loaded answer) and the chat node (WebSocket sessions, persistence, cross-node
//! delivery), with the backends they stand on.
//!
//! Code map:
//! - [`store`]: history and accounts behind the `Store` trait (SQLite embedded, PostgreSQL).
//! - [`registry`]: nodes, leases, loads and user locations behind the `Registry` trait.
//! - [`bus`]: envelopes between nodes behind the `Bus` trait.
pub mod bus;
pub mod registry;
pub mod store;
