-- Operator keys (`photoq keys create --operator`) also see queue-wide aggregates: workers,
-- lag, counts and recent error codes over every owner. Never another owner's photos.
ALTER TABLE api_keys ADD COLUMN operator boolean NOT NULL DEFAULT false;
