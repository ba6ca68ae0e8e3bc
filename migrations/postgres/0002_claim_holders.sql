-- Claims name their holder, and an inbound post in progress is recorded before GHL is called.
-- migrations/sqlite and migrations/postgres carry this same file.

-- The process incarnation ("instance#nonce") holding a row's claim. A daemon that starts again
-- releases the claims of its own earlier incarnations at once instead of waiting for them to
-- expire; a live holder renews its claims while the work runs.
ALTER TABLE inbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;

-- Set (unix ms) just before the message is handed to GHL and cleared once GHL's answer is
-- known. A row found with it set is uncertain: GHL may hold it already, so it is looked up in
-- the conversation before it is posted again.
ALTER TABLE inbox ADD COLUMN posting_at BIGINT;
