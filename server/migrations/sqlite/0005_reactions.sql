-- Reactions are events of their conversation, like edits: 'react' gives one to the message
-- `target`, 'unreact' takes it back, the emoji in `text`. The check on body_type widens to
-- them. SQLite cannot change a CHECK in place, so the table is made again under its name (the
-- SQLite manual's procedure for other schema changes): nothing refers to events, and its
-- indexes, as 0001 and 0002 left them, are made again after the copy.
CREATE TABLE events_next (
    id            INTEGER PRIMARY KEY,
    conv_id       INTEGER NOT NULL REFERENCES conversations (id),
    seq           INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    sender        INTEGER NOT NULL REFERENCES users (id),
    device        TEXT,
    client_id     TEXT,
    origin        TEXT    NOT NULL,
    body_type     TEXT    NOT NULL
        CHECK (body_type IN ('message', 'edit', 'delete', 'member', 'react', 'unreact')),
    msg_kind      TEXT,
    member_action TEXT,
    member_user   INTEGER,
    -- message: its current text (empty once deleted); edit: the new text; react, unreact: the
    -- emoji.
    text          TEXT    NOT NULL DEFAULT '',
    attachment_id TEXT    REFERENCES attachments (id),
    reply_to      INTEGER,
    -- edit, delete, react, unreact: the message aimed at.
    target        INTEGER,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT FALSE
);
INSERT INTO events_next (id, conv_id, seq, at, sender, device, client_id, origin, body_type,
        msg_kind, member_action, member_user, text, attachment_id, reply_to, target, edited_at,
        deleted)
    SELECT id, conv_id, seq, at, sender, device, client_id, origin, body_type, msg_kind,
        member_action, member_user, text, attachment_id, reply_to, target, edited_at, deleted
    FROM events;
DROP TABLE events;
ALTER TABLE events_next RENAME TO events;
CREATE UNIQUE INDEX events_conv_seq ON events (conv_id, seq);
CREATE UNIQUE INDEX events_client_key ON events (client_id, sender) WHERE client_id IS NOT NULL;
CREATE INDEX events_origin_at ON events (origin, at);
CREATE INDEX events_target ON events (target) WHERE target IS NOT NULL;
CREATE INDEX events_attachment ON events (attachment_id) WHERE attachment_id IS NOT NULL;
