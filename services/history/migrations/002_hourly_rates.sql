-- flowwatch history, schema version 2: readings and anomalies per zone and hour, kept by the sink from
-- `aggregates`, so anomaly rates over months read hours instead of every window.

CREATE TABLE aggregates_hourly (
    site text NOT NULL,
    zone text NOT NULL,
    utility text NOT NULL,
    hour bigint NOT NULL,
    count bigint NOT NULL,
    anomaly_count bigint NOT NULL,
    PRIMARY KEY (site, zone, utility, hour)
);
CREATE INDEX aggregates_hourly_hour ON aggregates_hourly (hour);

INSERT INTO aggregates_hourly (site, zone, utility, hour, count, anomaly_count)
SELECT site, zone, utility, window_start - window_start % 3600000, sum(count), sum(anomaly_count)
FROM aggregates GROUP BY 1, 2, 3, 4;
