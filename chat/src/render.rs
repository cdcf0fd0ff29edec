//! Turning wire types into lines for people: times in local time, user and conversation names
//! instead of ids (looked up once and cached), one line per event or status change.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use client::{Api, ClientEvent, Status};
use protocol::model::{
    ConvKind, ConversationSummary, Event, EventBody, MemberAction, Message, MessageKind, UserInfo,
};
use protocol::{ConvId, Millis, UserId};
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Formats timestamps in the local time zone.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset: UtcOffset,
}

impl Clock {
    /// The local offset. Call this before any thread starts: on Unix the offset can only be
    /// read safely while the process is single-threaded (otherwise UTC is used).
    pub fn detect() -> Clock {
        Clock {
            offset: UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC),
        }
    }

    fn at(&self, ms: Millis) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(|t| t.to_offset(self.offset))
    }

    /// `HH:MM:SS`.
    pub fn time(&self, ms: Millis) -> String {
        self.at(ms)
            .and_then(|t| {
                t.format(format_description!("[hour]:[minute]:[second]"))
                    .ok()
            })
            .unwrap_or_else(|| "??:??:??".to_owned())
    }

    /// `YYYY-MM-DD HH:MM`.
    pub fn date_time(&self, ms: Millis) -> String {
        self.at(ms)
            .and_then(|t| {
                t.format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
                    .ok()
            })
            .unwrap_or_else(|| "?".to_owned())
    }
}

/// User and conversation names, learned from what the server says and looked up on demand.
pub struct Names {
    api: Api,
    me: UserInfo,
    users: HashMap<UserId, String>,
    convs: HashMap<ConvId, String>,
    /// Conversations whose member list was fetched, so a miss costs one request at most.
    members_fetched: HashSet<ConvId>,
}

impl Names {
    /// Names known to start with: only mine.
    pub fn new(api: Api, me: UserInfo) -> Names {
        let mut users = HashMap::new();
        users.insert(me.id, me.username.clone());
        Names {
            api,
            me,
            users,
            convs: HashMap::new(),
            members_fetched: HashSet::new(),
        }
    }

    /// Learns conversation labels and direct peers.
    pub fn learn(&mut self, conversations: &[ConversationSummary]) {
        for c in conversations {
            self.convs.insert(c.id, conv_label(c));
            if let Some(peer) = &c.peer {
                self.users.insert(peer.id, peer.username.clone());
            }
        }
    }

    /// Whether `user` is me.
    pub fn is_me(&self, user: UserId) -> bool {
        user == self.me.id
    }

    /// The name of `user`, seen in `conv` (whose members are fetched if needed).
    pub async fn user(&mut self, conv: ConvId, user: UserId) -> String {
        if !self.users.contains_key(&user)
            && self.members_fetched.insert(conv)
            && let Ok(members) = self.api.members(conv).await
        {
            for m in members {
                self.users.insert(m.user.id, m.user.username);
            }
        }
        self.users
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user{}", user.0))
    }

    /// The label of `conv` (`#room` or `@peer`), fetched if needed.
    pub async fn conv(&mut self, conv: ConvId) -> String {
        if !self.convs.contains_key(&conv) {
            let label = match self.api.conversation(conv).await {
                Ok(summary) => {
                    self.learn(std::slice::from_ref(&summary));
                    conv_label(&summary)
                }
                Err(_) => format!("conv{}", conv.0),
            };
            self.convs.insert(conv, label);
        }
        self.convs
            .get(&conv)
            .cloned()
            .unwrap_or_else(|| format!("conv{}", conv.0))
    }

