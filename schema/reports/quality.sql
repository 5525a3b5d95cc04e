-- quality: buffering ratio, bitrates, join time and errors by delivery type, playback type, player version
-- params: partner from to
--
-- Reads analytics.quality_daily (per partner × day × deliveryType × playbackType × clientVer, UTC).
--   buffering_ratio   = VIEW bufferTime / (VIEW bufferTime + view seconds); view seconds = 10 per VIEW (99)
--   avg_buffer_time   = VIEW bufferTime seconds per minute viewed
--   avg_bitrate       = mean actualBitrate of VIEW events (kbps); avg_preferred_bitrate likewise
--   bitrate_ratio     = avg_bitrate / avg_preferred_bitrate (below 1: viewers got less than asked)
--   avg_join_time     = mean joinTime of PLAY events (seconds)
--   error_rate        = errors (eventType 98) / plays
-- A ratio is NULL when its denominator is 0 (or the value was never sent).
SELECT
    delivery_type,
    playback_type,
    client_ver,
    sum(q.plays) AS plays,
    round(sum(q.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(q.view_buffer_seconds) / nullIf(sum(q.view_buffer_seconds) + sum(q.view_seconds), 0), 4) AS buffering_ratio,
    round(sum(q.view_buffer_seconds) / nullIf(sum(q.view_seconds) / 60, 0), 4) AS avg_buffer_time,
    round(sum(q.bitrate_sum) / nullIf(sum(q.bitrate_count), 0), 2) AS avg_bitrate,
    round(sum(q.preferred_bitrate_sum) / nullIf(sum(q.preferred_bitrate_count), 0), 2) AS avg_preferred_bitrate,
    round((sum(q.bitrate_sum) / nullIf(sum(q.bitrate_count), 0))
          / nullIf(sum(q.preferred_bitrate_sum) / nullIf(sum(q.preferred_bitrate_count), 0), 0), 4) AS bitrate_ratio,
    round(sum(q.join_time_sum) / nullIf(sum(q.join_time_count), 0), 4) AS avg_join_time,
    round(sum(q.errors) / nullIf(sum(q.plays), 0), 4) AS error_rate
FROM analytics.quality_daily AS q
WHERE ({partner:Nullable(Int64)} IS NULL OR q.partner_id = {partner:Nullable(Int64)})
  AND day >= {from:Date}
  AND day <= {to:Date}
GROUP BY delivery_type, playback_type, client_ver
ORDER BY plays DESC, delivery_type, playback_type, client_ver
