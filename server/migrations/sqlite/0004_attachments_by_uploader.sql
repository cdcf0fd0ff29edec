-- A user's attachment quota sums the sizes of what they uploaded: this index answers it
-- without touching the table (whose rows carry the blobs).
CREATE INDEX attachments_by_uploader ON attachments (uploader, size);