    /// One line for an event: `12:34:56 #general 5 alice: hello`. Without `with_conv` the
    /// conversation is left out (when everything shown is in one conversation).
    pub async fn event_line(&mut self, clock: &Clock, event: &Event, with_conv: bool) -> String {
        let who = self.user(event.conv, event.sender).await;
        let what = match &event.body {
            EventBody::Message(m) => format!("{who}: {}", message_text(m)),
            EventBody::Edit { target, text } => format!("{who} edited {target}: {text}"),
            EventBody::Delete { target } => format!("{who} deleted {target}"),
            EventBody::Reaction {
                target,
                emoji,
                on: true,
            } => format!("{who} reacted {emoji} to {target}"),
            EventBody::Reaction {
                target,
                emoji,
                on: false,
            } => format!("{who} took back {emoji} from {target}"),
            EventBody::Member { action, user } => {
                let subject = self.user(event.conv, *user).await;
                match action {
                    MemberAction::Created => format!("{subject} created the conversation"),
                    MemberAction::Joined => format!("{subject} joined"),
                    MemberAction::Invited => format!("{who} added {subject}"),
                    MemberAction::Left => format!("{subject} left"),
                }
            }
        };
        let time = clock.time(event.at);
        if with_conv {
            let conv = self.conv(event.conv).await;
            format!("{time} {conv} {} {what}", event.seq)
        } else {
            format!("{time} {} {what}", event.seq)
        }
    }

    /// A line for anything but an event, or `None` when it is not worth a line for people.
    pub async fn notice(&mut self, event: &ClientEvent) -> Option<String> {
        match event {
            ClientEvent::Status(status) => Some(format!("* {}", status_text(status))),
            ClientEvent::Welcome(w) => {
                self.learn(&w.conversations);
                let online = w.presence.iter().filter(|p| p.online).count();
                Some(format!(
                    "* signed in as {} on {}: {} conversations, {online} contacts online",
                    w.user.username,
                    w.node,
                    w.conversations.len()
                ))
            }
            ClientEvent::Teaching { mode: Some(mode) } => Some(format!("! {}", mode.status_line())),
            ClientEvent::Teaching { mode: None } => Some("* teaching mode off".to_owned()),
            ClientEvent::Moving { node, reason } => {
                Some(format!("* {node} is draining ({reason})"))
            }
            ClientEvent::SendFailed {
                client_id, message, ..
            } => Some(format!("! message {client_id} was refused: {message}")),
            ClientEvent::ServerError { message, .. } => Some(format!("! server: {message}")),
            ClientEvent::Presence(p) => {
                let name = self
                    .users
                    .get(&p.user)
                    .cloned()
                    .unwrap_or_else(|| format!("user{}", p.user.0));
                let state = if p.online { "online" } else { "offline" };
                Some(format!("* {name} is {state}"))
            }
            ClientEvent::Typing { conv, user, active } if *active && !self.is_me(*user) => {
                let name = self.user(*conv, *user).await;
                let conv = self.conv(*conv).await;
                Some(format!("* {name} is typing in {conv}"))
            }
            ClientEvent::Read { conv, user, seq } if !self.is_me(*user) => {
                let name = self.user(*conv, *user).await;
                let conv = self.conv(*conv).await;
                Some(format!("* {name} read {conv} up to {seq}"))
            }
            _ => None,
        }
    }
}

/// `#room` or `@peer`.
pub fn conv_label(c: &ConversationSummary) -> String {
    match c.kind {
        ConvKind::Room => format!("#{}", c.name),
        ConvKind::Direct => format!("@{}", c.peer.as_ref().map_or(&c.name, |p| &p.username)),
    }
}

/// A message's text with its attachment, reply and edit marks.
pub fn message_text(m: &Message) -> String {
    if m.deleted {
        return "(deleted)".to_owned();
    }
    let mut out = String::new();
    if let Some(to) = m.reply_to {
        out.push_str(&format!("(re {to}) "));
    }
    if let Some(a) = &m.attachment {
        let kind = match m.kind {
            MessageKind::Image => "image",
            MessageKind::Voice => "voice",
            MessageKind::Video => "video",
            MessageKind::File | MessageKind::Text => "file",
        };
        out.push_str(&format!(
            "[{kind} {} {}, id {}]",
            a.name,
            human_size(a.size),
            a.id
        ));
        if !m.text.is_empty() {
            out.push(' ');
        }
    }
    out.push_str(&m.text);
    if m.edited_at.is_some() {
        out.push_str(" (edited)");
    }
    for r in &m.reactions {
        out.push_str(&format!(" [{} {}]", r.emoji, r.users.len()));
    }
    out
}

