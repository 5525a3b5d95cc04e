-- Segments per partner × day (UTC) × playbackContext × customVar1–3, for `report contexts`.
-- Values are kept as sent (decoded once); an absent one is ''.

CREATE TABLE IF NOT EXISTS analytics.context_daily
(
    partner_id Int64,
    day Date,
    playback_context String,
    custom_var1 String,
    custom_var2 String,
    custom_var3 String,
    impressions SimpleAggregateFunction(sum, UInt64),
    plays SimpleAggregateFunction(sum, UInt64),
    reached_100 SimpleAggregateFunction(sum, UInt64),
    view_seconds SimpleAggregateFunction(sum, UInt64),
    viewers AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (partner_id, day, playback_context, custom_var1, custom_var2, custom_var3)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.context_daily_mv TO analytics.context_daily AS
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    playback_context,
    custom_var1,
    custom_var2,
    custom_var3,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 14) AS reached_100,
    10 * countIf(event_type = 99) AS view_seconds,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)), event_type = 3) AS viewers
FROM analytics.events
WHERE event_type IN (1, 3, 14, 99)
GROUP BY partner_id, day, playback_context, custom_var1, custom_var2, custom_var3;
