-- Events numbered after commit by one sequencer, instead of inside each writing transaction.
--
-- Until now every writing transaction locked its owner's event counter from its first
-- change to its commit: one owner's writers ran one at a time, and each wrote its events
-- row by row (two per job). Now a writing transaction only stages its changes, one row per
-- statement (`event_changes`), and takes no lock. One sequencer at a time
-- (src/events/sequencer.rs; `photoq_sequence_events` below) takes the oldest staged rows,
-- derives the batch milestones, numbers the events per owner and appends them to the log
-- in chunks (`event_chunks`), all in one transaction. The sequencer sees only committed
-- changes and every pass commits after the one before, so an owner's ids still count up
-- 1, 2, 3, ... with no gaps and become visible in id order: a reader that has seen id N
-- never finds a smaller id appear later.

DROP TRIGGER product_images_inserted_events ON product_images;
DROP TRIGGER photos_updated_events ON photos;
DROP TRIGGER photos_inserted_events ON photos;
DROP FUNCTION photoq_product_images_changed();
DROP FUNCTION photoq_photos_changed();
DROP FUNCTION photoq_record_changes(photoq_change[]);
DROP FUNCTION photoq_refresh_products(uuid[]);
DROP FUNCTION photoq_append_events(photoq_event[]);
DROP FUNCTION photoq_lock_owners(uuid[]);
DROP TYPE photoq_event;
DROP TYPE photoq_change;

-- One event, typed (clients get it as JSON, rendered by the API: src/events/mod.rs). Which
-- fields are set depends on the type: a photo's state change, a batch milestone (counts at
-- the end), a product's status change.
CREATE TYPE photoq_event AS (
    type text,
    created_at timestamptz,
    owner_id uuid,
    batch_id uuid,
    photo_id uuid,
    product_id uuid,
    state text,
    previous_state text,
    attempts integer,
    error_code text,
    error text,
    next_attempt_at timestamptz,
    width integer,
    height integer,
    external_id text,
    total integer,
    completed integer,
    failed integer,
    dead integer
);

