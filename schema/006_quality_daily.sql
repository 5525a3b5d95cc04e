-- Playback quality per partner × day (UTC) × delivery type × playback type × player version,
-- for `report quality`. Buffer and bitrate sums are over VIEW events (99), each standing for
-- 10 s of viewing, so averages are weighted by time viewed; join time over PLAY events (3).

CREATE TABLE IF NOT EXISTS analytics.quality_daily
(
    partner_id Int64,
    day Date,
    delivery_type LowCardinality(String),
    playback_type LowCardinality(String),
    client_ver LowCardinality(String),
    plays SimpleAggregateFunction(sum, UInt64),
    views SimpleAggregateFunction(sum, UInt64),
    view_seconds SimpleAggregateFunction(sum, UInt64),
    view_buffer_seconds SimpleAggregateFunction(sum, Float64),
    bitrate_sum SimpleAggregateFunction(sum, Float64),
    bitrate_count SimpleAggregateFunction(sum, UInt64),
    preferred_bitrate_sum SimpleAggregateFunction(sum, Float64),
    preferred_bitrate_count SimpleAggregateFunction(sum, UInt64),
    join_time_sum SimpleAggregateFunction(sum, Float64),
    join_time_count SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (partner_id, day, delivery_type, playback_type, client_ver)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.quality_daily_mv TO analytics.quality_daily AS
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    delivery_type,
    playback_type,
    client_ver,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 99) AS views,
    10 * countIf(event_type = 99) AS view_seconds,
    sumIf(ifNull(buffer_time, 0), event_type = 99) AS view_buffer_seconds,
    sumIf(ifNull(actual_bitrate, 0), event_type = 99) AS bitrate_sum,
    countIf(event_type = 99 AND actual_bitrate IS NOT NULL) AS bitrate_count,
    sumIf(ifNull(preferred_bitrate, 0), event_type = 99) AS preferred_bitrate_sum,
    countIf(event_type = 99 AND preferred_bitrate IS NOT NULL) AS preferred_bitrate_count,
    sumIf(ifNull(join_time, 0), event_type = 3) AS join_time_sum,
    countIf(event_type = 3 AND join_time IS NOT NULL) AS join_time_count,
    countIf(event_type = 98) AS errors
FROM analytics.events
WHERE event_type IN (3, 98, 99)
GROUP BY partner_id, day, delivery_type, playback_type, client_ver;
