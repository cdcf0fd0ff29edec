-- A conversation's head — its last seq, its last message, the time of its latest event — is
-- read from its events (the right end of its range in events_conv_seq) instead of being kept in
-- its row. Every append rewrote the row, and the rows of all conversations share a few pages:
-- each commit of a batch dirtied one more page per conversation, which the log took, the
-- checkpoint copied back, and every other process read again. The index leaf that the lookup
-- reads is the one the insert writes anyway.
ALTER TABLE conversations DROP COLUMN last_seq;
ALTER TABLE conversations DROP COLUMN last_msg_seq;
ALTER TABLE conversations DROP COLUMN last_activity;
