//! Identifiers and the rules they follow on the wire.
//!
//! Numbers that fit in a JavaScript number (user and conversation ids, sequence numbers) travel
//! as JSON numbers. Message ids are 64-bit Snowflake ids and travel as decimal strings so that no
//! client rounds them. Device, node, client-message and attachment ids are short opaque strings
//! restricted to `[A-Za-z0-9_.-]`, so they can be used in URLs, keys and queue names unescaped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Position of an event in its conversation: 1, 2, 3… without gaps, assigned by the store when
/// the event is persisted. A device's resync cursor for a conversation is the highest `Seq` it
/// has seen there.
pub type Seq = u64;

/// A registered user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A conversation: a direct conversation between two users, or a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConvId(pub i64);

/// A Snowflake id: 41 bits of milliseconds since [`MessageId::EPOCH_MS`], 10 bits of worker id,
/// 12 bits of sequence within the millisecond. Sent as a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub i64);

impl MessageId {
    /// 2024-01-01T00:00:00Z, the zero of the Snowflake clock.
    pub const EPOCH_MS: i64 = 1_704_067_200_000;

    /// Builds an id from its parts. `worker` is masked to 10 bits and `sequence` to 12.
    pub fn from_parts(unix_ms: i64, worker: u16, sequence: u16) -> Self {
        let ms = (unix_ms - Self::EPOCH_MS).max(0) & ((1 << 41) - 1);
        MessageId((ms << 22) | ((i64::from(worker) & 0x3ff) << 12) | (i64::from(sequence) & 0xfff))
    }

    /// The Unix time in milliseconds at which the id was made.
    pub fn unix_ms(self) -> i64 {
        (self.0 >> 22) + Self::EPOCH_MS
    }

    /// The worker (node or controller) that made the id.
    pub fn worker(self) -> u16 {
        ((self.0 >> 12) & 0x3ff) as u16
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MessageId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message id as a decimal string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MessageId, E> {
                v.parse::<i64>()
                    .map(MessageId)
                    .map_err(|_| E::custom("message id is not a decimal integer"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MessageId, E> {
                Ok(MessageId(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MessageId, E> {
                i64::try_from(v)
                    .map(MessageId)
                    .map_err(|_| E::custom("message id out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty, or longer than the limit.
    #[error("{kind} must be 1 to {max} characters long")]
    Length {
        /// Which id.
        kind: &'static str,
        /// The longest allowed.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("{kind} may only contain letters, digits, '-', '_' and '.'")]
    Charset {
        /// Which id.
        kind: &'static str,
    },
}

fn check_token(kind: &'static str, max: usize, s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length { kind, max });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(IdError::Charset { kind });
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest id accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Checks and wraps a string.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_token($kind, $max, &s)?;
                Ok(Self(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, so that width and alignment flags work in tables.
                f.pad(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

token_id!(
    /// One install of a client, chosen by the client (a UUID is typical) and stable across
    /// restarts. Together with the user it names a device; tokens are bound to it.
    DeviceId,
    "device id",
    64
);
token_id!(
    /// A chat node, unique for the life of the process (a restarted node gets a new one).
    NodeId,
    "node id",
    64
);
token_id!(
    /// The client's own id for a message it sends; a resend with the same id is recognised and
    /// answered with the first send's ack instead of being stored twice.
    ClientMsgId,
    "client message id",
    64
);
token_id!(
    /// An uploaded attachment.
    AttachmentId,
    "attachment id",
    64
);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflake_round_trips_its_parts() {
        let id = MessageId::from_parts(MessageId::EPOCH_MS + 123_456_789, 517, 4000);
        assert_eq!(id.unix_ms(), MessageId::EPOCH_MS + 123_456_789);
        assert_eq!(id.worker(), 517);
        assert_eq!(id.0 & 0xfff, 4000);
    }

    #[test]
    fn snowflakes_order_by_time_first() {
        let a = MessageId::from_parts(MessageId::EPOCH_MS + 10, 1023, 4095);
        let b = MessageId::from_parts(MessageId::EPOCH_MS + 11, 0, 0);
        assert!(a < b);
    }

    #[test]
    fn message_id_is_a_string_on_the_wire() -> Result<(), serde_json::Error> {
        let id = MessageId(9_007_199_254_740_993);
        assert_eq!(serde_json::to_string(&id)?, "\"9007199254740993\"");
        assert_eq!(
            serde_json::from_str::<MessageId>("\"9007199254740993\"")?,
            id
        );
        assert!(serde_json::from_str::<MessageId>("\"12x\"").is_err());
        Ok(())
    }

    #[test]
    fn ids_honour_width_flags() {
        let n = NodeId::new("n1").expect("valid");
        assert_eq!(format!("[{n:<4}]"), "[n1  ]");
        assert_eq!(format!("[{:>3}]", ConvId(7)), "[  7]");
        assert_eq!(format!("[{:>4}]", MessageId(12)), "[  12]");
    }

    #[test]
    fn token_ids_are_checked() {
        assert!(DeviceId::new("laptop-1f3a.b_c").is_ok());
        assert_eq!(
            DeviceId::new(""),
            Err(IdError::Length {
                kind: "device id",
                max: 64
            })
        );
        assert!(DeviceId::new("a".repeat(65)).is_err());
        assert_eq!(
            DeviceId::new("a b"),
            Err(IdError::Charset { kind: "device id" })
        );
        assert!(serde_json::from_str::<NodeId>("\"bad/node\"").is_err());
    }
}
