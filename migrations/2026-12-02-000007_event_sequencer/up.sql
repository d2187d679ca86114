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

-- Changes committed and not yet numbered: one row per writing statement and owner, its
-- events in order (photo changes; the product status changes they caused follow in a row
-- of their own). Rows come and go quickly: vacuumed often, stored without compression.
CREATE TABLE event_changes (
    seq bigserial PRIMARY KEY,
    owner_id uuid NOT NULL,
    events photoq_event[] NOT NULL
);
ALTER TABLE event_changes ALTER COLUMN events SET STORAGE EXTERNAL;
ALTER TABLE event_changes SET (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 1000);

-- The log: an owner's events from `first_id` to `last_id`, in order, in chunks (each
-- staged row becomes one, as it is: the sequencer never takes the events apart).
-- `created_at` is when the chunk was appended; retention removes whole chunks.
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
-- Read far more often than written (every API process's feeds, followers catching up):
-- lz4 decompresses several times faster than the default, where the server has it.
DO $$
BEGIN
    ALTER TABLE event_chunks ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END
$$;

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

-- Stages `evs`, one row per owner, in order.
CREATE FUNCTION photoq_stage_events(evs photoq_event[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO event_changes (owner_id, events)
    SELECT (evs[i]).owner_id, array_agg(evs[i] ORDER BY i)
    FROM generate_subscripts(evs, 1) AS i
    GROUP BY 1
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
    products uuid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        EXECUTE
            'INSERT INTO event_changes (owner_id, events)
             SELECT n.owner_id,
                    array_agg(ROW(''photo.'' || n.state, $1, n.owner_id, n.batch_id, n.id,
                                  NULL, n.state, NULL, n.attempts, n.error_code, n.error,
                                  n.next_attempt_at, n.width, n.height, NULL, NULL, NULL,
                                  NULL, NULL)::photoq_event)
             FROM new_rows AS n
             GROUP BY n.owner_id'
            USING clock_timestamp();
        RETURN NULL;
    END IF;
    EXECUTE
        'INSERT INTO event_changes (owner_id, events)
         SELECT n.owner_id,
                array_agg(ROW(''photo.'' || n.state, $1, n.owner_id, n.batch_id, n.id, NULL,
                              n.state, o.state, n.attempts, n.error_code, n.error,
                              n.next_attempt_at, n.width, n.height, NULL, NULL, NULL, NULL,
                              NULL)::photoq_event)
         FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
         WHERE n.state IS DISTINCT FROM o.state OR n.attempts IS DISTINCT FROM o.attempts
         GROUP BY n.owner_id'
        USING clock_timestamp();
    IF EXISTS (SELECT 1 FROM new_rows AS n WHERE n.source_url IS NOT NULL) THEN
        EXECUTE
            'SELECT ARRAY(
                 SELECT DISTINCT pi.product_id
                 FROM new_rows AS n
                 JOIN old_rows AS o ON o.id = n.id
                 JOIN product_images AS pi ON pi.photo_id = n.id
                 WHERE n.source_url IS NOT NULL AND n.state IS DISTINCT FROM o.state)'
            INTO products;
        PERFORM photoq_stage_events(photoq_refresh_products(products));
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
BEGIN
    PERFORM photoq_stage_events(
        photoq_refresh_products(ARRAY(SELECT DISTINCT n.product_id FROM new_rows AS n)));
    RETURN NULL;
END
$$;

CREATE TRIGGER product_images_inserted_events AFTER INSERT ON product_images
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION photoq_product_images_changed();

-- One sequencer pass, in one statement (one snapshot): takes the oldest staged rows (at
-- most `max_rows`), keeps the batches' progress (photos in all, unfinished, first start,
-- end) and derives their milestones, numbers the events per owner, appends each staged
-- row's events as one chunk (followed by the milestones it caused), queues the webhook
-- deliveries and notes which ids each batch's events lie between. Returns the rows taken.
-- Passes run one at a time (the transaction-scoped advisory lock): each sees the previous
-- one's work.
--
-- `batch.started` follows the staged row holding the batch's first `photo.processing`, the
-- end follows the row holding its last photo event of the pass; the end's counts are the
-- photos' states when the pass runs.
CREATE FUNCTION photoq_sequence_events(max_rows integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    taken integer;
BEGIN
    -- 'photoq_sequence_events' as a number: passes exclude each other.
    PERFORM pg_advisory_xact_lock(7019823456781001);
    WITH gone AS (
        DELETE FROM event_changes
        WHERE seq IN (SELECT seq FROM event_changes ORDER BY seq LIMIT max_rows)
        RETURNING seq, owner_id, events, cardinality(events) AS n
    ),
    -- Per batch: photos added, change in unfinished photos, the staged rows of its first
    -- start, first event and last event.
    d AS (
        SELECT u.batch_id,
               count(*) FILTER (WHERE u.photo_id IS NOT NULL) AS photo_events,
               count(*) FILTER (WHERE u.photo_id IS NOT NULL
                                  AND u.previous_state IS NULL) AS added,
               count(*) FILTER (WHERE u.photo_id IS NOT NULL
                                  AND u.state IN ('queued', 'processing'))
                 - count(*) FILTER (WHERE u.photo_id IS NOT NULL
                                      AND u.previous_state IN ('queued', 'processing'))
                 AS delta,
               min(g.seq) FILTER (WHERE u.photo_id IS NOT NULL
                                    AND u.state = 'processing') AS start_seq,
               min(g.seq) AS first_seq,
               max(g.seq) AS last_seq
        FROM gone AS g CROSS JOIN LATERAL unnest(g.events) AS u
        WHERE u.batch_id IS NOT NULL
        GROUP BY u.batch_id
    ),
    before AS (
        SELECT bt.id, bt.owner_id, bt.started_at, bt.unfinished, d.*
        FROM batches AS bt JOIN d ON d.batch_id = bt.id
    ),
    milestones AS (
        SELECT b.start_seq AS seq, 1 AS k, b.id AS tie, b.owner_id,
               ROW('batch.started', clock_timestamp(), b.owner_id, b.id, NULL, NULL, NULL,
                   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                   NULL)::photoq_event AS e
        FROM before AS b
        WHERE b.start_seq IS NOT NULL AND b.started_at IS NULL
        UNION ALL
        SELECT b.last_seq, 2, b.id, b.owner_id,
               ROW(CASE WHEN c.failed + c.dead > 0 THEN 'batch.completed_with_errors'
                        ELSE 'batch.completed' END,
                   clock_timestamp(), b.owner_id, b.id, NULL, NULL, NULL, NULL, NULL, NULL,
                   NULL, NULL, NULL, NULL, NULL, c.completed + c.failed + c.dead,
                   c.completed, c.failed, c.dead)::photoq_event
        FROM before AS b
        CROSS JOIN LATERAL (
            SELECT count(*) FILTER (WHERE ph.state = 'completed')::int AS completed,
                   count(*) FILTER (WHERE ph.state = 'failed')::int AS failed,
                   count(*) FILTER (WHERE ph.state = 'dead')::int AS dead
            FROM photos AS ph WHERE ph.batch_id = b.id) AS c
        WHERE b.unfinished + b.delta = 0 AND (b.unfinished > 0 OR b.added > 0)
    ),
    pieces AS (
        SELECT g.seq, 0 AS k, NULL::uuid AS tie, g.owner_id, g.events, g.n FROM gone AS g
        UNION ALL
        SELECT m.seq, m.k, m.tie, m.owner_id, ARRAY[m.e], 1 FROM milestones AS m
    ),
    per_owner AS (SELECT owner_id, sum(n) AS n FROM pieces GROUP BY owner_id),
    bumped AS (
        INSERT INTO event_counters AS c (owner_id, last_id)
        SELECT owner_id, n FROM per_owner
        ON CONFLICT (owner_id) DO UPDATE SET last_id = c.last_id + excluded.last_id
        RETURNING c.owner_id, c.last_id
    ),
    numbered AS (
        SELECT p.seq, p.owner_id, p.events, p.n,
               u.last_id - o.n
                 + sum(p.n) OVER (PARTITION BY p.owner_id ORDER BY p.seq, p.k, p.tie
                                  ROWS UNBOUNDED PRECEDING) AS last
        FROM pieces AS p
        JOIN per_owner AS o ON o.owner_id = p.owner_id
        JOIN bumped AS u ON u.owner_id = p.owner_id
    ),
    chunks AS (
        INSERT INTO event_chunks (owner_id, first_id, last_id, created_at, events)
        SELECT owner_id, last - n + 1, last, clock_timestamp(), events FROM numbered
    ),
    deliveries AS (
        INSERT INTO webhook_deliveries (id, webhook_id, owner_id, event_id, state,
                                        next_attempt_at, created_at, updated_at)
        SELECT gen_random_uuid(), w.id, w.owner_id, nb.last - nb.n + u.ordinality, 'pending',
               clock_timestamp(), clock_timestamp(), clock_timestamp()
        FROM numbered AS nb
        JOIN webhooks AS w ON w.owner_id = nb.owner_id AND w.deleted_at IS NULL
        CROSS JOIN LATERAL unnest(nb.events) WITH ORDINALITY AS u
        WHERE cardinality(w.event_types) = 0 OR u.type = ANY (w.event_types)
    ),
    ends AS (
        SELECT d.batch_id, d.first_seq AS seq, true AS first FROM d
        UNION ALL
        SELECT d.batch_id, d.last_seq, false FROM d
    ),
    spans AS (
        SELECT e.batch_id,
               min(n.last - n.n + 1) FILTER (WHERE e.first) AS first_id,
               max(n.last) FILTER (WHERE NOT e.first) AS last_id
        FROM ends AS e JOIN numbered AS n ON n.seq = e.seq
        GROUP BY e.batch_id
    ),
    progress AS (
        -- Counters of the batches whose photos changed; and for every batch, the ids its
        -- events lie between (the staged rows that hold its first and last, whole): where
        -- a reader of one batch looks.
        UPDATE batches AS bt
        SET total = bt.total + b.added,
            unfinished = bt.unfinished + b.delta,
            started_at = CASE WHEN b.start_seq IS NOT NULL
                              THEN coalesce(bt.started_at, clock_timestamp())
                              ELSE bt.started_at END,
            finished_at = CASE WHEN b.photo_events = 0 THEN bt.finished_at
                               WHEN bt.unfinished + b.delta = 0 THEN clock_timestamp() END,
            first_event_id = coalesce(bt.first_event_id, s.first_id),
            last_event_id = s.last_id
        FROM before AS b JOIN spans AS s ON s.batch_id = b.id
        WHERE bt.id = b.id
    )
    SELECT count(*)::integer INTO taken FROM gone;
    RETURN taken;
END
$$;
