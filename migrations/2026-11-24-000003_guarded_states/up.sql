-- The guarded state machine (src/state.rs): every transition is a compare-and-set on the
-- state and on the attempt it expects, and recovery is decided per stream entry instead of
-- per Redis epoch.
ALTER TABLE photos
    DROP COLUMN published_epoch,
    -- The stream entry the job was last published as, or is running from.
    ADD COLUMN entry_id text,
    -- When the job was last put on the stream (NULL: never).
    ADD COLUMN published_at timestamptz,
    -- The attempt running now (photo_attempts.id); set exactly while `processing`.
    ADD COLUMN attempt_id bigint;

-- A photo left `processing` by the previous version: its latest attempt is the one running.
UPDATE photos AS p
SET attempt_id = (SELECT max(a.id) FROM photo_attempts AS a WHERE a.photo_id = p.id)
WHERE p.state = 'processing';
UPDATE photos SET state = 'queued' WHERE state = 'processing' AND attempt_id IS NULL;

ALTER TABLE photos
    ADD CONSTRAINT photos_attempt_check
    CHECK ((state = 'processing') = (attempt_id IS NOT NULL)),
    ADD CONSTRAINT photos_attempts_check CHECK (attempts >= 0);
