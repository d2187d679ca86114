DROP INDEX photos_reusable;
ALTER TABLE photos DROP COLUMN reused_from, DROP COLUMN variant_fingerprint;
