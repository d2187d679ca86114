-- Which Redis "epoch" a photo's job was last published in (see queue/: the epoch changes
-- whenever Redis comes back without its data), and when a scheduled retry is due.
ALTER TABLE photos
    ADD COLUMN published_epoch text,
    ADD COLUMN next_attempt_at timestamptz;

-- Every attempt at a photo: who ran it, how it ended, how long it took.
CREATE TABLE photo_attempts (
    id           bigserial PRIMARY KEY,
    photo_id     uuid NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text NOT NULL,
    outcome      text NOT NULL DEFAULT 'running'
                 CONSTRAINT photo_attempts_outcome_check
                 CHECK (outcome IN ('running', 'completed', 'failed', 'retry', 'dead',
                                    'interrupted', 'handed_back')),
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    duration_ms  bigint
);
CREATE INDEX photo_attempts_photo_idx ON photo_attempts (photo_id, id);

-- The first answer to an upload sent with an Idempotency-Key, per key owner.
CREATE TABLE idempotency_keys (
    owner_id    uuid NOT NULL REFERENCES api_keys (id),
    key         text NOT NULL,
    batch_id    uuid NOT NULL REFERENCES batches (id),
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);

CREATE INDEX photos_dead_idx ON photos (owner_id, id) WHERE state = 'dead';
