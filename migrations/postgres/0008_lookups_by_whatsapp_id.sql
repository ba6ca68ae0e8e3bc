-- Two more lookups that read a prefix of their table's key and so grew with the location's
-- history (found by checking every per-message statement's plan):
-- migrations/sqlite and migrations/postgres carry this same file.

-- The quoted message of an inbound reply, and the author of the message a GHL reply quotes, are
-- looked up by (location, WhatsApp id); the unique key leads with the chat and the sender, so a
-- quote of a message waghl never received read every inbox row of the location.
CREATE INDEX inbox_wa ON inbox (location_id, wa_message_id);

-- A device key looked up in whichever scope holds it (`ORDER BY scope LIMIT 1`): with the scope
-- in the index the rows come in order, and SQLite no longer prefers reading every key of the
-- kind through the primary key to avoid the sort.
DROP INDEX wa_device_keys_by_key;
CREATE INDEX wa_device_keys_by_key ON wa_device_keys (location_id, kind, key, scope);
