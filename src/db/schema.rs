// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        name -> Text,
        key_hash -> Text,
        key_prefix -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        owner_id -> Uuid,
        scopes -> Array<Text>,
    }
}

diesel::table! {
    owners (id) {
        id -> Uuid,
        name -> Text,
        created_at -> Timestamptz,
        photos_per_day -> Nullable<Int8>,
        bytes_stored -> Nullable<Int8>,
        bytes_used -> Int8,
    }
}

diesel::table! {
    batches (id) {
        id -> Uuid,
        owner_id -> Uuid,
        created_at -> Timestamptz,
        total -> Int4,
        unfinished -> Int4,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        first_event_id -> Nullable<Int8>,
        last_event_id -> Nullable<Int8>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    photos (id) {
        id -> Uuid,
        batch_id -> Uuid,
        owner_id -> Uuid,
        state -> Text,
        attempts -> Int4,
        error -> Nullable<Text>,
        filename -> Nullable<Text>,
        content_type -> Nullable<Text>,
        bytes -> Nullable<Int8>,
        sha256 -> Nullable<Text>,
        original_key -> Text,
        width -> Nullable<Int4>,
        height -> Nullable<Int4>,
        exif -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        next_attempt_at -> Nullable<Timestamptz>,
        entry_id -> Nullable<Text>,
        published_at -> Nullable<Timestamptz>,
        attempt_id -> Nullable<Int8>,
        source_url -> Nullable<Text>,
        error_code -> Nullable<Text>,
        trace_parent -> Nullable<Text>,
        unfinished -> Bool,
        dead -> Bool,
        thumbhash -> Nullable<Text>,
        variant_fingerprint -> Nullable<Text>,
        reused_from -> Nullable<Uuid>,
        deleted_at -> Nullable<Timestamptz>,
        original_removed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    imports (id) {
        id -> Uuid,
        owner_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    products (id) {
        id -> Uuid,
        owner_id -> Uuid,
        external_id -> Text,
        name -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        state -> Nullable<Text>,
    }
}

diesel::table! {
    import_products (import_id, product_id) {
        import_id -> Uuid,
        product_id -> Uuid,
    }
}

diesel::table! {
    product_images (product_id, position) {
        product_id -> Uuid,
        position -> Int4,
        url -> Text,
        photo_id -> Uuid,
    }
}

diesel::table! {
    photo_attempts (id) {
        id -> Int8,
        photo_id -> Uuid,
        attempt -> Int4,
        worker -> Text,
        outcome -> Text,
        error -> Nullable<Text>,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        duration_ms -> Nullable<Int8>,
    }
}

diesel::table! {
    idempotency_keys (owner_id, key) {
        owner_id -> Uuid,
        key -> Text,
        batch_id -> Uuid,
        response -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    usage_changes (seq) {
        seq -> Int8,
        owner_id -> Uuid,
        bytes -> Int8,
    }
}

diesel::table! {
    variants (photo_id, name) {
        photo_id -> Uuid,
        name -> Text,
        storage_key -> Text,
        content_type -> Text,
        width -> Int4,
        height -> Int4,
        bytes -> Int8,
        etag -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    event_counters (owner_id) {
        owner_id -> Uuid,
        last_id -> Int8,
        pruned_through -> Int8,
    }
}

diesel::table! {
    retention_rounds (name) {
        name -> Text,
        claimed_at -> Timestamptz,
    }
}

diesel::table! {
    stream_tokens (token_hash) {
        token_hash -> Text,
        key_id -> Uuid,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        owner_id -> Uuid,
        url -> Text,
        event_types -> Array<Text>,
        secret -> Text,
        created_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        webhook_id -> Uuid,
        owner_id -> Uuid,
        event_id -> Int8,
        state -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        started_at -> Timestamptz,
        duration_ms -> Int8,
        status -> Nullable<Int4>,
        error -> Nullable<Text>,
    }
}

diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(api_keys -> owners (owner_id));
diesel::joinable!(batches -> owners (owner_id));
diesel::joinable!(stream_tokens -> api_keys (key_id));
diesel::joinable!(photos -> owners (owner_id));
diesel::joinable!(photos -> batches (batch_id));
diesel::joinable!(variants -> photos (photo_id));
diesel::joinable!(photo_attempts -> photos (photo_id));
diesel::joinable!(idempotency_keys -> batches (batch_id));
diesel::joinable!(imports -> batches (id));
diesel::joinable!(products -> owners (owner_id));
diesel::joinable!(import_products -> imports (import_id));
diesel::joinable!(import_products -> products (product_id));
diesel::joinable!(product_images -> products (product_id));
diesel::joinable!(product_images -> photos (photo_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    batches,
    event_counters,
    idempotency_keys,
    import_products,
    imports,
    owners,
    photo_attempts,
    photos,
    product_images,
    products,
    retention_rounds,
    stream_tokens,
    usage_changes,
    variants,
    webhook_attempts,
    webhook_deliveries,
    webhooks,
);
