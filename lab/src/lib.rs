//! Local cluster supervisor.
