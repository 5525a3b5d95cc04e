-- interactions: shares per network, downloads, reports per type, fullscreen, captions, speed, seeks
-- params: partner entry from to
--
-- Reads analytics.interactions_hourly. One row per event type and detail: the social network of a
-- Share (22), the report type of a Report submitted (25), the caption (38), the playback speed
-- (41), the audio language (42); detail is '' for the other types. events = count of beacons.
-- share_of_type = events / all events of that type in the result.
SELECT
    event_type,
    transform(event_type,
        [21, 22, 23, 24, 25, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43],
        ['share clicked', 'shared', 'download clicked', 'report clicked', 'report submitted',
         'enter fullscreen', 'exit fullscreen', 'pause clicked', 'replay clicked', 'seek',
         'related clicked', 'related selected', 'captions', 'source selected', 'info', 'speed',
         'audio selected', 'flavor switch'], 'other') AS event,
    detail,
    sum(i.events) AS events,
    round(sum(i.events) / sum(sum(i.events)) OVER (PARTITION BY event_type), 4) AS share_of_type
FROM analytics.interactions_hourly AS i
WHERE ({partner:Nullable(Int64)} IS NULL OR i.partner_id = {partner:Nullable(Int64)})
  AND ({entry:Nullable(String)} IS NULL OR entry_id = {entry:Nullable(String)})
  AND hour >= toDateTime({from:Date}, 'UTC')
  AND hour < toDateTime({to:Date}, 'UTC') + INTERVAL 1 DAY
GROUP BY event_type, detail
ORDER BY event_type, events DESC, detail
