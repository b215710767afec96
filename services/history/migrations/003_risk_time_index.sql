-- flowwatch history, schema version 3: risk by time alone. Playback reads every zone's risk records of a
-- range; with only (zone, ts) and the primary key (site, zone, ts) it scanned whole partitions
-- (EXPLAIN ANALYZE, docs/history.md "Performance").

CREATE INDEX risk_ts ON risk (ts);
