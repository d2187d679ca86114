-- Reprocessing: completed photos' variants made again with the configuration of now (after
-- a variant change). The photos stay `completed` and keep serving their variants until the
-- new ones are recorded, in one transaction with the old ones' rows going; nothing else of
-- a photo changes.
--
-- A run is one request: a photo, a batch, or every photo whose variants were made with
-- another configuration. Each photo it takes has a row in `reprocessing`, a small state
-- machine of its own, every move a guarded statement (`db::reprocess`):
--
--   queued ──start──▶ processing ──▶ done
--     ▲  │               │  └──────▶ failed (the input, or the attempt budget)
--     │  │               ├──retry, hand-back, or taken back past its lease──▶ queued
--     │  └──start past the budget──▶ failed
--   queued/processing ──▶ skipped (the photo was deleted or lost its original meanwhile)
--
-- An attempt holds a lease (a fresh uuid) that its end must name: an attempt taken over
-- after its lease ran out, or by a stale delivery, records nothing. A photo is in one run
-- at a time: a later run takes its row over once it has ended.
CREATE TABLE reprocess_runs (
    id uuid PRIMARY KEY,
    -- NULL for a run over every owner (`photoq reprocess --all`).
    owner_id uuid REFERENCES owners (id) ON DELETE CASCADE,
    -- 'photo', 'batch' or 'all'.
    target text NOT NULL,
    created_at timestamptz NOT NULL,
    -- Photos the run took.
    total integer NOT NULL,
    -- Photos left out: their variants match the configuration already.
    up_to_date integer NOT NULL,
    -- Photos left out: being reprocessed by an earlier run still.
    busy integer NOT NULL
);
CREATE INDEX reprocess_runs_owner ON reprocess_runs (owner_id, created_at);

CREATE TABLE reprocessing (
    photo_id uuid PRIMARY KEY REFERENCES photos (id) ON DELETE CASCADE,
    run_id uuid NOT NULL REFERENCES reprocess_runs (id) ON DELETE CASCADE,
    state text NOT NULL
        CONSTRAINT reprocessing_state_check
        CHECK (state IN ('queued', 'processing', 'done', 'failed', 'skipped')),
    attempts integer NOT NULL DEFAULT 0,
    -- When the run took the photo (the reconciler publishes rows never published, after
    -- `reconciler.grace_secs`).
    queued_at timestamptz NOT NULL,
    -- The running attempt's lease: set exactly while `processing`.
    lease uuid,
    -- The stream entry the job was last published as (bulk lane).
    entry_id text,
    -- When the job was last published, or a retry is due, or the reconciler last looked.
    published_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    error_code text,
    error text
);
CREATE INDEX reprocessing_run ON reprocessing (run_id, state);
CREATE INDEX reprocessing_unfinished ON reprocessing (photo_id)
    WHERE state IN ('queued', 'processing');
