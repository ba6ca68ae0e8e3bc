-- WhatsApp device keys move from one whatsapp-rust SQLite file per location (sessions/) into
-- waghl's database, so a session can run on any instance that shares it.
-- migrations/sqlite and migrations/postgres carry this same file but for the column types.

-- The linked device itself (identity, noise and signed pre-key pairs, registration and ids,
-- counters): whatsapp-rust's `Device`, as JSON, sealed with WAGHL_SECRET_KEY.
CREATE TABLE wa_devices (
    location_id TEXT PRIMARY KEY,
    device BYTEA NOT NULL,             -- sealed, bound to the location
    updated_at BIGINT NOT NULL
);

-- Everything else the device keeps (Signal sessions and identities, pre-keys, sender keys,
-- app-state keys and versions, LID↔phone mappings, the inbound buffer…), one row per item.
-- `kind` is waghl's `DeviceKeyKind` (src/store/device_keys.rs); `scope` groups the rows that
-- are cleared or listed together (a group, an app-state collection, a chat), '' when none.
-- Text compares byte by byte (COLLATE "C"), as SQLite's does, so key ranges (every Signal
-- address of one user) select the same rows in both dialects.
CREATE TABLE wa_device_keys (
    location_id TEXT NOT NULL,
    kind SMALLINT NOT NULL,
    scope TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,              -- sealed, bound to (location, kind, scope, key)
    num BIGINT,                        -- per kind: pre-key id, app-state version, first seen…
    flag BOOLEAN NOT NULL DEFAULT FALSE, -- per kind: pre-key uploaded, token present, has key
    ts BIGINT,                         -- per kind, unix seconds (whatsapp-rust's unit): expiry
    PRIMARY KEY (location_id, kind, scope, key)
);
-- Lookups by key in any scope: a LID's mapping (its phone is the scope), a device across groups.
CREATE INDEX wa_device_keys_by_key ON wa_device_keys (location_id, kind, key);
