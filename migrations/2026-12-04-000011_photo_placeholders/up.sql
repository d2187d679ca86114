-- A ThumbHash of each processed photo (base64), the placeholder clients show while its
-- variants load. Written with the completion, in the same statement.
ALTER TABLE photos ADD COLUMN thumbhash text;
