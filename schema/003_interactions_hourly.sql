-- Player interactions per partner × entry × hour (UTC) × event type × detail, for `report interactions`.
-- detail is what the event says beyond its type: the social network of a Share (22), the report
-- type of a Report submitted (25), the caption of a captions event (38), the playback speed (41),
-- the audio language (42); empty for the others. Counts only: a SummingMergeTree suffices.

CREATE TABLE IF NOT EXISTS analytics.interactions_hourly
(
    partner_id Int64,
    entry_id String,
    hour DateTime('UTC'),
    event_type UInt16,
    detail String,
    events UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toYYYYMM(hour)
ORDER BY (partner_id, entry_id, hour, event_type, detail)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.interactions_hourly_mv TO analytics.interactions_hourly AS
SELECT
    partner_id,
    entry_id,
    toStartOfHour(toDateTime(received_at, 'UTC')) AS hour,
    event_type,
    multiIf(
        event_type = 22, social_network,
        event_type = 25, report_type,
        event_type = 38, caption,
        event_type = 41, ifNull(toString(playback_speed), ''),
        event_type = 42, language,
        '') AS detail,
    count() AS events
FROM analytics.events
WHERE event_type IN (21, 22, 23, 24, 25, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43)
GROUP BY partner_id, entry_id, hour, event_type, detail;
