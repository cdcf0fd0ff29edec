//! Sizes and rates that devices and servers agree on. Servers enforce them; clients use them to
//! explain a refusal before sending.

/// Largest WebSocket message a node accepts from a device. A bigger one closes the socket with
/// [`crate::ws::close::TOO_BIG`].
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Largest text of a message or an edit, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Largest attachment the controller stores by default (a server may lower or raise it and says
/// so in [`crate::http::ServerInfo`]).
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;

/// Most bytes of attachments one user may have stored, by default.
pub const ATTACHMENT_QUOTA_BYTES: u64 = 1024 * 1024 * 1024;

/// Attachment types the controller accepts, by MIME prefix or exact type.
pub const ATTACHMENT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "audio/",
    "video/",
    "application/pdf",
    "application/zip",
    "application/octet-stream",
    "text/plain",
];

/// Whether `mime` is one of [`ATTACHMENT_TYPES`].
pub fn attachment_type_allowed(mime: &str) -> bool {
    let mime = mime.split(';').next().unwrap_or("").trim();
    ATTACHMENT_TYPES.iter().any(|t| {
        if t.ends_with('/') {
            mime.starts_with(t) && mime.len() > t.len()
        } else {
            mime.eq_ignore_ascii_case(t)
        }
    })
}

/// Frames a device may send per second on average (token bucket refill rate), by default.
pub const RATE_PER_SEC: u32 = 200;

/// Frames a device may send in a burst, by default.
pub const RATE_BURST: u32 = 400;

/// Frames refused for the rate within one connection before the node closes it with
/// [`crate::ws::close::RATE_LIMITED`].
pub const RATE_STRIKES_BEFORE_CLOSE: u32 = 200;

/// Time a device has after the upgrade to send its `hello`, in milliseconds.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// Frames a node queues for one device before it gives up on that device (it is closed with
/// [`crate::ws::close::TOO_SLOW`] and resyncs when it comes back).
pub const DEVICE_QUEUE_FRAMES: usize = 1024;

/// How long a node waits on one write to a device that accepts none of it, in milliseconds,
/// before it closes the device as too slow ([`crate::ws::close::TOO_SLOW`]).
pub const WRITE_STALL_MS: u64 = 10_000;

/// How long a typing indicator lasts unless renewed, in milliseconds.
pub const TYPING_TTL_MS: u64 = 6_000;

/// Most events in one history page.
pub const HISTORY_PAGE_MAX: u32 = 200;

/// Events a device that has no cursor for a conversation gets when it says hello (the rest is
/// in the history pages).
pub const INITIAL_SYNC_EVENTS: u32 = 50;

/// Longest reaction, in bytes of UTF-8 (an emoji with its modifiers and joiners fits).
pub const REACTION_MAX_BYTES: usize = 32;

/// Reactions: 1 to [`REACTION_MAX_BYTES`] bytes, no spaces or control characters, and no
/// letters or digits of any script: an emoji, not a word.
pub fn reaction_valid(emoji: &str) -> bool {
    !emoji.is_empty()
        && emoji.len() <= REACTION_MAX_BYTES
        && emoji
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !c.is_alphanumeric())
}

/// Usernames: 3 to 32 of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn username_valid(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Shortest password accepted at registration, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;

/// Longest password accepted, in bytes.
pub const PASSWORD_MAX_BYTES: usize = 256;

/// Longest room name or device name, in characters.
pub const NAME_MAX_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_emoji_not_words() {
        for ok in ["👍", "❤️", "🎉", "👩\u{200d}💻", "✔️", "+!"] {
            assert!(reaction_valid(ok), "{ok:?}");
        }
        for bad in ["", "like", "ok", " ", "👍 👍", "\u{7}", &"🎉".repeat(9)] {
            assert!(!reaction_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn attachment_types() {
        assert!(attachment_type_allowed("image/png"));
        assert!(attachment_type_allowed("audio/ogg; codecs=opus"));
        assert!(attachment_type_allowed("video/mp4"));
        assert!(!attachment_type_allowed("video/"));
        assert!(!attachment_type_allowed("application/x-msdownload"));
        assert!(!attachment_type_allowed("text/html"));
    }

    #[test]
    fn usernames() {
        assert!(username_valid("alice"));
        assert!(username_valid("bob_2.x-y"));
        assert!(!username_valid("al"));
        assert!(!username_valid("Alice"));
        assert!(!username_valid("_alice"));
        assert!(!username_valid("al ice"));
    }
}
