-- Duplicates: a photo whose bytes its owner has already had processed, with the same
-- variant configuration, reuses that photo's results (copies of its variants) instead of
-- being processed again. `variant_fingerprint` names the configuration a completed photo's
-- variants were made with; `reused_from` the photo whose results a photo took (cleared if
-- that one is ever deleted: the copies are the reusing photo's own).
ALTER TABLE photos
    ADD COLUMN variant_fingerprint text,
    ADD COLUMN reused_from uuid REFERENCES photos (id) ON DELETE SET NULL;
-- The condition reads the fingerprint, which only a completion writes, not `state`: starting
-- a photo stays an in-place update (see 2026-12-03-000010_hot_photo_updates).
CREATE INDEX photos_reusable ON photos (owner_id, sha256, variant_fingerprint)
    WHERE variant_fingerprint IS NOT NULL;
