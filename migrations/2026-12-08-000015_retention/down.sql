DROP TABLE retention_rounds;
DROP INDEX webhook_deliveries_ended_idx;
DROP INDEX idempotency_keys_created_idx;
DROP INDEX photos_retained_idx;
ALTER TABLE photos DROP COLUMN retained, DROP COLUMN original_removed_at;
