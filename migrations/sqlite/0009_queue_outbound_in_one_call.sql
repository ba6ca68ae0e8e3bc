-- PostgreSQL's version of this migration creates waghl_queue_outbound, the function its intake
-- writer calls to queue a batch of provider webhooks in one round trip. SQLite runs in the
-- daemon's process (a call costs no round trip) and its one writer takes no chat locks: its
-- intake sends the same statements one by one (src/store/intake.rs). Nothing to change here;
-- the migration keeps the two directories' versions the same.
SELECT 1;
