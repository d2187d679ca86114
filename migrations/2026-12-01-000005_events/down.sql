DROP TABLE stream_tokens;
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
DROP TABLE events;
DROP TABLE event_counters;
DROP INDEX products_state_idx;
DROP FUNCTION photoq_product_state(uuid);
ALTER TABLE products DROP COLUMN state;
ALTER TABLE batches DROP COLUMN total, DROP COLUMN unfinished, DROP COLUMN started_at,
    DROP COLUMN finished_at;