-- `evs` with each event's position (1, 2, ...).
CREATE FUNCTION photoq_positions(evs photoq_event[]) RETURNS TABLE (e photoq_event, pos bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(u.type, u.created_at, u.owner_id, u.batch_id, u.photo_id, u.product_id,
               u.state, u.previous_state, u.attempts, u.error_code, u.error,
               u.next_attempt_at, u.width, u.height, u.external_id, u.total, u.completed,
               u.failed, u.dead)::photoq_event,
           u.ordinality
    FROM unnest(evs) WITH ORDINALITY AS u
$$;

-- Changes committed and not yet numbered: one row per writing statement, its events in
-- order (photo changes, then the product status changes they caused). Rows come and go
-- quickly: vacuumed often, stored without compression.
CREATE TABLE event_changes (
    seq bigserial PRIMARY KEY,
    events photoq_event[] NOT NULL
);
ALTER TABLE event_changes ALTER COLUMN events SET STORAGE EXTERNAL;
ALTER TABLE event_changes SET (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 1000);

-- The log: an owner's events from `first_id` to `last_id`, in order, in chunks of at most
-- 1,000 (one sequencer pass writes one or more chunks per owner). `created_at` is its last
-- event's; retention removes whole chunks.
CREATE TABLE event_chunks (
    owner_id uuid NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    events photoq_event[] NOT NULL,
    PRIMARY KEY (owner_id, last_id),
    CHECK (last_id - first_id + 1 = cardinality(events))
);
CREATE INDEX event_chunks_created_idx ON event_chunks USING brin (created_at);

-- Where a batch's events are in its owner's log (a batch's stream reads from there).
ALTER TABLE batches ADD COLUMN first_event_id bigint, ADD COLUMN last_event_id bigint;

INSERT INTO event_chunks (owner_id, first_id, last_id, created_at, events)
SELECT e.owner_id, e.id, e.id, e.created_at,
       ARRAY[ROW(e.type, e.created_at, e.owner_id, e.batch_id, e.photo_id, e.product_id,
                 e.data->>'state', e.data->>'previous_state', (e.data->>'attempts')::int,
                 e.data->>'error_code', e.data->>'error',
                 (e.data->>'next_attempt_at')::timestamptz, (e.data->>'width')::int,
                 (e.data->>'height')::int, e.data->>'external_id', (e.data->>'total')::int,
                 (e.data->>'completed')::int, (e.data->>'failed')::int,
                 (e.data->>'dead')::int)::photoq_event]
FROM events AS e;

UPDATE batches AS b SET first_event_id = e.first, last_event_id = e.last
FROM (SELECT batch_id, min(id) AS first, max(id) AS last FROM events
      WHERE batch_id IS NOT NULL GROUP BY batch_id) AS e
WHERE b.id = e.batch_id;

DROP TABLE events;

-- Recomputes the status of `ids` (locking them, in id order) and returns an event for each
-- product whose status changed. A product's event carries the import that last included
-- it as its batch.
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
                'product.' || now_state, clock_timestamp(), p.owner_id,
                (SELECT ip.import_id FROM import_products AS ip WHERE ip.product_id = p.id
                 ORDER BY ip.import_id DESC LIMIT 1),
                NULL, p.id, now_state, p.state, NULL, NULL, NULL, NULL, NULL, NULL,
                p.external_id, NULL, NULL, NULL, NULL)::photoq_event;
        END IF;
    END LOOP;
    RETURN evs;
END
$$;

-- Stages the photo changes of one statement: a change of state, or a new attempt in the
-- same state (a job taken over from a worker that died); other updates (publishing, say)
-- are not events. Imported photos belong to products, whose status follows their photos'
-- (looked up only when the statement changed imported photos).
--
-- The transition tables are joined by dynamic SQL, planned at every call (a cached plan
-- would keep the join chosen for the first statement's few rows), with hash and merge joins
-- allowed even where the writer's transaction turned them off (db::jobs): a nested loop
-- over two transition tables compares every row with every other.
CREATE FUNCTION photoq_photos_changed() RETURNS trigger
LANGUAGE plpgsql
SET enable_hashjoin = on
SET enable_mergejoin = on
AS $$
DECLARE
    evs photoq_event[];
    products uuid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE
            'SELECT ARRAY(
                 SELECT ROW(''photo.'' || n.state, $1, n.owner_id, n.batch_id, n.id, NULL,
                            n.state, NULL, n.attempts, n.error_code, n.error,
                            n.next_attempt_at, n.width, n.height, NULL, NULL, NULL, NULL,
                            NULL)::photoq_event
                 FROM new_rows AS n)'
            INTO evs USING clock_timestamp();
    ELSE
        EXECUTE
            'SELECT ARRAY(
                 SELECT ROW(''photo.'' || n.state, $1, n.owner_id, n.batch_id, n.id, NULL,
                            n.state, o.state, n.attempts, n.error_code, n.error,
                            n.next_attempt_at, n.width, n.height, NULL, NULL, NULL, NULL,
                            NULL)::photoq_event
                 FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
                 WHERE n.state IS DISTINCT FROM o.state
                    OR n.attempts IS DISTINCT FROM o.attempts)'
            INTO evs USING clock_timestamp();
        IF cardinality(evs) > 0
           AND EXISTS (SELECT 1 FROM new_rows AS n WHERE n.source_url IS NOT NULL) THEN
            products := ARRAY(
                SELECT DISTINCT pi.product_id
                FROM product_images AS pi
                WHERE pi.photo_id IN (SELECT e.photo_id FROM unnest(evs) AS e
                                      WHERE e.state IS DISTINCT FROM e.previous_state));
            IF cardinality(products) > 0 THEN
                evs := evs || photoq_refresh_products(products);
            END IF;
        END IF;
    END IF;
    IF cardinality(evs) > 0 THEN
        INSERT INTO event_changes (events) VALUES (evs);
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
    evs photoq_event[];
BEGIN
    evs := photoq_refresh_products(ARRAY(SELECT DISTINCT n.product_id FROM new_rows AS n));
    IF cardinality(evs) > 0 THEN
        INSERT INTO event_changes (events) VALUES (evs);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER product_images_inserted_events AFTER INSERT ON product_images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_product_images_changed();

