ALTER TABLE photo_attempts RESET (fillfactor);
ALTER TABLE photos RESET (fillfactor);
DROP INDEX photos_dead_idx;
DROP INDEX photos_unfinished_idx;
ALTER TABLE photos DROP COLUMN dead, DROP COLUMN unfinished;
CREATE INDEX photos_unfinished_idx ON photos (id) WHERE state IN ('queued', 'processing');
CREATE INDEX photos_dead_idx ON photos (owner_id, id) WHERE state = 'dead';
