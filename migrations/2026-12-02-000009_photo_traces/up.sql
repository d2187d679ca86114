-- The W3C traceparent of the span that accepted the photo: every attempt at it, however
-- it was delivered (first publication, retry, redrive, republication), continues that
-- trace. Its first stream entry carries the same value.
ALTER TABLE photos ADD COLUMN trace_parent text;
