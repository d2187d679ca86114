-- Bytes each owner has in storage: its photos' originals (until deleted or removed by
-- retention) and their variants. Kept as a total per owner (`owners.bytes_used`) plus the
-- changes not yet added to it (`usage_changes`), appended by the triggers below so that no
-- writer waits on its owner's row. An upload under a byte quota adds its owner's changes
-- in (it locks that row anyway); retention adds everyone's.
ALTER TABLE owners ADD COLUMN bytes_used bigint NOT NULL DEFAULT 0;

CREATE TABLE usage_changes (
    seq bigserial PRIMARY KEY,
    owner_id uuid NOT NULL,
    bytes bigint NOT NULL
);
CREATE INDEX usage_changes_owner_idx ON usage_changes (owner_id);
ALTER TABLE usage_changes SET (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 1000);

-- The bytes a photo row's original holds in storage.
CREATE FUNCTION photoq_original_bytes(bytes bigint, removed timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN removed IS NULL THEN coalesce(bytes, 0) ELSE 0 END
$$;

CREATE FUNCTION photoq_photos_inserted_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_changes (owner_id, bytes)
    SELECT owner_id, sum(photoq_original_bytes(bytes, original_removed_at))
    FROM new_rows GROUP BY owner_id
    HAVING sum(photoq_original_bytes(bytes, original_removed_at)) <> 0;
    RETURN NULL;
END
$$;
CREATE TRIGGER photos_inserted_usage AFTER INSERT ON photos
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_photos_inserted_usage();

-- Row by row, and only for the rows whose original changed (an import's download, a
-- delete, retention): starting, publishing and finishing photos never call it.
CREATE FUNCTION photoq_photo_usage_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_changes (owner_id, bytes)
    VALUES (NEW.owner_id, photoq_original_bytes(NEW.bytes, NEW.original_removed_at)
                          - photoq_original_bytes(OLD.bytes, OLD.original_removed_at));
    RETURN NULL;
END
$$;
CREATE TRIGGER photos_updated_usage AFTER UPDATE ON photos
    FOR EACH ROW
    WHEN (OLD.bytes IS DISTINCT FROM NEW.bytes
          OR OLD.original_removed_at IS DISTINCT FROM NEW.original_removed_at)
    EXECUTE FUNCTION photoq_photo_usage_changed();

CREATE FUNCTION photoq_variants_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO usage_changes (owner_id, bytes)
        SELECT p.owner_id, sum(n.bytes)
        FROM new_rows AS n JOIN photos AS p ON p.id = n.photo_id
        GROUP BY p.owner_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO usage_changes (owner_id, bytes)
        SELECT p.owner_id, -sum(o.bytes)
        FROM old_rows AS o JOIN photos AS p ON p.id = o.photo_id
        GROUP BY p.owner_id;
    ELSE
        INSERT INTO usage_changes (owner_id, bytes)
        SELECT p.owner_id, sum(n.bytes - o.bytes)
        FROM new_rows AS n
        JOIN old_rows AS o ON o.photo_id = n.photo_id AND o.name = n.name
        JOIN photos AS p ON p.id = n.photo_id
        GROUP BY p.owner_id
        HAVING sum(n.bytes - o.bytes) <> 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER variants_inserted_usage AFTER INSERT ON variants
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_variants_usage();
CREATE TRIGGER variants_updated_usage AFTER UPDATE ON variants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_variants_usage();
CREATE TRIGGER variants_deleted_usage AFTER DELETE ON variants
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_variants_usage();

UPDATE owners AS o SET bytes_used = s.b
FROM (SELECT owner_id, sum(photoq_original_bytes(bytes, original_removed_at)) AS b
      FROM photos GROUP BY owner_id) AS s
WHERE o.id = s.owner_id;
UPDATE owners AS o SET bytes_used = o.bytes_used + s.b
FROM (SELECT p.owner_id, sum(v.bytes) AS b
      FROM variants AS v JOIN photos AS p ON p.id = v.photo_id GROUP BY p.owner_id) AS s
WHERE o.id = s.owner_id;
