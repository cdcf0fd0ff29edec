//! The cluster's two signing keys, each a ring of named keys so that it can rotate: the
//! user-token key (it signs and checks the devices' tokens) and the node-admission key (it
//! admits nodes to the controller's link and authenticates what nodes leave on the bus and in
//! the registry). They are separate so that each can be rotated, and leak, on its own: the
//! node key travels to brokers' neighbourhoods and the link, the token key only signs.
//!
//! A ring is written `ID:KEY[,ID:KEY…]` (or one `ID:KEY` a line): the first key signs, every
//! key is accepted. Rotating is adding a new key in front, restarting the processes one by
//! one, and dropping the old key once what it signed has expired. A token names its key's id
//! (`kid`), so a rotation signs nobody out.

use std::sync::Arc;

use ring::hmac;

use super::secrets::{SecretError, check_strength};

/// One named key.
#[derive(Clone)]
pub struct Key {
    id: Arc<str>,
    bytes: Arc<[u8]>,
    mac: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, ..)", self.id)
    }
}

impl Key {
    fn new(id: &str, bytes: &[u8]) -> Key {
        Key {
            id: Arc::from(id),
            bytes: Arc::from(bytes),
            mac: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Its id, as tokens and sealed envelopes name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// HMAC-SHA256 of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.mac);
        for p in parts {
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// A ring of keys for one purpose: the first signs, all are accepted.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Arc<[Key]>,
}

/// Whether a key id is one a ring may hold: 1 to 32 ASCII letters, digits, `-` or `_`.
fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl KeyRing {
    /// Reads `ID:KEY[,ID:KEY…]` (commas or newlines between keys). Every key must be strong
    /// (see [`check_strength`]); `what` names the setting in errors.
    pub fn parse(spec: &str, what: &str) -> Result<KeyRing, SecretError> {
        let mut keys: Vec<Key> = Vec::new();
        for item in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some((id, key)) = item.split_once(':') else {
                return Err(SecretError::Format {
                    what: what.to_owned(),
                    why: "each key is written ID:KEY".into(),
                });
            };
            let (id, key) = (id.trim(), key.trim());
            if !valid_id(id) {
                return Err(SecretError::Format {
                    what: what.to_owned(),
                    why: format!("key id {id:?} is not 1-32 letters, digits, '-' or '_'"),
                });
            }
            if keys.iter().any(|k| k.id() == id) {
                return Err(SecretError::Format {
                    what: what.to_owned(),
                    why: format!("key id {id:?} appears twice"),
                });
            }
            check_strength(&format!("{what} (key {id})"), key)?;
            keys.push(Key::new(id, key.as_bytes()));
        }
        if keys.is_empty() {
            return Err(SecretError::Format {
                what: what.to_owned(),
                why: "no key".into(),
            });
        }
        Ok(KeyRing { keys: keys.into() })
    }

    /// A ring of one key derived from a master secret for one `purpose` (HMAC-SHA256 of the
    /// purpose under the master): two purposes give unrelated keys, and neither gives the
    /// master back. The id is a fingerprint of the derived key, so a new master is a new id.
    pub fn derive(master: &[u8], purpose: &str) -> KeyRing {
        let derived = Key::new("-", master).mac(&[b"chat key derivation v1\0", purpose.as_bytes()]);
        let print = Key::new("-", &derived).mac(&[b"chat key id"]);
        let id: String = print[..4].iter().map(|b| format!("{b:02x}")).collect();
        KeyRing {
            keys: Arc::from([Key::new(&format!("d{id}"), &derived)]),
        }
    }

    /// The key that signs.
    pub fn current(&self) -> &Key {
        // A ring is never empty: `parse` refuses that and `derive` makes one key.
        &self.keys[0]
    }

    /// The key with this id, if the ring holds it.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Every key, the signing one first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether `tag` is the MAC of `parts` under the key named `id`, compared in constant
    /// time.
    pub fn verify(&self, id: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        let Some(key) = self.get(id) else {
            return false;
        };
        let want = key.mac(parts);
        want.len() == tag.len() && want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// How long a node's link admission proof stays good, either side of the controller's clock.
pub const ADMISSION_WINDOW_SECS: i64 = 120;

const ADMISSION_DOMAIN: &[u8] = b"chat link admission v1\0";

/// A node's proof that it holds the node-admission key, for the link's `Authorization:
/// Bearer`: `KID.UNIX_SECONDS.HEX_MAC`. The key itself never travels.
pub fn admission_proof(ring: &KeyRing, now_secs: i64) -> String {
    let key = ring.current();
    let ts = now_secs.to_string();
    let mac = key.mac(&[ADMISSION_DOMAIN, ts.as_bytes()]);
    format!("{}.{ts}.{}", key.id(), hex(&mac))
}

/// Whether `proof` is an [`admission_proof`] under a key of `ring`, made within
/// [`ADMISSION_WINDOW_SECS`] of `now_secs`.
pub fn admits(ring: &KeyRing, proof: &str, now_secs: i64) -> bool {
    let mut it = proof.splitn(3, '.');
    let (Some(id), Some(ts), Some(mac)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let Ok(at) = ts.parse::<i64>() else {
        return false;
    };
    if (now_secs - at).abs() > ADMISSION_WINDOW_SECS {
        return false;
    }
    let Some(tag) = unhex(mac) else {
        return false;
    };
    ring.verify(id, &[ADMISSION_DOMAIN, ts.as_bytes()], &tag)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "k1:4f9c2d7a1b8e6f3c0a5d9e2b7c4f1a8d";
    const B: &str = "k2:9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";

    #[test]
    fn rings_read_ids_and_keys_and_the_first_signs() {
        let ring = KeyRing::parse(&format!("{B},{A}"), "CHAT_TOKEN_KEYS").expect("ring");
        assert_eq!(ring.current().id(), "k2");
        assert!(ring.get("k1").is_some());
        assert!(ring.get("k3").is_none());
        let lines = KeyRing::parse(&format!("{B}\n{A}\n"), "x").expect("lines");
        assert_eq!(lines.keys().len(), 2);
        for bad in [
            "",
            "nocolon",
            "k 1:4f9c2d7a1b8e6f3c0a5d9e2b7c4f1a8d",
            &format!("{A},{A}"),
        ] {
            assert!(KeyRing::parse(bad, "x").is_err(), "{bad:?}");
        }
        assert!(matches!(
            KeyRing::parse("k1:short", "x"),
            Err(SecretError::Weak { .. })
        ));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_master() {
        let t = KeyRing::derive(b"master", "tokens");
        let n = KeyRing::derive(b"master", "nodes");
        assert_ne!(t.current().bytes(), n.current().bytes());
        assert_ne!(t.current().id(), n.current().id());
        let t2 = KeyRing::derive(b"master", "tokens");
        assert_eq!(
            (t.current().id(), t.current().bytes()),
            (t2.current().id(), t2.current().bytes())
        );
        assert_ne!(t.current().bytes(), b"master");
    }

    #[test]
    fn admission_proofs_need_a_key_of_the_ring_and_a_recent_time() {
        let ring = KeyRing::parse(A, "x").expect("ring");
        let other = KeyRing::parse(B, "x").expect("ring");
        let now = 1_700_000_000;
        let proof = admission_proof(&ring, now);
        assert!(!proof.contains("4f9c2d7a"), "the key itself never travels");
        assert!(admits(&ring, &proof, now + 5));
        assert!(!admits(&ring, &proof, now + ADMISSION_WINDOW_SECS + 1));
        assert!(!admits(&other, &proof, now));
        assert!(!admits(&ring, "k1.1700000000.00", now));
        assert!(!admits(&ring, "garbage", now));
        // After a rotation the old key still admits, the new one signs.
        let rotated = KeyRing::parse(&format!("{B},{A}"), "x").expect("ring");
        assert!(admits(&rotated, &proof, now));
        assert!(admission_proof(&rotated, now).starts_with("k2."));
    }
}
