-- API keys: only a SHA-256 of each key is stored.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    key_hash    text NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- One row per upload request (or URL hand-over).
CREATE TABLE batches (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL REFERENCES api_keys (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_owner_idx ON batches (owner_id, id);

-- One row per photo; it is also the job: its state is the job's state.
CREATE TABLE photos (
    id            uuid PRIMARY KEY,
    batch_id      uuid NOT NULL REFERENCES batches (id),
    owner_id      uuid NOT NULL REFERENCES api_keys (id),
    state         text NOT NULL DEFAULT 'queued'
                  CONSTRAINT photos_state_check
                  CHECK (state IN ('queued', 'processing', 'completed', 'failed', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    error         text,
    filename      text,
    content_type  text NOT NULL,
    bytes         bigint NOT NULL,
    sha256        text NOT NULL,
    original_key  text NOT NULL,
    width         integer,
    height        integer,
    exif          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz
);
CREATE INDEX photos_batch_idx ON photos (batch_id, id);
CREATE INDEX photos_owner_idx ON photos (owner_id, id);
CREATE INDEX photos_unfinished_idx ON photos (id) WHERE state IN ('queued', 'processing');

-- The derived images of a photo, one row per configured variant.
CREATE TABLE variants (
    photo_id      uuid NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
    name          text NOT NULL,
    storage_key   text NOT NULL,
    content_type  text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    bytes         bigint NOT NULL,
    etag          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (photo_id, name)
);
