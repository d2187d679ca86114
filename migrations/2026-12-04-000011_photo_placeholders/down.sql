ALTER TABLE photos DROP COLUMN thumbhash;
