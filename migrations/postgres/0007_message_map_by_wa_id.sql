-- A part's WhatsApp id names it within its location: the server's ack and every receipt of an
-- outbound part find its row by (location, id), and so does the echo check of waghl's own
-- sends. The unique key leads with the chat, so those lookups read every row of the location
-- (the drain slowed as the map grew: 1,300 → 700 sends/s over 100,000 messages on SQLite).
-- migrations/sqlite and migrations/postgres carry this same file.

CREATE INDEX message_map_wa ON message_map (location_id, wa_message_id);
