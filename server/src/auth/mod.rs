//! Credentials: the cluster's two key rings (user tokens, node admission), the operator's
//! token, password hashes (Argon2) and the JWT that binds a user to one device. The controller
//! issues tokens; nodes and the controller check them. A token names its device's generation,
//! and the store's device row must still be active with that same generation: revoking a
//! device bumps it, so its old tokens die at once everywhere.
//!
//! Code map: [`keys`] (named keys in rings, derivation, the link's admission proof),
//! [`secrets`] (where the keys and the operator's token come from, what is refused, the
//! private data dir), [`tokens`] (device-bound JWTs naming their key), [`passwords`] (hashing,
//! bounded, and login attempts that take as long whether or not the user exists).

pub mod keys;
pub mod passwords;
pub mod secrets;
pub mod tokens;

pub use keys::{Key, KeyRing};
pub use passwords::{HashCost, HashError, Passwords};
pub use secrets::{
    ClusterKeys, NODE_KEYS_ENV, OPERATOR_TOKEN_ENV, OperatorToken, SECRET_ENV, SecretError,
    TOKEN_KEYS_ENV,
};
pub use tokens::{AuthError, Claims, Principal, TOKEN_TTL_SECS, TokenKeys};
