-- Back to numbering events inside each writing transaction (migrations 000005 and 000006).

DROP FUNCTION photoq_sequence_events(integer);
DROP TRIGGER product_images_inserted_events ON product_images;
DROP TRIGGER photos_updated_events ON photos;
DROP TRIGGER photos_inserted_events ON photos;
DROP FUNCTION photoq_product_images_changed();
DROP FUNCTION photoq_photos_changed();
DROP FUNCTION photoq_refresh_products(uuid[]);

CREATE TABLE events (
    owner_id uuid NOT NULL,
    id bigint NOT NULL,
    type text NOT NULL,
    batch_id uuid,
    photo_id uuid,
    product_id uuid,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (owner_id, id)
);
CREATE INDEX events_batch_idx ON events (owner_id, batch_id, id);
-- Retention deletes by age; events are appended in time order, so a BRIN index suffices.
CREATE INDEX events_created_idx ON events USING brin (created_at);

INSERT INTO events (owner_id, id, type, batch_id, photo_id, product_id, data, created_at)
SELECT c.owner_id, c.first_id + u.ordinality - 1, u.type, u.batch_id, u.photo_id,
       u.product_id,
       jsonb_strip_nulls(CASE
           WHEN u.product_id IS NOT NULL THEN jsonb_build_object(
               'product_id', u.product_id, 'external_id', u.external_id, 'state', u.state,
               'previous_state', u.previous_state)
           WHEN u.photo_id IS NOT NULL THEN jsonb_build_object(
               'photo_id', u.photo_id, 'batch_id', u.batch_id, 'state', u.state,
               'previous_state', u.previous_state, 'attempts', u.attempts,
               'error_code', u.error_code, 'error', u.error,
               'next_attempt_at', u.next_attempt_at, 'width', u.width, 'height', u.height)
           ELSE jsonb_build_object('batch_id', u.batch_id, 'total', u.total,
               'completed', u.completed, 'failed', u.failed, 'dead', u.dead)
       END),
       u.created_at
FROM event_chunks AS c CROSS JOIN LATERAL unnest(c.events) WITH ORDINALITY AS u;

-- Changes staged and not yet numbered are lost with the sequencer.
DROP TABLE event_changes;
DROP TABLE event_chunks;
DROP FUNCTION photoq_stage_events(photoq_event[]);
DROP TYPE photoq_event;
ALTER TABLE batches DROP COLUMN first_event_id, DROP COLUMN last_event_id;

CREATE TYPE photoq_change AS (
    id uuid,
    owner_id uuid,
    batch_id uuid,
    old_state text,
    new_state text,
    attempts integer,
    error_code text,
    error text,
    next_attempt_at timestamptz,
    width integer,
    height integer
);

CREATE TYPE photoq_event AS (
    owner_id uuid,
    type text,
    batch_id uuid,
    photo_id uuid,
    product_id uuid,
    data jsonb
);

