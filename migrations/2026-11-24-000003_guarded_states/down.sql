ALTER TABLE photos
    DROP CONSTRAINT photos_attempts_check,
    DROP CONSTRAINT photos_attempt_check,
    DROP COLUMN attempt_id,
    DROP COLUMN published_at,
    DROP COLUMN entry_id,
    ADD COLUMN published_epoch text;
