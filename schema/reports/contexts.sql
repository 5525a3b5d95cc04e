-- contexts: plays by playbackContext and customVar1–3 segments
-- params: partner from to limit
--
-- Reads analytics.context_daily (per partner × day × playbackContext × customVar1–3, UTC). One row
-- per combination of values as sent ('' when absent). loads = impressions (1); plays = eventType 3;
-- unique_viewers = uniq(userId, else sessionId) over plays; minutes_viewed = 10 s per VIEW event
-- (99) / 60; play_through_ratio = reached 100 % (14) / plays.
SELECT
    playback_context,
    custom_var1,
    custom_var2,
    custom_var3,
    sum(c.impressions) AS loads,
    sum(c.plays) AS plays,
    uniqMerge(c.viewers) AS unique_viewers,
    round(sum(c.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(c.reached_100) / nullIf(sum(c.plays), 0), 4) AS play_through_ratio
FROM analytics.context_daily AS c
WHERE ({partner:Nullable(Int64)} IS NULL OR c.partner_id = {partner:Nullable(Int64)})
  AND day >= {from:Date}
  AND day <= {to:Date}
GROUP BY playback_context, custom_var1, custom_var2, custom_var3
ORDER BY plays DESC, loads DESC, playback_context, custom_var1, custom_var2, custom_var3
LIMIT {limit:UInt32}
