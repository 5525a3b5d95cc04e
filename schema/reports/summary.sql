-- summary: totals for a partner and period: loads, plays, unique viewers, minutes viewed, ratios
-- params: partner entry from to
-- layout: vertical
--
-- Reads analytics.entry_hourly (per partner × entry × hour, UTC, by server receive time).
-- Metric definitions (as Kaltura's analytics defines them):
--   loads               = impressions, count of eventType 1
--   plays               = count of eventType 3
--   load_play_ratio     = plays / loads
--   unique_viewers      = uniq(userId) over plays; a play without userId counts its sessionId,
--                         a play with neither is not counted
--                         (ClickHouse uniq: adaptive sampling of up to 65 536 hashes, so exact
--                         below that, barring hash collisions, and approximate above)
--   sessions            = uniq(sessionId) over the events that carry one
--   minutes_viewed      = 10 s per VIEW event (eventType 99) / 60
--   avg_time_viewed     = minutes_viewed / plays (minutes per play)
--   play_through_ratio  = reached 100 % (eventType 14) / plays
--   avg_view_drop_off   = ((reached 25 % + 50 % + 75 % + 100 %, eventTypes 11–14) / 4) / plays
--   avg_buffer_time     = VIEW bufferTime seconds per minute viewed
--   buffering_ratio     = VIEW bufferTime / (VIEW bufferTime + view seconds)
--   avg_bitrate         = mean actualBitrate of VIEW events (kbps, weighted by time viewed)
--   avg_join_time       = mean joinTime of PLAY events (seconds)
--   error_rate          = errors (eventType 98) / plays
-- A ratio is NULL when its denominator is 0. Ratios are rounded to 4 decimals, minutes to 2.
SELECT
    sum(h.impressions) AS loads,
    sum(h.plays) AS plays,
    round(sum(h.plays) / nullIf(sum(h.impressions), 0), 4) AS load_play_ratio,
    uniqMerge(h.viewers) AS unique_viewers,
    uniqMerge(h.sessions) AS sessions,
    round(sum(h.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(h.view_seconds) / 60 / nullIf(sum(h.plays), 0), 4) AS avg_time_viewed,
    round(sum(h.reached_100) / nullIf(sum(h.plays), 0), 4) AS play_through_ratio,
    round((sum(h.reached_25) + sum(h.reached_50) + sum(h.reached_75) + sum(h.reached_100)) / 4 / nullIf(sum(h.plays), 0), 4)
        AS avg_view_drop_off,
    round(sum(h.view_buffer_seconds) / nullIf(sum(h.view_seconds) / 60, 0), 4) AS avg_buffer_time,
    round(sum(h.view_buffer_seconds) / nullIf(sum(h.view_buffer_seconds) + sum(h.view_seconds), 0), 4) AS buffering_ratio,
    round(sum(h.bitrate_sum) / nullIf(sum(h.bitrate_count), 0), 2) AS avg_bitrate,
    round(sum(h.join_time_sum) / nullIf(sum(h.join_time_count), 0), 4) AS avg_join_time,
    round(sum(h.errors) / nullIf(sum(h.plays), 0), 4) AS error_rate
FROM analytics.entry_hourly AS h
WHERE ({partner:Nullable(Int64)} IS NULL OR h.partner_id = {partner:Nullable(Int64)})
  AND ({entry:Nullable(String)} IS NULL OR entry_id = {entry:Nullable(String)})
  AND hour >= toDateTime({from:Date}, 'UTC')
  AND hour < toDateTime({to:Date}, 'UTC') + INTERVAL 1 DAY
