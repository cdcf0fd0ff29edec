//! The reads the SQL stores share.

use std::sync::Arc;

use protocol::model::{Event, EventBody, MemberAction};
use protocol::{Seq, UserId};

/// Who gets an event again when a survivor republishes it: today's members who had joined by
/// then, plus, for a `Left` event, the leaver. (Exactly "the members right after the event"
/// unless membership changed since, which the log of member events tells receivers anyway.)
pub(crate) fn replay_recipients(event: &Event, members: &[(UserId, Seq)]) -> Arc<[UserId]> {
    let mut out: Vec<UserId> = members
        .iter()
        .filter(|(_, joined)| *joined <= event.seq)
        .map(|(u, _)| *u)
        .collect();
    if let EventBody::Member {
        action: MemberAction::Left,
        user,
    } = &event.body
    {
        out.push(*user);
    }
    out.sort_unstable();
    out.dedup();
    out.into()
}

#[cfg(test)]
mod tests {
    use protocol::{ConvId, MessageId};

    use super::*;

    #[test]
    fn replayed_left_event_reaches_the_leaver_but_not_later_joiners() {
        let event = Event {
            conv: ConvId(1),
            seq: 5,
            id: MessageId(1),
            at: 0,
            sender: UserId(3),
            device: None,
            client_id: None,
            body: EventBody::Member {
                action: MemberAction::Left,
                user: UserId(3),
            },
        };
        let members = [(UserId(1), 1), (UserId(2), 4), (UserId(4), 6)];
        assert_eq!(
            &*replay_recipients(&event, &members),
            &[UserId(1), UserId(2), UserId(3)]
        );
    }
}
