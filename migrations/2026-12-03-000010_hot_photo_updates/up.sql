-- Starting a photo (queued -> processing), recording where it was published and closing an
-- attempt change no indexed column: with room left on the row's page, PostgreSQL then
-- updates the row in place (a heap-only tuple) and adds no entry to any of its indexes.
-- The partial indexes used to read `state` in their conditions, which made every change of
-- state a full update of all five photo indexes. They now read generated columns, which
-- keep their value from `queued` to `processing`. Pages are left half empty for the
-- in-place versions (a row is updated in place once or twice, publication and start,
-- before its completion moves it; the versions it leaves are pruned when the page is next
-- read). Later pages only: existing ones fill as rows are rewritten.
ALTER TABLE photos
    ADD COLUMN unfinished boolean NOT NULL
        GENERATED ALWAYS AS (state IN ('queued', 'processing')) STORED,
    ADD COLUMN dead boolean NOT NULL GENERATED ALWAYS AS (state = 'dead') STORED;

DROP INDEX photos_unfinished_idx;
CREATE INDEX photos_unfinished_idx ON photos (id) WHERE unfinished;
DROP INDEX photos_dead_idx;
CREATE INDEX photos_dead_idx ON photos (owner_id, id) WHERE dead;

ALTER TABLE photos SET (fillfactor = 50);
ALTER TABLE photo_attempts SET (fillfactor = 70);
