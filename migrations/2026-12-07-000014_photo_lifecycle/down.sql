CREATE OR REPLACE FUNCTION photoq_product_state(product uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN bool_or(ph.state IN ('queued', 'processing')) THEN 'processing'
        WHEN bool_or(ph.state IN ('failed', 'dead')) THEN 'process_error'
        ELSE 'processed' END
    FROM product_images AS pi
    JOIN photos AS ph ON ph.id = pi.photo_id
    WHERE pi.product_id = product
$$;
DELETE FROM variants WHERE photo_id IN (SELECT id FROM photos WHERE state IN ('cancelled', 'deleted'));
DELETE FROM product_images WHERE photo_id IN (SELECT id FROM photos WHERE state = 'deleted');
DELETE FROM photos WHERE state = 'deleted';
UPDATE photos SET state = 'failed' WHERE state = 'cancelled';
ALTER TABLE photos DROP CONSTRAINT photos_source_check,
    ADD CONSTRAINT photos_source_check
    CHECK (source_url IS NOT NULL OR (content_type IS NOT NULL AND bytes IS NOT NULL
                                      AND sha256 IS NOT NULL));
ALTER TABLE batches DROP COLUMN deleted_at;
ALTER TABLE photos DROP COLUMN deleted_at, DROP CONSTRAINT photos_state_check,
    ADD CONSTRAINT photos_state_check CHECK (state IN ('queued', 'processing', 'completed',
                                                      'failed', 'dead'));
