//! Credentials: the cluster secret, the operator's token, password hashes (Argon2) and the
//! JWT that binds a user to one device. The controller issues tokens; nodes and the controller
//! check them. A token names its device's generation, and the store's device row must still be
//! active with that same generation: revoking a device bumps it, so its old tokens die at once
//! everywhere.
//!
//! Code map: [`secrets`] (the cluster secret, the operator's token), [`tokens`] (device-bound
//! JWTs), [`passwords`] (hashing, bounded, and login attempts that take as long whether or not
//! the user exists).

pub mod passwords;
pub mod secrets;
pub mod tokens;

pub use passwords::{HashCost, HashError, Passwords};
pub use secrets::{OPERATOR_TOKEN_ENV, OperatorToken, SECRET_ENV, Secret, SecretError};
pub use tokens::{AuthError, Claims, Principal, TOKEN_TTL_SECS, TokenKeys};
