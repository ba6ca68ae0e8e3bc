-- The first schema. Times are unix milliseconds (BIGINT) in both dialects; sealed secrets are
-- AES-256-GCM blobs (src/crypto.rs). migrations/sqlite/0001_initial.sql is its twin.

-- Process-wide facts, e.g. a value sealed with the secret key, to detect a wrong key at start.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Agencies (GHL companies) that installed the app for several locations at once.
CREATE TABLE companies (
    company_id TEXT PRIMARY KEY,
    access_token BYTEA,                 -- sealed
    refresh_token BYTEA,                -- sealed
    token_expires_at BIGINT,
    status TEXT NOT NULL,              -- installed | reauth_required | uninstalled
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- GHL sub-accounts that installed the app; one WhatsApp session each.
CREATE TABLE locations (
    location_id TEXT PRIMARY KEY,
    company_id TEXT,
    name TEXT,
    status TEXT NOT NULL,              -- installed | reauth_required | uninstalled
    access_token BYTEA,                 -- sealed
    refresh_token BYTEA,                -- sealed; NULL when minted from a company token
    token_expires_at BIGINT,
    token_source TEXT NOT NULL DEFAULT 'oauth',  -- oauth | company
    last_error TEXT,
    installed_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX locations_company_id ON locations (company_id);

-- The WhatsApp linked-device session of each location (its keys live in sessions/).
CREATE TABLE wa_sessions (
    location_id TEXT PRIMARY KEY REFERENCES locations (location_id),
    state TEXT NOT NULL,               -- unpaired | pairing | connected | reconnecting | logged_out | parked
    reason TEXT,                       -- stable code for every non-connected state but a fresh unpaired one
    phone TEXT,                        -- E.164 of the paired phone
    paired_at BIGINT,
    state_since BIGINT NOT NULL,
    owner TEXT,                        -- instance holding the lease: never two live connections
    lease_until BIGINT,
    updated_at BIGINT NOT NULL
);

-- WhatsApp -> GHL. Committed before WhatsApp is told the message arrived.
CREATE TABLE inbox (
    inbox_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id TEXT NOT NULL,
    chat TEXT NOT NULL,
    sender TEXT NOT NULL,
    wa_message_id TEXT NOT NULL,
    from_me BIGINT NOT NULL DEFAULT 0,
    push_name TEXT,
    kind TEXT NOT NULL,                -- text | image | video | audio | voice | document | sticker | …
    body TEXT,                         -- JSON of the message content; NULL after retention
    media_ref BYTEA,                    -- what the transport needs to download the media; NULL after retention
    wa_timestamp BIGINT NOT NULL,
    state TEXT NOT NULL,               -- pending | relayed | skipped | dead
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    retry_from BIGINT NOT NULL,        -- the retry budget counts from here (reset by a replay)
    claimed_until BIGINT,              -- a worker's claim; expired claims are taken again
    last_error TEXT,
    ghl_contact_id TEXT,
    ghl_conversation_id TEXT,
    ghl_message_id TEXT,
    received_at BIGINT NOT NULL,
    relayed_at BIGINT,
    updated_at BIGINT NOT NULL,
    UNIQUE (location_id, chat, sender, wa_message_id)
);
-- Finds each chat's oldest pending message (the only one that may be relayed).
CREATE INDEX inbox_queue ON inbox (location_id, chat, inbox_id) WHERE state = 'pending';

-- GHL -> WhatsApp. One row per GHL message; a GHL retry of the same messageId is a no-op.
CREATE TABLE outbox (
    outbox_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id TEXT NOT NULL,
    ghl_message_id TEXT NOT NULL,
    ghl_contact_id TEXT,
    to_phone TEXT NOT NULL,            -- as GHL sent it; normalised when sending
    body TEXT,                         -- JSON: message text, attachment URLs, reply id; NULL after retention
    state TEXT NOT NULL,               -- pending | sending | sent | delivered | read | failed | dead
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    retry_from BIGINT NOT NULL,        -- the TTL and retry budget count from here (reset by a replay)
    claimed_until BIGINT,
    last_error TEXT,
    reported_status TEXT,              -- the last status GHL accepted; never goes backwards
    report_after BIGINT,               -- when to (re)try reporting the status to GHL
    received_at BIGINT NOT NULL,
    sent_at BIGINT,
    updated_at BIGINT NOT NULL,
    UNIQUE (location_id, ghl_message_id)
);
-- Finds each recipient's oldest unfinished message (the only one that may be sent).
CREATE INDEX outbox_queue ON outbox (location_id, to_phone, outbox_id) WHERE state IN ('pending', 'sending');
CREATE INDEX outbox_reports ON outbox (report_after) WHERE report_after IS NOT NULL;

-- One row per WhatsApp message waghl relayed or sent: WhatsApp id <-> GHL id. A GHL message
-- with attachments becomes several WhatsApp messages (parts).
CREATE TABLE message_map (
    map_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id TEXT NOT NULL,
    chat TEXT NOT NULL,
    wa_message_id TEXT NOT NULL,
    direction TEXT NOT NULL,           -- inbound | outbound
    ghl_message_id TEXT,
    outbox_id BIGINT,
    part_index BIGINT,
    status TEXT NOT NULL,              -- sending | sent | delivered | read | failed (outbound); relayed (inbound)
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (location_id, chat, wa_message_id)
);
CREATE INDEX message_map_ghl ON message_map (location_id, ghl_message_id);
-- One WhatsApp id per part of an outbound message: a second send of a part cannot be committed.
CREATE UNIQUE INDEX message_map_outbox ON message_map (outbox_id, part_index) WHERE outbox_id IS NOT NULL;

-- GHL contact and conversation of each WhatsApp phone, per location.
CREATE TABLE contacts_cache (
    location_id TEXT NOT NULL,
    phone TEXT NOT NULL,
    ghl_contact_id TEXT NOT NULL,
    ghl_conversation_id TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (location_id, phone)
);

-- Every session state transition, with its reason.
CREATE TABLE events (
    event_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX events_location ON events (location_id, event_id);

-- Webhook ids already processed (replay defence); pruned after a day.
CREATE TABLE webhook_seen (
    webhook_id TEXT PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
CREATE INDEX webhook_seen_at ON webhook_seen (seen_at);
