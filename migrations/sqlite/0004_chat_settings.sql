-- What waghl learned of each WhatsApp chat's settings from the chat itself.
-- migrations/sqlite and migrations/postgres carry this same file.

-- The chat's disappearing-messages timer (seconds; 0 = off), as the contact's last message or
-- timer change said. waghl's own sends into the chat carry it, as WhatsApp's clients do.
CREATE TABLE chat_settings (
    location_id TEXT NOT NULL,
    chat TEXT NOT NULL,
    expiration_secs BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (location_id, chat)
);