/// A connection status in words.
pub fn status_text(status: &Status) -> String {
    match status {
        Status::Connecting => "connecting".to_owned(),
        Status::Resyncing { node } => format!("connected to {node}, catching up"),
        Status::Live { node } => format!("live on {node}"),
        other => other.to_string(),
    }
}

/// `812 B`, `12.3 KB`, `4.0 MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One line on stdout, [`terminal_safe`]. Fails when stdout is gone (a closed pipe), which
/// callers take as a reason to stop rather than a crash.
pub fn out(line: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", terminal_safe(line))?;
    stdout.flush()
}

/// One line on stderr, [`terminal_safe`].
pub fn err_line(line: &str) {
    eprintln!("{}", terminal_safe(line));
}

/// `line` with every character that could steer a terminal written out as `\uXXXX`: C0 and
/// C1 controls (escape sequences, carriage returns, newlines that would fake a line of their
/// own), DEL, and the bidirectional overrides that make text display in another order than
/// it reads. What other people wrote (messages, names, file names) reaches the terminal only
/// through this. The escape is JSON's, so a JSON line stays valid JSON.
pub fn terminal_safe(line: &str) -> std::borrow::Cow<'_, str> {
    let steers = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !line.chars().any(steers) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if steers(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One JSON object on its own line.
pub fn out_json<T: serde::Serialize>(value: &T) -> io::Result<()> {
    let line = serde_json::to_string(value).map_err(io::Error::other)?;
    out(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::AttachmentId;
    use protocol::model::Attachment;

    #[test]
    fn nothing_steers_the_terminal() {
        assert_eq!(terminal_safe("plain, é 😀"), "plain, é 😀");
        assert_eq!(
            terminal_safe("hi\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "hi\\u001b[2J\\u001b]0;pwned\\u0007"
        );
        assert_eq!(
            terminal_safe("a\r\nalice: fake"),
            "a\\u000d\\u000aalice: fake"
        );
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u009b31m");
        assert_eq!(terminal_safe("abc\u{202e}fed"), "abc\\u202efed");
        // JSON stays JSON.
        let json = serde_json::to_string("x\u{9b}y\u{7f}").unwrap_or_default();
        assert!(serde_json::from_str::<String>(&terminal_safe(&json)).is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(12_595), "12.3 KB");
        assert_eq!(human_size(4 * 1024 * 1024), "4.0 MB");
    }

    #[test]
    fn message_texts() -> Result<(), protocol::ids::IdError> {
        let mut m = Message {
            kind: MessageKind::Image,
            text: "look".into(),
            attachment: Some(Attachment {
                id: AttachmentId::new("a1")?,
                name: "cat.png".into(),
                mime: "image/png".into(),
                size: 2048,
                conv: ConvId(1),
            }),
            reply_to: Some(protocol::MessageId(7)),
            edited_at: Some(1),
            deleted: false,
            reactions: Vec::new(),
        };
        assert_eq!(
            message_text(&m),
            "(re 7) [image cat.png 2.0 KB, id a1] look (edited)"
        );
        m.deleted = true;
        assert_eq!(message_text(&m), "(deleted)");
        Ok(())
    }

    #[test]
    fn clock_formats() {
        let utc = Clock {
            offset: UtcOffset::UTC,
        };
        assert_eq!(utc.time(1_700_000_000_000), "22:13:20");
        assert_eq!(utc.date_time(1_700_000_000_000), "2023-11-14 22:13");
    }
}
