-- Several instances on one database: who is alive, what one instance asks of the instance that
-- runs a session, and the pairing code every instance's pairing page shows.
-- migrations/sqlite and migrations/postgres carry this file, differing only in column types.

-- One row per live process (its incarnation, "instance#nonce"), written every third of the lease
-- TTL. A row whose heartbeat is older than the TTL belongs to a dead process; a clean stop
-- deletes its row. Free session leases go to the least-loaded live instance.
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    sessions BIGINT NOT NULL,          -- session leases it held at its last heartbeat
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- A session operation (start pairing, log out, a simulated-WhatsApp control call) asked by the
-- instance that received the request of the instance that holds the session's lease. Command and
-- answer are sealed (they may carry a pairing code or a message). Deleted once answered and read.
CREATE TABLE session_commands (
    command_id INTEGER PRIMARY KEY AUTOINCREMENT,
    location_id TEXT NOT NULL,
    target TEXT NOT NULL,              -- the incarnation asked: the lease owner when it was sent
    command BLOB NOT NULL,            -- sealed JSON
    created_at BIGINT NOT NULL,
    taken_at BIGINT,                   -- the target started on it
    answer BLOB,                      -- sealed JSON; NULL until answered
    answered_at BIGINT
);
CREATE INDEX session_commands_target ON session_commands (target, command_id);

-- The code a person scans or types right now, published by the session's owner so that any
-- instance's pairing page shows it. Sealed: whoever scans it links the device.
ALTER TABLE wa_sessions ADD COLUMN pairing_code BLOB;

-- Which incarnation recorded a transition (NULL before this migration).
ALTER TABLE events ADD COLUMN instance_id TEXT;
