-- Reactions are events of their conversation, like edits: 'react' gives one to the message
-- `target`, 'unreact' takes it back, the emoji in `text`. The check on body_type widens to them.
ALTER TABLE events DROP CONSTRAINT events_body_type_check;
ALTER TABLE events ADD CONSTRAINT events_body_type_check
    CHECK (body_type IN ('message', 'edit', 'delete', 'member', 'react', 'unreact'));
