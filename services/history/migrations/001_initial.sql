-- flowwatch history, schema version 1. Times are UTC epoch milliseconds (bigint).
-- Time-indexed tables are partitioned by range of their time column; the sink creates the
-- partitions it needs (store.ensure_partitions) and the retention job drops old ones.

CREATE TABLE sink_offsets (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

CREATE TABLE rejected (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    reason text NOT NULL,
    payload text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

CREATE TABLE rollups (
    sensor_id text NOT NULL,
    metric text NOT NULL,
    minute bigint NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    count integer NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    sum double precision NOT NULL,
    PRIMARY KEY (sensor_id, metric, minute)
) PARTITION BY RANGE (minute);
CREATE INDEX rollups_zone ON rollups (zone, metric, minute);

CREATE TABLE anomalies (
    sensor_id text NOT NULL,
    ts bigint NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    asset text NOT NULL,
    score double precision NOT NULL,
    threshold double precision NOT NULL,
    severity text NOT NULL,
    reason text NOT NULL,
    model_version text NOT NULL,
    top_metrics jsonb NOT NULL,
    "values" jsonb NOT NULL,
    PRIMARY KEY (sensor_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX anomalies_ts ON anomalies (ts);

CREATE TABLE aggregates (
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    window_start bigint NOT NULL,
    window_end bigint NOT NULL,
    count integer NOT NULL,
    anomaly_count integer NOT NULL,
    metrics jsonb NOT NULL,
    PRIMARY KEY (site, zone, utility, window_start)
) PARTITION BY RANGE (window_start);
CREATE INDEX aggregates_ts ON aggregates (window_start);

CREATE TABLE risk (
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    ts bigint NOT NULL,
    horizon_s integer NOT NULL,
    probability double precision NOT NULL,
    incident_type text NOT NULL,
    class_probs jsonb NOT NULL,
    forecast jsonb NOT NULL,
    loss jsonb NOT NULL,
    model_version text NOT NULL,
    PRIMARY KEY (site, zone, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX risk_zone ON risk (zone, ts);

CREATE TABLE alert_log (
    fingerprint text NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,          -- state | ack | comment | assign | verdict
    status text NOT NULL,        -- firing | resolved for state changes; '' otherwise
    author text NOT NULL DEFAULT '',
    note text NOT NULL DEFAULT '',
    episode_id bigint,
    labels jsonb NOT NULL DEFAULT '{}',
    annotations jsonb NOT NULL DEFAULT '{}',
    starts_at bigint NOT NULL DEFAULT 0,
    ends_at bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (fingerprint, kind, status, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX alert_log_ts ON alert_log (ts);
CREATE INDEX alert_log_sensor ON alert_log ((labels ->> 'sensor'), starts_at);
CREATE INDEX alert_log_zone ON alert_log ((labels ->> 'zone'), starts_at);

CREATE TABLE sensor_events (
    sensor_id text NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    asset text NOT NULL,
    last_seen_ms bigint NOT NULL,
    expected_interval_ms bigint NOT NULL,
    PRIMARY KEY (sensor_id, ts, kind)
) PARTITION BY RANGE (ts);

CREATE TABLE quarantine_counts (
    minute bigint NOT NULL,
    source text NOT NULL,
    reason text NOT NULL,
    count integer NOT NULL,
    PRIMARY KEY (minute, source, reason)
) PARTITION BY RANGE (minute);

CREATE TABLE quarantine_samples (
    minute bigint NOT NULL,
    source text NOT NULL,
    reason text NOT NULL,
    received_ms bigint NOT NULL,
    sensor_id text NOT NULL,
    reasons jsonb NOT NULL,
    payload text NOT NULL,
    payload_md5 text NOT NULL,
    PRIMARY KEY (minute, source, reason, received_ms, payload_md5)
) PARTITION BY RANGE (minute);

CREATE TABLE episodes (
    id bigserial PRIMARY KEY,
    sensor_id text NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    asset text NOT NULL,
    start_ts bigint NOT NULL,
    end_ts bigint NOT NULL,
    state text NOT NULL,         -- open | closed
    anomaly_count integer NOT NULL,
    peak_score double precision NOT NULL,
    severity text NOT NULL,
    top_metrics jsonb NOT NULL,
    reasons jsonb NOT NULL,
    alert_fingerprint text,
    ack_by text,
    ack_at bigint,
    ack_note text,
    assignee text,
    verdict text,
    verdict_by text,
    verdict_at bigint,
    label_id text,
    report_id text,
    updated_at bigint NOT NULL
);
CREATE INDEX episodes_sensor ON episodes (sensor_id, end_ts);
CREATE INDEX episodes_start ON episodes (start_ts);
CREATE INDEX episodes_open ON episodes (end_ts) WHERE state = 'open';
CREATE INDEX episodes_fingerprint ON episodes (alert_fingerprint);
CREATE INDEX episodes_zone ON episodes (zone, start_ts);

CREATE TABLE episode_comments (
    id bigserial PRIMARY KEY,
    episode_id bigint NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
    ts bigint NOT NULL,
    author text NOT NULL,
    text text NOT NULL
);
CREATE INDEX episode_comments_episode ON episode_comments (episode_id, ts);

CREATE TABLE incidents (
    id bigserial PRIMARY KEY,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    incident_type text NOT NULL,
    start_ts bigint NOT NULL,
    end_ts bigint NOT NULL,
    state text NOT NULL,         -- open | closed
    peak_probability double precision NOT NULL,
    loss_volume double precision NOT NULL,
    loss_cost double precision NOT NULL,
    loss_unit text NOT NULL,
    currency text NOT NULL,
    alert_fingerprint text,
    updated_at bigint NOT NULL
);
CREATE INDEX incidents_zone ON incidents (zone, end_ts);
CREATE INDEX incidents_open ON incidents (end_ts) WHERE state = 'open';

CREATE TABLE reports (
    id text PRIMARY KEY,
    ts bigint NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    kind text NOT NULL,
    text text NOT NULL,
    payload jsonb NOT NULL
);
CREATE INDEX reports_zone ON reports (zone, ts);

CREATE TABLE feedback (
    fingerprint text NOT NULL,
    ts bigint NOT NULL,
    author text NOT NULL,
    verdict text NOT NULL,
    comment text NOT NULL,
    labels jsonb NOT NULL,
    PRIMARY KEY (fingerprint, ts, author)
);

CREATE TABLE labels (
    incident_id text PRIMARY KEY,
    type text NOT NULL,
    start_ms bigint NOT NULL,
    end_ms bigint NOT NULL,
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    sensors jsonb NOT NULL
);
