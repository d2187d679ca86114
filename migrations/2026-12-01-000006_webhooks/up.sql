-- Webhooks (src/webhooks/): an owner's endpoints, one delivery per (webhook, event) created
-- by the event log itself in the transaction that writes the event, and every attempt.

CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL REFERENCES api_keys (id),
    url text NOT NULL,
    -- The event types delivered; empty is every type.
    event_types text[] NOT NULL,
    -- `whsec_<base64>`: the HMAC key deliveries are signed with. Shown once at creation.
    secret text NOT NULL,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz
);
CREATE INDEX webhooks_owner_idx ON webhooks (owner_id) WHERE deleted_at IS NULL;

-- A delivery is a small job: `pending` until due, `delivering` while a worker holds it
-- (until `locked_until`: a worker that died gives it up then), then `delivered` or `dead`.
CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks (id),
    owner_id uuid NOT NULL,
    event_id bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'delivering', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    locked_until timestamptz,
    last_error text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state IN ('pending', 'delivering');

CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    -- The receiver's HTTP status, if it answered.
    status integer,
    error text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Appending events now also queues their deliveries, in the same transaction.
CREATE OR REPLACE FUNCTION photoq_append_events(evs photoq_event[]) RETURNS void
LANGUAGE sql AS $$
    WITH e AS (
        SELECT x.*
        FROM unnest(evs) WITH ORDINALITY AS x(owner_id, type, batch_id, photo_id, product_id,
                                              data, ord)
    ),
    n AS (SELECT owner_id, count(*) AS c FROM e GROUP BY owner_id),
    bumped AS (
        UPDATE event_counters AS ec SET last_id = ec.last_id + n.c
        FROM n WHERE ec.owner_id = n.owner_id
        RETURNING ec.owner_id, ec.last_id - n.c AS base
    ),
    written AS (
        INSERT INTO events (owner_id, id, type, batch_id, photo_id, product_id, data)
        SELECT e.owner_id, b.base + row_number() OVER (PARTITION BY e.owner_id ORDER BY e.ord),
               e.type, e.batch_id, e.photo_id, e.product_id, e.data
        FROM e JOIN bumped AS b ON b.owner_id = e.owner_id
        RETURNING owner_id, id, type
    )
    INSERT INTO webhook_deliveries (id, webhook_id, owner_id, event_id, state, next_attempt_at,
                                    created_at, updated_at)
    SELECT gen_random_uuid(), w.id, w.owner_id, written.id, 'pending', clock_timestamp(),
           clock_timestamp(), clock_timestamp()
    FROM written
    JOIN webhooks AS w ON w.owner_id = written.owner_id AND w.deleted_at IS NULL
     AND (cardinality(w.event_types) = 0 OR written.type = ANY (w.event_types))
$$;
