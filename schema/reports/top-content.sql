-- top-content: entries by plays, with unique viewers, minutes viewed, avg view time, play-through ratio
-- params: partner from to limit
--
-- Reads analytics.entry_hourly. Definitions as in summary.sql:
--   plays = count of eventType 3; unique_viewers = uniq(userId, else sessionId) over plays;
--   minutes_viewed = 10 s per VIEW event (99) / 60; avg_time_viewed = minutes_viewed / plays;
--   play_through_ratio = reached 100 % (14) / plays;
--   avg_view_drop_off = ((reached 25+50+75+100 %) / 4) / plays; loads = impressions (1).
-- Order: plays descending, then entry id. A ratio is NULL when its denominator is 0.
SELECT
    partner_id,
    entry_id,
    sum(h.plays) AS plays,
    uniqMerge(h.viewers) AS unique_viewers,
    round(sum(h.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(h.view_seconds) / 60 / nullIf(sum(h.plays), 0), 4) AS avg_time_viewed,
    round(sum(h.reached_100) / nullIf(sum(h.plays), 0), 4) AS play_through_ratio,
    round((sum(h.reached_25) + sum(h.reached_50) + sum(h.reached_75) + sum(h.reached_100)) / 4 / nullIf(sum(h.plays), 0), 4)
        AS avg_view_drop_off,
    sum(h.impressions) AS loads
FROM analytics.entry_hourly AS h
WHERE ({partner:Nullable(Int64)} IS NULL OR h.partner_id = {partner:Nullable(Int64)})
  AND hour >= toDateTime({from:Date}, 'UTC')
  AND hour < toDateTime({to:Date}, 'UTC') + INTERVAL 1 DAY
GROUP BY partner_id, entry_id
ORDER BY plays DESC, partner_id, entry_id
LIMIT {limit:UInt32}
