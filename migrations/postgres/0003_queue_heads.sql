-- Each chat's oldest unfinished row is its head: the only row of the chat a worker may claim.
-- It is kept up to date in the same transaction as every change that starts or ends a row, so
-- a claim reads heads only and its cost does not grow with the rows queued behind them.
-- migrations/sqlite and migrations/postgres carry this same file.

ALTER TABLE inbox ADD COLUMN head BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN head BIGINT NOT NULL DEFAULT 0;

UPDATE inbox SET head = 1 WHERE inbox_id IN (
    SELECT MIN(inbox_id) FROM inbox WHERE state = 'pending' GROUP BY location_id, chat);
UPDATE outbox SET head = 1 WHERE outbox_id IN (
    SELECT MIN(outbox_id) FROM outbox WHERE state IN ('pending', 'sending') GROUP BY location_id, to_phone);

-- The claim: due heads, oldest due first.
CREATE INDEX inbox_heads ON inbox (next_attempt_at) WHERE state = 'pending' AND head = 1;
CREATE INDEX outbox_heads ON outbox (next_attempt_at) WHERE state IN ('pending', 'sending') AND head = 1;
-- One head per chat, enforced: two would break first in, first out.
CREATE UNIQUE INDEX inbox_one_head ON inbox (location_id, chat) WHERE state = 'pending' AND head = 1;
CREATE UNIQUE INDEX outbox_one_head ON outbox (location_id, to_phone) WHERE state IN ('pending', 'sending') AND head = 1;
-- Expiry of messages that waited too long, without reading the whole queue.
CREATE INDEX outbox_waiting ON outbox (retry_from) WHERE state IN ('pending', 'sending');
