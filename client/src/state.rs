//! What a device must remember between runs to resume without losing or repeating anything:
//! its cursors and its outbox. [`ClientState`] is a plain serializable snapshot; the engine
//! starts from one and hands out fresh ones on request.

use protocol::model::ConversationSummary;
use protocol::ws::Cursor;
use protocol::{ConvId, Seq};
use serde::{Deserialize, Serialize};

use crate::outbox::OutboxItem;

/// A device's sync cursors and unacknowledged sends.
///
/// Cursors count events handed to the application's event channel. An application that saves
/// the state and later resumes from it should save after it has handled the events it read,
/// or it may skip the events that were still waiting in the channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    /// Highest `seq` delivered, per conversation. Conversations not listed get a recent window
    /// of events from the node when the engine connects.
    #[serde(default)]
    pub cursors: Vec<Cursor>,
    /// Messages, edits and deletes not yet acknowledged, in the order they were sent; the
    /// engine sends them again, with the same client ids, once it is live.
    #[serde(default)]
    pub outbox: Vec<OutboxItem>,
}

impl ClientState {
    /// A state that starts "now": a cursor at the latest event of each conversation, so the
    /// node replays nothing. For a client that only sends, or only cares about what comes
    /// next.
    pub fn at_latest(conversations: &[ConversationSummary]) -> Self {
        ClientState {
            cursors: conversations
                .iter()
                .map(|c| Cursor {
                    conv: c.id,
                    seq: c.last_seq,
                })
                .collect(),
            outbox: Vec::new(),
        }
    }

    /// The cursor of `conv`, if any.
    pub fn cursor(&self, conv: ConvId) -> Option<Seq> {
        self.cursors
            .iter()
            .filter(|c| c.conv == conv)
            .map(|c| c.seq)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outgoing;
    use protocol::model::{ConvKind, MessageKind};
    use protocol::ws::{DeleteMessage, EditMessage, SendMessage};
    use protocol::{AttachmentId, ClientMsgId, MessageId};

    #[test]
    fn round_trips_through_json() -> Result<(), Box<dyn std::error::Error>> {
        let state = ClientState {
            cursors: vec![
                Cursor {
                    conv: ConvId(1),
                    seq: 41,
                },
                Cursor {
                    conv: ConvId(9),
                    seq: 2,
                },
            ],
            outbox: vec![
                OutboxItem {
                    op: Outgoing::Send(SendMessage {
                        conv: ConvId(1),
                        client_id: ClientMsgId::new("c1")?,
                        kind: MessageKind::Image,
                        text: "caption".into(),
                        attachment: Some(AttachmentId::new("att-1")?),
                        reply_to: Some(MessageId(12)),
                    }),
                    queued_at: 1_700_000_000_000,
                },
                OutboxItem {
                    op: Outgoing::Edit(EditMessage {
                        conv: ConvId(1),
                        client_id: ClientMsgId::new("c2")?,
                        target: MessageId(9_007_199_254_740_993),
                        text: "fixed".into(),
                    }),
                    queued_at: 1,
                },
                OutboxItem {
                    op: Outgoing::Delete(DeleteMessage {
                        conv: ConvId(9),
                        client_id: ClientMsgId::new("c3")?,
                        target: MessageId(5),
                    }),
                    queued_at: 2,
                },
            ],
        };
        let json = serde_json::to_string_pretty(&state)?;
        assert_eq!(serde_json::from_str::<ClientState>(&json)?, state);
        // An empty object is a valid (fresh) state, so old or hand-made files load.
        assert_eq!(
            serde_json::from_str::<ClientState>("{}")?,
            ClientState::default()
        );
        Ok(())
    }

    #[test]
    fn at_latest_points_at_the_last_event() {
        let conv = |id, last_seq| ConversationSummary {
            id: ConvId(id),
            kind: ConvKind::Room,
            name: "r".into(),
            peer: None,
            public: false,
            member_count: 1,
            last_seq,
            last_message: None,
            read_seq: 0,
            unread: 0,
            peer_read_seq: None,
            created_at: 0,
        };
        let s = ClientState::at_latest(&[conv(1, 10), conv(2, 0)]);
        assert_eq!(s.cursor(ConvId(1)), Some(10));
        assert_eq!(s.cursor(ConvId(2)), Some(0));
        assert_eq!(s.cursor(ConvId(3)), None);
    }
}