-- One sequencer pass: takes the oldest staged rows (at most `max_rows`), keeps the batches'
-- progress (photos in all, unfinished, first start, end) and derives their milestones,
-- numbers every event per owner, appends them to the log, queues their webhook deliveries
-- and notes where each batch's events are. Returns the rows taken. Passes run one at a
-- time (the transaction-scoped advisory lock): each sees the previous one's work.
--
-- A milestone goes right after the event that caused it: `batch.started` after the
-- batch's first `photo.processing`, the end after the batch's last photo event of the
-- pass. The end's counts are the photos' states when the pass runs.
CREATE FUNCTION photoq_sequence_events(max_rows integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    taken integer;
    staged photoq_event[];
    milestones photoq_event[] := '{}';
    milestone_pos bigint[] := '{}';
    batch record;
    n_completed integer;
    n_failed integer;
    n_dead integer;
BEGIN
    -- 'photoq_sequence_events' as a number: passes exclude each other.
    PERFORM pg_advisory_xact_lock(7019823456781001);

    WITH gone AS (
        DELETE FROM event_changes
        WHERE seq IN (SELECT seq FROM event_changes ORDER BY seq LIMIT max_rows)
        RETURNING seq, events
    )
    SELECT (SELECT count(*) FROM gone)::integer,
           ARRAY(SELECT p.e
                 FROM gone AS g CROSS JOIN LATERAL photoq_positions(g.events) AS p
                 ORDER BY g.seq, p.pos)
    INTO taken, staged;
    IF taken = 0 THEN
        RETURN 0;
    END IF;

    FOR batch IN
        SELECT bt.id, bt.owner_id, bt.started_at, bt.unfinished, d.added, d.delta,
               d.first_start, d.last_pos
        FROM (
            SELECT s.batch_id,
                   count(*) FILTER (WHERE s.previous_state IS NULL) AS added,
                   count(*) FILTER (WHERE s.state IN ('queued', 'processing'))
                     - count(*) FILTER (WHERE s.previous_state IN ('queued', 'processing'))
                     AS delta,
                   min(s.ordinality) FILTER (WHERE s.state = 'processing') AS first_start,
                   max(s.ordinality) AS last_pos
            FROM unnest(staged) WITH ORDINALITY AS s
            WHERE s.photo_id IS NOT NULL
            GROUP BY s.batch_id
        ) AS d
        JOIN batches AS bt ON bt.id = d.batch_id
        ORDER BY bt.id
    LOOP
        UPDATE batches
        SET total = total + batch.added,
            unfinished = unfinished + batch.delta,
            started_at = CASE WHEN batch.first_start IS NOT NULL
                              THEN coalesce(started_at, clock_timestamp())
                              ELSE started_at END,
            finished_at = CASE WHEN unfinished + batch.delta = 0 THEN clock_timestamp() END
        WHERE id = batch.id;
        IF batch.first_start IS NOT NULL AND batch.started_at IS NULL THEN
            milestones := milestones || ROW(
                'batch.started', clock_timestamp(), batch.owner_id, batch.id, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL)::photoq_event;
            milestone_pos := milestone_pos || batch.first_start;
        END IF;
        IF batch.unfinished + batch.delta = 0 AND (batch.unfinished > 0 OR batch.added > 0) THEN
            SELECT count(*) FILTER (WHERE state = 'completed'),
                   count(*) FILTER (WHERE state = 'failed'),
                   count(*) FILTER (WHERE state = 'dead')
            INTO n_completed, n_failed, n_dead
            FROM photos WHERE batch_id = batch.id;
            milestones := milestones || ROW(
                CASE WHEN n_failed + n_dead > 0 THEN 'batch.completed_with_errors'
                     ELSE 'batch.completed' END,
                clock_timestamp(), batch.owner_id, batch.id, NULL, NULL, NULL, NULL, NULL,
                NULL, NULL, NULL, NULL, NULL, NULL, n_completed + n_failed + n_dead, n_completed,
                n_failed, n_dead)::photoq_event;
            milestone_pos := milestone_pos || batch.last_pos;
        END IF;
    END LOOP;

    WITH merged AS (
        SELECT s.e, s.pos, 0 AS k FROM photoq_positions(staged) AS s
        UNION ALL
        SELECT m.e, milestone_pos[m.pos], 1 FROM photoq_positions(milestones) AS m
    ),
    ordered AS (
        SELECT (m.e).owner_id AS owner_id, m.e,
               row_number() OVER (ORDER BY m.pos, m.k) AS ord
        FROM merged AS m
    ),
    per_owner AS (SELECT owner_id, count(*) AS n FROM ordered GROUP BY owner_id),
    bumped AS (
        INSERT INTO event_counters AS c (owner_id, last_id)
        SELECT owner_id, n FROM per_owner
        ON CONFLICT (owner_id) DO UPDATE SET last_id = c.last_id + excluded.last_id
        RETURNING c.owner_id, c.last_id
    ),
    numbered AS (
        SELECT o.owner_id, o.e,
               u.last_id - p.n + row_number() OVER (PARTITION BY o.owner_id ORDER BY o.ord)
                 AS id
        FROM ordered AS o
        JOIN per_owner AS p ON p.owner_id = o.owner_id
        JOIN bumped AS u ON u.owner_id = o.owner_id
    ),
    chunks AS (
        INSERT INTO event_chunks (owner_id, first_id, last_id, created_at, events)
        SELECT owner_id, min(id), max(id), max((e).created_at), array_agg(e ORDER BY id)
        FROM numbered
        GROUP BY owner_id, (id - 1) / 1000
    ),
    deliveries AS (
        INSERT INTO webhook_deliveries (id, webhook_id, owner_id, event_id, state,
                                        next_attempt_at, created_at, updated_at)
        SELECT gen_random_uuid(), w.id, w.owner_id, n.id, 'pending', clock_timestamp(),
               clock_timestamp(), clock_timestamp()
        FROM numbered AS n
        JOIN webhooks AS w ON w.owner_id = n.owner_id AND w.deleted_at IS NULL
         AND (cardinality(w.event_types) = 0 OR (n.e).type = ANY (w.event_types))
    )
    UPDATE batches AS bt
    SET first_event_id = coalesce(bt.first_event_id, f.first), last_event_id = f.last
    FROM (SELECT (e).batch_id AS batch_id, min(id) AS first, max(id) AS last
          FROM numbered WHERE (e).batch_id IS NOT NULL GROUP BY (e).batch_id) AS f
    WHERE bt.id = f.batch_id;

    RETURN taken;
END
$$;
