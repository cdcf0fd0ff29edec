-- The embedded store's schema: accounts, devices, conversations with their members, the event
-- log, and attachments (bytes included). Times are milliseconds since the Unix epoch; booleans
-- are 0/1 (written TRUE/FALSE in statements, which SQLite reads as 1/0).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE devices (
    user_id    INTEGER NOT NULL REFERENCES users (id),
    device_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    last_login INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT FALSE,
    -- Tokens carry the generation they were issued at; revoking bumps it.
    generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL CHECK (kind IN ('direct', 'room')),
    name          TEXT    NOT NULL DEFAULT '',
    is_public     INTEGER NOT NULL DEFAULT FALSE,
    created_by    INTEGER NOT NULL REFERENCES users (id),
    created_at    INTEGER NOT NULL,
    -- Highest seq: the write transaction that appends reads it and writes it back + n.
    last_seq      INTEGER NOT NULL DEFAULT 0,
    -- seq of the last `message` event (0: none), for conversation lists.
    last_msg_seq  INTEGER NOT NULL DEFAULT 0,
    -- Time of the latest event, to order conversation lists.
    last_activity INTEGER NOT NULL,
    -- Bumped by every membership change, so member lists can be cached by (id, epoch).
    member_epoch  INTEGER NOT NULL DEFAULT 0,
    -- The two users of a direct conversation, smaller id first; NULL for rooms.
    direct_lo     INTEGER REFERENCES users (id),
    direct_hi     INTEGER REFERENCES users (id),
    CHECK ((kind = 'direct') = (direct_lo IS NOT NULL AND direct_hi IS NOT NULL AND direct_lo < direct_hi))
);
-- One direct conversation per pair: concurrent opens meet here. (NULLs of rooms never clash.)
CREATE UNIQUE INDEX conversations_direct_pair ON conversations (direct_lo, direct_hi);
CREATE INDEX conversations_public_rooms ON conversations (name) WHERE kind = 'room' AND is_public = TRUE;

CREATE TABLE members (
    conv_id    INTEGER NOT NULL REFERENCES conversations (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    joined_seq INTEGER NOT NULL,
    read_seq   INTEGER NOT NULL,
    PRIMARY KEY (conv_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, conv_id);

CREATE TABLE attachments (
    id         TEXT    PRIMARY KEY,
    conv_id    INTEGER NOT NULL REFERENCES conversations (id),
    uploader   INTEGER NOT NULL REFERENCES users (id),
    name       TEXT    NOT NULL,
    mime       TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- Last, so reading the metadata of a row never touches the blob's overflow pages.
    data       BLOB    NOT NULL
);

CREATE TABLE events (
    -- The Snowflake id the caller made: the rowid, so edit, delete and reply targets are found
    -- by the table's own b-tree, and new events land at its end.
    id            INTEGER PRIMARY KEY,
    conv_id       INTEGER NOT NULL REFERENCES conversations (id),
    seq           INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    sender        INTEGER NOT NULL REFERENCES users (id),
    device        TEXT,
    client_id     TEXT,
    -- The node (or controller) that persisted it.
    origin        TEXT    NOT NULL,
    body_type     TEXT    NOT NULL CHECK (body_type IN ('message', 'edit', 'delete', 'member')),
    -- message: its kind; member: its action and whom it is about.
    msg_kind      TEXT,
    member_action TEXT,
    member_user   INTEGER,
    -- message: its current text (empty once deleted); edit: the new text.
    text          TEXT    NOT NULL DEFAULT '',
    attachment_id TEXT    REFERENCES attachments (id),
    reply_to      INTEGER,
    -- edit, delete: the message aimed at.
    target        INTEGER,
    edited_at     INTEGER,
    deleted       INTEGER NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX events_conv_seq ON events (conv_id, seq);
CREATE UNIQUE INDEX events_client_id ON events (sender, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX events_origin_at ON events (origin, at);
-- Unread counts scan only this: live messages, with the sender to leave one's own out.
CREATE INDEX events_unread ON events (conv_id, seq, sender) WHERE body_type = 'message' AND deleted = FALSE;
CREATE INDEX events_target ON events (target) WHERE target IS NOT NULL;
CREATE INDEX events_attachment ON events (attachment_id) WHERE attachment_id IS NOT NULL;
