-- Fewer b-tree leaves touched per append. Every page an append batch dirties is written to the
-- log and copied back at the next checkpoint, so an index whose new keys land all over the tree
-- costs a page per event.
--
-- Client ids: the client core makes them time-ordered (UUIDv7), so keyed by the id first, new
-- keys land at the right edge of the index instead of one spot per sender. Uniqueness is the
-- same pair.
DROP INDEX events_client_id;
CREATE UNIQUE INDEX events_client_key ON events (client_id, sender) WHERE client_id IS NOT NULL;
-- Unread counts walk events_conv_seq from the reader's position instead: an index of its own
-- cost every append a third scattered leaf.
DROP INDEX events_unread;
