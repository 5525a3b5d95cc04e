-- timeline: plays and minutes viewed per hour or per day (--interval hour|day, UTC)
-- params: partner entry from to interval
--
-- Reads analytics.entry_hourly. period is 'YYYY-MM-DD' (day) or 'YYYY-MM-DD HH:00' (hour), UTC, by
-- server receive time. loads = impressions (1); plays = eventType 3; unique_viewers = uniq(userId,
-- else sessionId) over plays in that period; minutes_viewed = 10 s per VIEW event (99) / 60;
-- avg_time_viewed = minutes_viewed / plays. Periods without events are not listed.
SELECT
    if({interval:String} = 'hour', formatDateTime(hour, '%Y-%m-%d %H:00', 'UTC'), toString(toDate(hour, 'UTC')))
        AS period,
    sum(h.impressions) AS loads,
    sum(h.plays) AS plays,
    uniqMerge(h.viewers) AS unique_viewers,
    round(sum(h.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(h.view_seconds) / 60 / nullIf(sum(h.plays), 0), 4) AS avg_time_viewed
FROM analytics.entry_hourly AS h
WHERE ({partner:Nullable(Int64)} IS NULL OR h.partner_id = {partner:Nullable(Int64)})
  AND ({entry:Nullable(String)} IS NULL OR entry_id = {entry:Nullable(String)})
  AND hour >= toDateTime({from:Date}, 'UTC')
  AND hour < toDateTime({to:Date}, 'UTC') + INTERVAL 1 DAY
GROUP BY period
ORDER BY period
