-- Owners (tenants) apart from their keys. Until now a key was its own owner: its photos,
-- batches, imports, webhooks and events were the key's, and revoking it stranded them. Now
-- data belongs to an owner; an owner has any number of keys, so a key can be rotated (a new
-- key for the same owner sees the same photos, the old one is revoked) without losing data.
-- Every existing key becomes an owner of the same id, so nothing moves.
CREATE TABLE owners (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Per-owner quotas; NULL: the configured default (`quotas.*`).
    photos_per_day bigint CHECK (photos_per_day >= 0),
    bytes_stored bigint CHECK (bytes_stored >= 0)
);
INSERT INTO owners (id, name, created_at) SELECT id, name, created_at FROM api_keys;

-- What a key may do: `read` its owner's data, `upload` (photos, imports), `admin` (delete,
-- cancel, reprocess, webhooks, keys of its owner), `operator` (queue-wide aggregates).
ALTER TABLE api_keys
    ADD COLUMN owner_id uuid REFERENCES owners (id),
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{read,upload,admin}'
        CHECK (scopes <@ '{read,upload,admin,operator}'::text[] AND cardinality(scopes) > 0);
UPDATE api_keys SET owner_id = id;
UPDATE api_keys SET scopes = '{read,upload,admin,operator}' WHERE operator;
ALTER TABLE api_keys ALTER COLUMN owner_id SET NOT NULL, DROP COLUMN operator;
CREATE INDEX api_keys_owner_idx ON api_keys (owner_id);

-- Data pointed at keys; it now points at owners.
ALTER TABLE batches DROP CONSTRAINT batches_owner_id_fkey,
    ADD CONSTRAINT batches_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
ALTER TABLE photos DROP CONSTRAINT photos_owner_id_fkey,
    ADD CONSTRAINT photos_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_owner_id_fkey,
    ADD CONSTRAINT idempotency_keys_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
ALTER TABLE imports DROP CONSTRAINT imports_owner_id_fkey,
    ADD CONSTRAINT imports_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
ALTER TABLE products DROP CONSTRAINT products_owner_id_fkey,
    ADD CONSTRAINT products_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
ALTER TABLE event_counters DROP CONSTRAINT event_counters_owner_id_fkey,
    ADD CONSTRAINT event_counters_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id)
        ON DELETE CASCADE;
ALTER TABLE webhooks DROP CONSTRAINT webhooks_owner_id_fkey,
    ADD CONSTRAINT webhooks_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id);
