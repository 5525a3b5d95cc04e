-- Aggregates per partner × entry × hour (UTC), fed at insert time from analytics.events.
-- Reports read this table, not the raw events: summary, top-content, funnel, timeline.
--
-- Time: every bucket is the server's receive time (received_at) in UTC; clients' clocks are not
-- trusted. Counts are per event type (the upstream document's ids). Decisions:
--   * view_seconds: 10 s per VIEW event (99), the document's "every 10 seconds". KAVA's
--     playTimeSum is cumulative per session and is not summed.
--   * view_buffer_seconds / bitrate sums: over VIEW events (each covers the same 10 s), so
--     averages are weighted by time viewed. join_time over PLAY events (3).
--   * sessions: uniq(sessionId) over every event; viewers: uniq over PLAY events of userId,
--     or of sessionId when a play carries no userId (Kaltura's "unique viewers").
-- Dedup: non_replicated_deduplication_window lets a replayed segment (same insert token, with
-- deduplicate_blocks_in_dependent_materialized_views=1) be dropped here too.

CREATE TABLE IF NOT EXISTS analytics.entry_hourly
(
    partner_id Int64,
    entry_id String,
    hour DateTime('UTC'),
    impressions SimpleAggregateFunction(sum, UInt64),
    play_requests SimpleAggregateFunction(sum, UInt64),
    plays SimpleAggregateFunction(sum, UInt64),
    resumes SimpleAggregateFunction(sum, UInt64),
    reached_25 SimpleAggregateFunction(sum, UInt64),
    reached_50 SimpleAggregateFunction(sum, UInt64),
    reached_75 SimpleAggregateFunction(sum, UInt64),
    reached_100 SimpleAggregateFunction(sum, UInt64),
    views SimpleAggregateFunction(sum, UInt64),
    view_seconds SimpleAggregateFunction(sum, UInt64),
    view_buffer_seconds SimpleAggregateFunction(sum, Float64),
    bitrate_sum SimpleAggregateFunction(sum, Float64),
    bitrate_count SimpleAggregateFunction(sum, UInt64),
    join_time_sum SimpleAggregateFunction(sum, Float64),
    join_time_count SimpleAggregateFunction(sum, UInt64),
    share_clicks SimpleAggregateFunction(sum, UInt64),
    shares SimpleAggregateFunction(sum, UInt64),
    downloads SimpleAggregateFunction(sum, UInt64),
    report_clicks SimpleAggregateFunction(sum, UInt64),
    reports SimpleAggregateFunction(sum, UInt64),
    seeks SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    sessions AggregateFunction(uniq, String),
    viewers AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (partner_id, entry_id, hour)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.entry_hourly_mv TO analytics.entry_hourly AS
SELECT
    partner_id,
    entry_id,
    toStartOfHour(toDateTime(received_at, 'UTC')) AS hour,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 2) AS play_requests,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 4) AS resumes,
    countIf(event_type = 11) AS reached_25,
    countIf(event_type = 12) AS reached_50,
    countIf(event_type = 13) AS reached_75,
    countIf(event_type = 14) AS reached_100,
    countIf(event_type = 99) AS views,
    10 * countIf(event_type = 99) AS view_seconds,
    sumIf(ifNull(buffer_time, 0), event_type = 99) AS view_buffer_seconds,
    sumIf(ifNull(actual_bitrate, 0), event_type = 99) AS bitrate_sum,
    countIf(event_type = 99 AND actual_bitrate IS NOT NULL) AS bitrate_count,
    sumIf(ifNull(join_time, 0), event_type = 3) AS join_time_sum,
    countIf(event_type = 3 AND join_time IS NOT NULL) AS join_time_count,
    countIf(event_type = 21) AS share_clicks,
    countIf(event_type = 22) AS shares,
    countIf(event_type = 23) AS downloads,
    countIf(event_type = 24) AS report_clicks,
    countIf(event_type = 25) AS reports,
    countIf(event_type = 35) AS seeks,
    countIf(event_type = 98) AS errors,
    uniqState(session_id) AS sessions,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)), event_type = 3) AS viewers
FROM analytics.events
GROUP BY partner_id, entry_id, hour;