-- Locks the event counters of `owners`, in one order (creating missing ones): from here to
-- commit this transaction is the only one writing those owners' events.
CREATE FUNCTION photoq_lock_owners(owners uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_counters (owner_id)
    SELECT DISTINCT o FROM unnest(owners) AS o ORDER BY o
    ON CONFLICT (owner_id) DO NOTHING;
    PERFORM 1 FROM event_counters WHERE owner_id = ANY (owners) ORDER BY owner_id FOR UPDATE;
END
$$;

-- Appends `evs` to the log, numbering each owner's events on from its counter (locked),
-- and queues their webhook deliveries.
CREATE FUNCTION photoq_append_events(evs photoq_event[]) RETURNS void
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

-- Recomputes the status of `ids` (their owners' counters already locked) and returns an
-- event for each product whose status changed. A product's event carries the import that
-- last included it as its batch.
CREATE FUNCTION photoq_refresh_products(ids uuid[]) RETURNS photoq_event[]
LANGUAGE plpgsql AS $$
DECLARE
    evs photoq_event[] := '{}';
    p record;
    now_state text;
BEGIN
    FOR p IN
        SELECT pr.id, pr.owner_id, pr.external_id, pr.state
        FROM products AS pr WHERE pr.id = ANY (ids)
        ORDER BY pr.id FOR UPDATE
    LOOP
        now_state := photoq_product_state(p.id);
        IF now_state IS DISTINCT FROM p.state THEN
            UPDATE products SET state = now_state WHERE id = p.id;
            evs := evs || ROW(
                p.owner_id, 'product.' || now_state,
                (SELECT ip.import_id FROM import_products AS ip WHERE ip.product_id = p.id
                 ORDER BY ip.import_id DESC LIMIT 1),
                NULL, p.id,
                jsonb_strip_nulls(jsonb_build_object(
                    'product_id', p.id, 'external_id', p.external_id,
                    'state', now_state, 'previous_state', p.state)))::photoq_event;
        END IF;
    END LOOP;
    RETURN evs;
END
$$;

-- The events of one statement's photo changes: the photos', their batches' milestones and
-- their products' status changes, in that order.
CREATE FUNCTION photoq_record_changes(changed photoq_change[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    evs photoq_event[];
    b record;
    products uuid[];
    completed bigint;
    failed bigint;
    dead bigint;
BEGIN
    PERFORM photoq_lock_owners(ARRAY(SELECT DISTINCT c.owner_id FROM unnest(changed) AS c));

    evs := ARRAY(
        SELECT ROW(
            c.owner_id, 'photo.' || c.new_state, c.batch_id, c.id, NULL::uuid,
            jsonb_strip_nulls(jsonb_build_object(
                'photo_id', c.id, 'batch_id', c.batch_id, 'state', c.new_state,
                'previous_state', c.old_state, 'attempts', c.attempts,
                'error_code', c.error_code, 'error', c.error,
                'next_attempt_at', c.next_attempt_at,
                'width', c.width, 'height', c.height)))::photoq_event
        FROM unnest(changed) AS c
        ORDER BY c.id);

    FOR b IN
        SELECT bt.id, bt.owner_id, bt.started_at, bt.unfinished, d.added, d.delta, d.started
        FROM (
            SELECT c.batch_id,
                   count(*) FILTER (WHERE c.old_state IS NULL) AS added,
                   count(*) FILTER (WHERE c.new_state IN ('queued', 'processing'))
                     - count(*) FILTER (WHERE c.old_state IN ('queued', 'processing')) AS delta,
                   bool_or(c.new_state = 'processing') AS started
            FROM unnest(changed) AS c
            GROUP BY c.batch_id
        ) AS d
        JOIN batches AS bt ON bt.id = d.batch_id
        ORDER BY bt.id
        FOR UPDATE OF bt
    LOOP
        UPDATE batches
        SET total = total + b.added,
            unfinished = unfinished + b.delta,
            started_at = CASE WHEN b.started THEN coalesce(started_at, clock_timestamp())
                              ELSE started_at END,
            finished_at = CASE WHEN unfinished + b.delta = 0 THEN clock_timestamp() END
        WHERE id = b.id;
        IF b.started AND b.started_at IS NULL THEN
            evs := evs || ROW(b.owner_id, 'batch.started', b.id, NULL, NULL,
                              jsonb_build_object('batch_id', b.id))::photoq_event;
        END IF;
        IF b.unfinished + b.delta = 0 AND (b.unfinished > 0 OR b.added > 0) THEN
            SELECT count(*) FILTER (WHERE state = 'completed'),
                   count(*) FILTER (WHERE state = 'failed'),
                   count(*) FILTER (WHERE state = 'dead')
            INTO completed, failed, dead
            FROM photos WHERE batch_id = b.id;
            evs := evs || ROW(
                b.owner_id,
                CASE WHEN failed + dead > 0 THEN 'batch.completed_with_errors'
                     ELSE 'batch.completed' END,
                b.id, NULL, NULL,
                jsonb_build_object('batch_id', b.id, 'total', completed + failed + dead,
                                   'completed', completed, 'failed', failed,
                                   'dead', dead))::photoq_event;
        END IF;
    END LOOP;

    products := ARRAY(
        SELECT DISTINCT pi.product_id
        FROM product_images AS pi
        WHERE pi.photo_id IN (SELECT c.id FROM unnest(changed) AS c));
    IF cardinality(products) > 0 THEN
        evs := evs || photoq_refresh_products(products);
    END IF;

    PERFORM photoq_append_events(evs);
END
$$;

CREATE FUNCTION photoq_photos_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed photoq_change[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        changed := ARRAY(
            SELECT ROW(n.id, n.owner_id, n.batch_id, NULL, n.state, n.attempts, n.error_code,
                       n.error, n.next_attempt_at, n.width, n.height)::photoq_change
            FROM new_rows AS n);
    ELSE
        -- A change of state, or a new attempt in the same state (a job taken over from a
        -- worker that died); other updates (publishing, say) are not events.
        changed := ARRAY(
            SELECT ROW(n.id, n.owner_id, n.batch_id, o.state, n.state, n.attempts,
                       n.error_code, n.error, n.next_attempt_at, n.width,
                       n.height)::photoq_change
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
            WHERE n.state IS DISTINCT FROM o.state OR n.attempts IS DISTINCT FROM o.attempts);
    END IF;
    IF cardinality(changed) > 0 THEN
        PERFORM photoq_record_changes(changed);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER photos_inserted_events AFTER INSERT ON photos
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_photos_changed();
CREATE TRIGGER photos_updated_events AFTER UPDATE ON photos
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_photos_changed();

-- A product's images replaced (an import naming it again): its status may change.
CREATE FUNCTION photoq_product_images_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
BEGIN
    ids := ARRAY(SELECT DISTINCT n.product_id FROM new_rows AS n);
    IF cardinality(ids) > 0 THEN
        PERFORM photoq_lock_owners(
            ARRAY(SELECT DISTINCT pr.owner_id FROM products AS pr WHERE pr.id = ANY (ids)));
        PERFORM photoq_append_events(photoq_refresh_products(ids));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER product_images_inserted_events AFTER INSERT ON product_images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_product_images_changed();

