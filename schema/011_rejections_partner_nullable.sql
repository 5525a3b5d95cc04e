-- Rejections per partner × day (UTC) × reason with the partner as sent: NULL when the beacon's
-- partnerId was missing or not an integer. 007 stored those as partner -1, so a valid partnerId=-1
-- (negative numbers are valid) was merged with them and shown as '-'. No Int64 value can serve as a
-- sentinel (every one, -9223372036854775808 included, is a valid partnerId), so the key is Nullable.
-- A key column cannot change type in place: a new table, fed by a new view from now on; 007's view
-- is dropped. rejections_daily keeps what 007 aggregated before this migration, and
-- schema/reports/rejections.sql reads both (007's -1 read as NULL, as the report always showed it).

CREATE TABLE IF NOT EXISTS analytics.rejections_daily_v2
(
    partner_id Nullable(Int64),
    day Date,
    reason LowCardinality(String),
    rejected SimpleAggregateFunction(sum, UInt64),
    example_message SimpleAggregateFunction(anyLast, String),
    last_seen SimpleAggregateFunction(max, DateTime64(3))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (partner_id, day, reason)
SETTINGS allow_nullable_key = 1, non_replicated_deduplication_window = 10000;

DROP VIEW IF EXISTS analytics.rejections_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.rejections_daily_v2_mv TO analytics.rejections_daily_v2 AS
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    reason,
    count() AS rejected,
    anyLast(message) AS example_message,
    max(received_at) AS last_seen
FROM analytics.rejected_events
GROUP BY partner_id, day, reason;
