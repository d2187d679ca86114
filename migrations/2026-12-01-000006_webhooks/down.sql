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
    )
    INSERT INTO events (owner_id, id, type, batch_id, photo_id, product_id, data)
    SELECT e.owner_id, b.base + row_number() OVER (PARTITION BY e.owner_id ORDER BY e.ord),
           e.type, e.batch_id, e.photo_id, e.product_id, e.data
    FROM e JOIN bumped AS b ON b.owner_id = e.owner_id
$$;
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
