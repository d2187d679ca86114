-- Product imports (`POST /v1/imports`): products with image URLs that workers download.
-- An import is a batch (its photos are the products' images), so batch counts, retries
-- and dead letters work for it unchanged.
CREATE TABLE imports (
    id          uuid PRIMARY KEY REFERENCES batches (id),
    owner_id    uuid NOT NULL REFERENCES api_keys (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imports_owner_idx ON imports (owner_id, id);

-- One row per product of an owner; importing the same external id again updates it.
CREATE TABLE products (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES api_keys (id),
    external_id  text NOT NULL,
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_external_id_key UNIQUE (owner_id, external_id)
);
CREATE INDEX products_owner_idx ON products (owner_id, id);

-- Which imports named which products (a product re-imported belongs to both).
CREATE TABLE import_products (
    import_id   uuid NOT NULL REFERENCES imports (id),
    product_id  uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    PRIMARY KEY (import_id, product_id)
);
CREATE INDEX import_products_product_idx ON import_products (product_id);

-- A product's images as it last named them, in order; each is a photo.
CREATE TABLE product_images (
    product_id  uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 0),
    url         text NOT NULL,
    photo_id    uuid NOT NULL REFERENCES photos (id),
    PRIMARY KEY (product_id, position)
);
CREATE INDEX product_images_photo_idx ON product_images (photo_id);

-- A photo from a URL has no bytes until a worker downloads them; `error_code` is the
-- machine-readable reason of a failure (`download_not_found`, `undecodable_image`, ...).
ALTER TABLE photos
    ADD COLUMN source_url text,
    ADD COLUMN error_code text,
    ALTER COLUMN content_type DROP NOT NULL,
    ALTER COLUMN bytes DROP NOT NULL,
    ALTER COLUMN sha256 DROP NOT NULL,
    ADD CONSTRAINT photos_source_check
    CHECK (source_url IS NOT NULL OR (content_type IS NOT NULL AND bytes IS NOT NULL
                                      AND sha256 IS NOT NULL));
