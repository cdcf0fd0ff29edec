//! The chat client core (see the crate description).
