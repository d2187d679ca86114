DROP INDEX photos_dead_idx;
DROP TABLE idempotency_keys;
DROP TABLE photo_attempts;
ALTER TABLE photos DROP COLUMN next_attempt_at, DROP COLUMN published_epoch;
