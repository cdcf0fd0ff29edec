//! Shared helpers for the process-level tests in `tests/tests/`.
