//! The envelope one node publishes on the bus for the others.
//!
//! An envelope is a small JSON header (who sent it, to which users, what it is) followed by the
//! exact bytes of the [`crate::ws::ServerFrame`] the receiving nodes hand to their devices. The
//! frame is serialized once, by the node that accepted the message, and never parsed again on
//! the way: receivers read the header, look up local devices of the recipients, and share the
//! frame bytes among them.
//!
//! Layout: `0xCB 0x01`, header length as u32 big-endian, header JSON, frame bytes.
//!
//! On the bus an envelope travels sealed ([`Sealed`]): `0xCB 0x53`, the length of a key id
//! (one byte), the key id, a 32-byte MAC, then the envelope. The MAC is HMAC-SHA256 under the
//! cluster's node-admission key named by the id, over [`SEAL_DOMAIN`] and the envelope; a
//! receiver drops whatever does not check. (The server computes it: this crate has no keys.)

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::{ConvId, DeviceId, MessageId, Millis, NodeId, Seq, UserId};

const MAGIC: [u8; 2] = [0xCB, 0x01];
const PREFIX_LEN: usize = MAGIC.len() + 4;

/// Largest header accepted when decoding (recipient lists of very large rooms fit easily).
pub const MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;

/// Which nodes a node publishes an event to: the server's `--routing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Only the nodes holding a device of a recipient.
    #[default]
    Routed,
    /// Every node, as the design this project started from did.
    Fanout,
}

impl Routing {
    /// `routed` or `fanout`, as `--routing` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Routed => "routed",
            Routing::Fanout => "fanout",
        }
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Routing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "routed" => Ok(Routing::Routed),
            "fanout" => Ok(Routing::Fanout),
            other => Err(format!("unknown routing {other:?} (routed or fanout)")),
        }
    }
}

const SEAL_MAGIC: [u8; 2] = [0xCB, 0x53];

/// Length of a sealed envelope's MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// What the MAC of a sealed envelope covers before the envelope itself, so that a MAC made for
/// anything else under the same key is never a valid seal.
pub const SEAL_DOMAIN: &[u8] = b"chat bus envelope v1\0";

/// An envelope as it travels on the bus: sealed by a key of the node-admission ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the key that made the MAC.
    pub key_id: String,
    /// The MAC.
    pub mac: [u8; MAC_LEN],
    /// The encoded [`Envelope`] (zero-copy slice when read).
    pub envelope: Bytes,
}

impl Sealed {
    /// Frames a sealed envelope for the bus. Key ids are at most 255 bytes (the server's are
    /// at most 32).
    pub fn encode(key_id: &str, mac: &[u8; MAC_LEN], envelope: &[u8]) -> Bytes {
        let id = &key_id.as_bytes()[..key_id.len().min(255)];
        let mut out = BytesMut::with_capacity(3 + id.len() + MAC_LEN + envelope.len());
        out.put_slice(&SEAL_MAGIC);
        out.put_u8(id.len() as u8);
        out.put_slice(id);
        out.put_slice(mac);
        out.put_slice(envelope);
        out.freeze()
    }

    /// Reads a sealed envelope (its MAC is not checked here).
    pub fn decode(bytes: Bytes) -> Result<Sealed, EnvelopeError> {
        if bytes.len() < 3 || bytes[..2] != SEAL_MAGIC {
            return Err(EnvelopeError::Framing("not sealed"));
        }
        let id_len = bytes[2] as usize;
        let mac_at = 3 + id_len;
        let body_at = mac_at + MAC_LEN;
        if bytes.len() < body_at {
            return Err(EnvelopeError::Framing("seal past the end"));
        }
        let key_id = std::str::from_utf8(&bytes[3..mac_at])
            .map_err(|_| EnvelopeError::Framing("key id is not UTF-8"))?
            .to_owned();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[mac_at..body_at]);
        Ok(Sealed {
            key_id,
            mac,
            envelope: bytes.slice(body_at..),
        })
    }
}

/// What an envelope is about and who it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusHeader {
    /// The node that published it.
    pub origin: NodeId,
    /// When the origin published it (for latency figures).
    pub sent_at: Millis,
    /// The users whose devices get the frame. Membership was checked by the origin.
    pub recipients: Vec<UserId>,
    /// What it carries.
    pub kind: BusKind,
}

