-- Retention: originals can be removed some days after their photo completed (the photo
-- keeps its variants and data), failed, dead and cancelled photos deleted some days after
-- they ended, old idempotency records, events and webhook deliveries removed. One process
-- at a time sweeps each kind; `retention_rounds` says when each was last claimed.
ALTER TABLE photos ADD COLUMN original_removed_at timestamptz;

-- What retention will look at a finished photo for: its original ('original', completed
-- with the original still stored) or the photo itself ('unsuccessful'). A generated column
-- (like `unfinished`) so that the index below reads no column a start or a publication
-- changes, and those updates stay heap-only. (Not in src/db/schema.rs: diesel's tables stop
-- at 32 columns; db::retention reads it in SQL.)
ALTER TABLE photos ADD COLUMN retained text GENERATED ALWAYS AS (
    CASE
        WHEN state IN ('failed', 'dead', 'cancelled') THEN 'unsuccessful'
        WHEN state = 'completed' AND original_removed_at IS NULL THEN 'original'
    END) STORED;
CREATE INDEX photos_retained_idx ON photos (retained, completed_at) WHERE retained IS NOT NULL;

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys USING brin (created_at);
CREATE INDEX webhook_deliveries_ended_idx ON webhook_deliveries (updated_at)
    WHERE state IN ('delivered', 'dead');

CREATE TABLE retention_rounds (
    name text PRIMARY KEY,
    claimed_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO retention_rounds (name) VALUES ('rows'), ('orphans');
