DROP TABLE reprocessing;
DROP TABLE reprocess_runs;
