DROP TABLE variants;
DROP TABLE photos;
DROP TABLE batches;
DROP TABLE api_keys;
