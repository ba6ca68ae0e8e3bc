-- The PostgreSQL intake writes a batch of provider webhooks in one call of this function, in
-- the implicit transaction of that one statement (src/store/intake.rs): one round trip instead
-- of four (BEGIN, the chat locks, the rows, COMMIT). On this 2-core machine a round trip costs
-- the server about 37 µs of CPU and the batch's latency grows with each: in `pgbench` of a
-- 15-row batch one call took about a seventh off the server's CPU and a quarter off the
-- batch's latency (README, "Webhook intake against the HTTP ceiling").
--
-- The locks still come first: each statement of a VOLATILE function reads what committed before
-- that statement started, so the rows and the heads below are read with the chat locks held,
-- exactly as in a transaction that takes them first. SQLite (one writer, no locks to take) sends
-- the same statements one by one; the two are kept in step and the tests run on both.
CREATE FUNCTION waghl_queue_outbound(
    now_ms BIGINT,
    chat_locks TEXT[],      -- the batch's chats' lock names, sorted, without repeats
    hook_ids TEXT[],        -- per row, from here on: GHL's webhookId, or NULL
    row_locations TEXT[],
    row_messages TEXT[],    -- GHL message ids, no two alike (repeats are answered before)
    row_contacts TEXT[],
    row_phones TEXT[],
    row_bodies TEXT[],
    row_written BIGINT[],   -- when GHL says the message was written, or NULL
    unpaired TEXT,          -- why a row of a location never paired is failed at once
    replayed TEXT,          -- why a row written before the pairing is failed at once
    channel TEXT,           -- the outbox notification's channel
    OUT queued_ids BIGINT[],
    OUT queued_locations TEXT[],
    OUT queued_messages TEXT[],
    OUT queued_states TEXT[])
LANGUAGE plpgsql VOLATILE
-- PL/pgSQL plans each statement for the values of its first calls, then keeps a generic plan
-- only when that looks no dearer; for the queueing statement it never did, and planning it
-- anew took 0.42 ms a call, as long as running it. The generic plan is the same plan.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    recorded TEXT[] := '{}';
    missed_locations TEXT[];
    missed_phones TEXT[];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(name, 0)) FROM unnest(chat_locks) AS name;

    -- Webhook ids first: a redelivered webhook queues nothing. Only those of installed
    -- locations are recorded: a webhook refused now is queued when GHL retries it after the
    -- install.
    IF cardinality(array_remove(hook_ids, NULL)) > 0 THEN
        WITH seen AS (
            INSERT INTO webhook_seen (webhook_id, seen_at)
            SELECT h.w, now_ms FROM unnest(hook_ids, row_locations) AS h(w, l)
            JOIN locations loc ON loc.location_id = h.l
            WHERE h.w IS NOT NULL
            ON CONFLICT (webhook_id) DO NOTHING
            RETURNING webhook_id)
        SELECT coalesce(array_agg(webhook_id), '{}') INTO recorded FROM seen;
    END IF;

    -- The rows of installed locations, in the batch's order. A row is failed at once when its
    -- location's WhatsApp was never paired, or GHL says it was written before the pairing.
    -- The first row of each chat (a lead) becomes the chat's head when nothing of the chat is
    -- unfinished; the probe asks the chat's head first (one entry per busy chat), then any
    -- unfinished row of the chat only when there is no head: the same answer, as a head is
    -- unfinished, and under load most chats have one. Each is a scalar subquery, an index
    -- probe per row (an EXISTS may become one hashed scan of every unfinished row).
    WITH batch AS (
        SELECT r.k, r.l, r.m, r.c, r.p, r.b, r.t, r.k = min(r.k) OVER (PARTITION BY r.l, r.p) AS lead
        FROM unnest(hook_ids, row_locations, row_messages, row_contacts, row_phones, row_bodies, row_written)
            WITH ORDINALITY AS r(w, l, m, c, p, b, t, k)
        WHERE r.w IS NULL OR r.w = ANY (recorded)),
    queued AS (
        INSERT INTO outbox (location_id, ghl_message_id, ghl_contact_id, to_phone, body, state, last_error,
            attempts, next_attempt_at, retry_from, received_at, updated_at, report_after, head)
        SELECT q.l, q.m, q.c, q.p, q.b, CASE WHEN q.f IS NULL THEN 'pending' ELSE 'failed' END, q.f,
            0, now_ms, now_ms, now_ms, now_ms, CASE WHEN q.f IS NULL THEN NULL ELSE now_ms END,
            CASE WHEN q.lead AND q.f IS NULL AND COALESCE(
                (SELECT 1 FROM outbox o WHERE o.location_id = q.l AND o.to_phone = q.p
                    AND o.state IN ('pending', 'sending') AND o.head = 1),
                (SELECT 1 FROM outbox o WHERE o.location_id = q.l AND o.to_phone = q.p
                    AND o.state IN ('pending', 'sending') LIMIT 1)) IS NULL THEN 1 ELSE 0 END
        FROM (SELECT b.k, b.l, b.m, b.c, b.p, b.b, b.lead,
                CASE WHEN s.paired_at IS NULL THEN unpaired WHEN b.t < s.paired_at THEN replayed END AS f
              FROM batch b
              JOIN locations loc ON loc.location_id = b.l
              LEFT JOIN wa_sessions s ON s.location_id = loc.location_id) AS q
        ORDER BY q.k
        ON CONFLICT (location_id, ghl_message_id) DO NOTHING
        RETURNING outbox_id, location_id, ghl_message_id, state),
    -- Wakes, when this commits, the instance that runs each location whose rows were queued.
    woken AS (SELECT pg_notify(channel, d.location_id) FROM (SELECT DISTINCT location_id FROM queued) AS d),
    -- Leads that were a duplicate, or failed at once: their chats' next rows lead instead.
    missed AS (
        SELECT b.l, b.p FROM batch b
        WHERE b.lead AND NOT EXISTS (SELECT 1 FROM queued
            WHERE queued.location_id = b.l AND queued.ghl_message_id = b.m AND queued.state = 'pending'))
    SELECT array_agg(outbox_id), array_agg(location_id), array_agg(ghl_message_id), array_agg(state),
        (SELECT array_agg(l) FROM missed), (SELECT array_agg(p) FROM missed)
    INTO queued_ids, queued_locations, queued_messages, queued_states, missed_locations, missed_phones
    FROM queued WHERE (SELECT COUNT(*) FROM woken) >= 0;

    -- A statement of its own: it sees the rows the one above inserted.
    IF missed_locations IS NOT NULL THEN
        UPDATE outbox SET head = 1 WHERE head = 0 AND outbox_id IN (
            SELECT (SELECT MIN(o.outbox_id) FROM outbox o WHERE o.location_id = m.l AND o.to_phone = m.p
                AND o.state IN ('pending', 'sending'))
            FROM unnest(missed_locations, missed_phones) AS m(l, p));
    END IF;
END $$;
