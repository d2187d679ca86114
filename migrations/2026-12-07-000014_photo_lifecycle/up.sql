-- Photos can be cancelled (a batch cancelled before they started) and deleted. A deleted
-- photo stays as a tombstone: its id, batch, owner, state and times, so that its batch's
-- counts and its owner's event log stay whole; its bytes, variants, file name, EXIF, hash,
-- placeholder and source URL are gone. Reads treat it as absent (404).
ALTER TABLE photos DROP CONSTRAINT photos_state_check,
    ADD CONSTRAINT photos_state_check CHECK (state IN ('queued', 'processing', 'completed',
                                                      'failed', 'dead', 'cancelled',
                                                      'deleted'));
ALTER TABLE photos ADD COLUMN deleted_at timestamptz;
-- A tombstone keeps neither its source nor its bytes' description.
ALTER TABLE photos DROP CONSTRAINT photos_source_check,
    ADD CONSTRAINT photos_source_check
    CHECK (state = 'deleted' OR source_url IS NOT NULL
           OR (content_type IS NOT NULL AND bytes IS NOT NULL AND sha256 IS NOT NULL));
-- A batch (or import) deleted as a whole is gone from reads too.
ALTER TABLE batches ADD COLUMN deleted_at timestamptz;

-- A product's status leaves its deleted images out; a cancelled image is an error.
CREATE OR REPLACE FUNCTION photoq_product_state(product uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN bool_or(ph.state IN ('queued', 'processing')) THEN 'processing'
        WHEN bool_or(ph.state IN ('failed', 'dead', 'cancelled')) THEN 'process_error'
        ELSE 'processed' END
    FROM product_images AS pi
    JOIN photos AS ph ON ph.id = pi.photo_id
    WHERE pi.product_id = product AND ph.state <> 'deleted'
$$;
