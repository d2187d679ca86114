ALTER TABLE webhooks DROP CONSTRAINT webhooks_owner_id_fkey,
    ADD CONSTRAINT webhooks_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
ALTER TABLE event_counters DROP CONSTRAINT event_counters_owner_id_fkey,
    ADD CONSTRAINT event_counters_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id)
        ON DELETE CASCADE;
ALTER TABLE products DROP CONSTRAINT products_owner_id_fkey,
    ADD CONSTRAINT products_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
ALTER TABLE imports DROP CONSTRAINT imports_owner_id_fkey,
    ADD CONSTRAINT imports_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_owner_id_fkey,
    ADD CONSTRAINT idempotency_keys_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
ALTER TABLE photos DROP CONSTRAINT photos_owner_id_fkey,
    ADD CONSTRAINT photos_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
ALTER TABLE batches DROP CONSTRAINT batches_owner_id_fkey,
    ADD CONSTRAINT batches_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES api_keys (id);
DROP INDEX api_keys_owner_idx;
ALTER TABLE api_keys ADD COLUMN operator boolean NOT NULL DEFAULT false;
UPDATE api_keys SET operator = 'operator' = ANY (scopes);
ALTER TABLE api_keys DROP COLUMN scopes, DROP COLUMN owner_id;
DROP TABLE owners;
