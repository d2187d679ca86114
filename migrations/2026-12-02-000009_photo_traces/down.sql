ALTER TABLE photos DROP COLUMN trace_parent;
