-- Rejected beacons per partner × day (UTC) × reason, for `report rejections`: what clients send
-- wrong. partner_id is -1 when the beacon's partnerId was missing or not an integer. The example
-- message is the latest seen in a merge (any one of the group's messages).

CREATE TABLE IF NOT EXISTS analytics.rejections_daily
(
    partner_id Int64,
    day Date,
    reason LowCardinality(String),
    rejected SimpleAggregateFunction(sum, UInt64),
    example_message SimpleAggregateFunction(anyLast, String),
    last_seen SimpleAggregateFunction(max, DateTime64(3))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (partner_id, day, reason)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.rejections_daily_mv TO analytics.rejections_daily AS
SELECT
    ifNull(partner_id, -1) AS partner_id,
    toDate(received_at, 'UTC') AS day,
    reason,
    count() AS rejected,
    anyLast(message) AS example_message,
    max(received_at) AS last_seen
FROM analytics.rejected_events
GROUP BY partner_id, day, reason;