/// The kinds of envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusKind {
    /// A persisted conversation event; the frame is its `event` frame. Receivers deliver it in
    /// `seq` order per device, drop repeats, and fetch any gap from the store.
    Event {
        /// The conversation.
        conv: ConvId,
        /// The event's position.
        seq: Seq,
        /// The event's id.
        id: MessageId,
    },
    /// A live-only frame (typing, read marker, presence): delivered as it is, not replayed.
    Live,
    /// A device was revoked: close its sessions. No frame.
    Revoke {
        /// Whose device.
        user: UserId,
        /// Which device.
        device: DeviceId,
    },
}

/// A header and the frame it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Routing and bookkeeping.
    pub header: BusHeader,
    /// The frame for devices (empty for [`BusKind::Revoke`]).
    pub frame: Bytes,
}

/// Why bytes from the bus are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short, wrong magic, or a length past the end.
    #[error("not an envelope: {0}")]
    Framing(&'static str),
    /// The header is not valid JSON of the right shape.
    #[error("bad envelope header: {0}")]
    Header(#[from] serde_json::Error),
}

impl Envelope {
    /// Frames the envelope for the bus.
    pub fn encode(&self) -> Bytes {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = BytesMut::with_capacity(PREFIX_LEN + header.len() + self.frame.len());
        out.put_slice(&MAGIC);
        out.put_u32(header.len() as u32);
        out.put_slice(&header);
        out.put_slice(&self.frame);
        out.freeze()
    }

    /// Reads an envelope; the frame is a zero-copy slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < PREFIX_LEN {
            return Err(EnvelopeError::Framing("shorter than its prefix"));
        }
        if bytes[..2] != MAGIC {
            return Err(EnvelopeError::Framing("wrong magic"));
        }
        let len = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
        if len > MAX_HEADER_BYTES || PREFIX_LEN + len > bytes.len() {
            return Err(EnvelopeError::Framing("header length past the end"));
        }
        let header: BusHeader = serde_json::from_slice(&bytes[PREFIX_LEN..PREFIX_LEN + len])?;
        Ok(Envelope {
            header,
            frame: bytes.slice(PREFIX_LEN + len..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Result<Envelope, crate::ids::IdError> {
        Ok(Envelope {
            header: BusHeader {
                origin: NodeId::new("node-a")?,
                sent_at: 5,
                recipients: vec![UserId(1), UserId(2)],
                kind: BusKind::Event {
                    conv: ConvId(9),
                    seq: 3,
                    id: MessageId(77),
                },
            },
            frame: Bytes::from_static(br#"{"type":"event"}"#),
        })
    }

    #[test]
    fn round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let env = sample()?;
        let decoded = Envelope::decode(env.encode())?;
        assert_eq!(decoded, env);
        Ok(())
    }

    #[test]
    fn sealed_round_trip_and_garbage() -> Result<(), Box<dyn std::error::Error>> {
        let env = sample()?.encode();
        let sealed = Sealed::encode("k1", &[7; MAC_LEN], &env);
        let back = Sealed::decode(sealed.clone())?;
        assert_eq!(
            (back.key_id.as_str(), back.mac, &back.envelope),
            ("k1", [7; MAC_LEN], &env)
        );
        // A plain envelope is not sealed; nor is a seal cut short.
        assert!(Sealed::decode(env).is_err());
        assert!(Sealed::decode(sealed.slice(..20)).is_err());
        assert!(Sealed::decode(Bytes::from_static(b"\xCB\x53\xff")).is_err());
        Ok(())
    }

    #[test]
    fn rejects_garbage() -> Result<(), Box<dyn std::error::Error>> {
        assert!(Envelope::decode(Bytes::from_static(b"xx")).is_err());
        assert!(Envelope::decode(Bytes::from_static(b"\xCB\x02\0\0\0\0")).is_err());
        assert!(Envelope::decode(Bytes::from_static(b"\xCB\x01\0\0\0\x09{}")).is_err());
        let mut bytes = sample()?.encode().to_vec();
        bytes[7] = b'!';
        assert!(matches!(
            Envelope::decode(Bytes::from(bytes)),
            Err(EnvelopeError::Header(_))
        ));
        Ok(())
    }

    #[test]
    fn routing_reads_and_writes_the_words_of_the_cli() {
        for r in [Routing::Routed, Routing::Fanout] {
            assert_eq!(r.as_str().parse::<Routing>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).ok(),
                Some(format!("\"{}\"", r.as_str()))
            );
        }
        assert!("broadcast".parse::<Routing>().is_err());
    }
}
