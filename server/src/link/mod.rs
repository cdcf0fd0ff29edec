//! The node ↔ controller link of the embedded setup, where the controller hosts the registry
//! and the bus so that one machine needs nothing installed. [`hub`] is the controller's end,
//! [`client`] the node's; the frames are in `protocol::link`.

pub mod client;
pub mod hub;

pub use client::LinkClient;
pub use hub::{HubBus, LinkHub};
