-- funnel: impression → play request → play → reached 25/50/75/100 %, counts and conversion
-- params: partner entry from to
--
-- Reads analytics.entry_hourly. Stages are event counts: impression (eventType 1), play request (2),
-- play (3), reached 25 % / 50 % / 75 % / 100 % (11–14).
--   of_loads    = stage count / impressions
--   of_previous = stage count / the previous stage's count
-- A ratio is NULL when its denominator is 0; counts of later stages can exceed earlier ones when
-- players skip beacons (e.g. no play request on autoplay), so ratios above 1 are possible.
SELECT
    stages[n] AS stage,
    counts[n] AS events,
    round(counts[n] / nullIf(counts[1], 0), 4) AS of_loads,
    round(counts[n] / nullIf(counts[greatest(n - 1, 1)], 0), 4) AS of_previous
FROM
(
    SELECT
        ['impression', 'play request', 'play', 'reached 25%', 'reached 50%', 'reached 75%', 'reached 100%'] AS stages,
        [sum(h.impressions), sum(h.play_requests), sum(h.plays), sum(h.reached_25), sum(h.reached_50), sum(h.reached_75),
         sum(h.reached_100)] AS counts
    FROM analytics.entry_hourly AS h
    WHERE ({partner:Nullable(Int64)} IS NULL OR h.partner_id = {partner:Nullable(Int64)})
      AND ({entry:Nullable(String)} IS NULL OR entry_id = {entry:Nullable(String)})
      AND hour >= toDateTime({from:Date}, 'UTC')
      AND hour < toDateTime({to:Date}, 'UTC') + INTERVAL 1 DAY
)
ARRAY JOIN arrayEnumerate(counts) AS n
ORDER BY n
