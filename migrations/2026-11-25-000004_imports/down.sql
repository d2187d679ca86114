ALTER TABLE photos DROP CONSTRAINT photos_source_check;
DELETE FROM variants WHERE photo_id IN (SELECT id FROM photos WHERE content_type IS NULL);
DROP TABLE product_images;
DROP TABLE import_products;
DROP TABLE products;
DROP TABLE imports;
DELETE FROM photos WHERE content_type IS NULL OR bytes IS NULL OR sha256 IS NULL;
ALTER TABLE photos
    DROP COLUMN source_url,
    DROP COLUMN error_code,
    ALTER COLUMN content_type SET NOT NULL,
    ALTER COLUMN bytes SET NOT NULL,
    ALTER COLUMN sha256 SET NOT NULL;
