-- Raw events: the typed table every report derives from, and the incoming table the spool ships to.
-- The spool writes JSONCompactEachRow rows into events_incoming (engine Null: it stores nothing);
-- the materialized views below decode the query string (vectorised, at insert time) into typed rows
-- for analytics.events, or keep a rejected beacon in analytics.rejected_events.
-- Dedup: each shipment carries insert_deduplication_token = segment id; MergeTree's
-- non_replicated_deduplication_window is 0 by default, so it is set on every table fed by the spool.

CREATE TABLE IF NOT EXISTS analytics.events_incoming
(
    kind LowCardinality(String),
    received_ms Int64,
    ip String,
    user_agent String,
    q String,
    body Map(String, String),
    missing Array(String),
    ks Map(String, String),
    reason String,
    message String,
    raw_body String
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS analytics.events
(
    received_at DateTime64(3),
    inserted_at DateTime64(3) DEFAULT now64(3),
    event_type UInt16,
    partner_id Int64,
    entry_id String,
    flavour_id String,
    session_id String,
    event_index Nullable(Int64),
    buffer_time Nullable(Float64),
    actual_bitrate Nullable(Float64),
    preferred_bitrate Nullable(Float64),
    referrer String,
    delivery_type LowCardinality(String),
    playback_type LowCardinality(String),
    kalsig String,
    session_start_time Nullable(Int64),
    ui_conf_id Nullable(Int64),
    client_ver LowCardinality(String),
    client_tag LowCardinality(String),
    position Nullable(Float64),
    playback_context String,
    custom_var1 String,
    custom_var2 String,
    custom_var3 String,
    social_network LowCardinality(String),
    report_type LowCardinality(String),
    target_position Nullable(Float64),
    caption String,
    playback_speed Nullable(Float64),
    user_id String,
    application_ver LowCardinality(String),
    playlist_id String,
    buffer_time_sum Nullable(Float64),
    play_time_sum Nullable(Float64),
    average_bitrate Nullable(Float64),
    join_time Nullable(Float64),
    can_play Nullable(Float64),
    player_js_load_time Nullable(Float64),
    audio_language LowCardinality(String),
    captions_language LowCardinality(String),
    sound_mode Nullable(Int64),
    tab_mode Nullable(Int64),
    forward_buffer_health Nullable(Float64),
    manifest_download_time Nullable(Float64),
    segment_download_time Nullable(Float64),
    bandwidth Nullable(Float64),
    dropped_frames_ratio Nullable(Float64),
    target_buffer Nullable(Float64),
    network_connection_type LowCardinality(String),
    network_connection_overhead Nullable(Float64),
    flavor_params_id Nullable(Int64),
    language LowCardinality(String),
    error_code LowCardinality(String),
    error_details String,
    error_position Nullable(Int64),
    player_skin LowCardinality(String),
    virtual_event_id Nullable(Int64),
    persistent_session_id String,
    application LowCardinality(String),
    kaltura_application LowCardinality(String),
    kaltura_application_ver LowCardinality(String),
    button_name String,
    button_type LowCardinality(String),
    button_value String,
    button_info String,
    page_name String,
    page_type LowCardinality(String),
    page_load_type LowCardinality(String),
    session_started_at Nullable(DateTime64(3)),
    ks_hash String,
    ks_status LowCardinality(String),
    ks_partner_id Nullable(Int64),
    ks_user_id String,
    ks_expiry Nullable(Int64),
    ks_privileges String,
    missing_fields Array(LowCardinality(String)),
    extra Map(String, String),
    ip String,
    user_agent String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (partner_id, entry_id, event_type, received_at)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS analytics.rejected_events
(
    received_at DateTime64(3),
    inserted_at DateTime64(3) DEFAULT now64(3),
    reason LowCardinality(String),
    message String,
    partner_id Nullable(Int64),
    event_type Nullable(Int64),
    raw_query String,
    raw_body String,
    ks_hash String,
    ip String,
    user_agent String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at)
SETTINGS non_replicated_deduplication_window = 10000;

-- p: the beacon's parameters, form-decoded once ('+' is a space; a bad escape such as '%zz' is kept
-- as sent; bytes that are not UTF-8 become U+FFFD, so every String column holds valid UTF-8);
-- query-string values win over JSON-body values and the first of repeated names wins (a Map
-- lookup returns the first match, as ingestd.events.split_query validates them).
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.events_mv TO analytics.events AS
WITH
    arrayFilter(x -> x != '' AND NOT startsWith(x, '='), splitByChar('&', q)) AS pairs,  -- no nameless pairs
    mapUpdate(body, mapFromArrays(
        arrayMap(x -> toValidUTF8(decodeURLFormComponent(substringIndex(x, '=', 1))), pairs),
        arrayMap(x -> if(position(x, '=') > 0, toValidUTF8(decodeURLFormComponent(substring(x, position(x, '=') + 1))), ''), pairs)
    )) AS p
SELECT
    fromUnixTimestamp64Milli(received_ms) AS received_at,
    toUInt16OrZero(trimBoth(p['eventType'])) AS event_type,
    toInt64OrZero(p['partnerId']) AS partner_id,
    p['entryId'] AS entry_id,
    p['flavourId'] AS flavour_id,
    p['sessionId'] AS session_id,
    toInt64OrNull(p['eventIndex']) AS event_index,
    toFloat64OrNull(p['bufferTime']) AS buffer_time,
    toFloat64OrNull(p['actualBitrate']) AS actual_bitrate,
    toFloat64OrNull(p['preferredBitrate']) AS preferred_bitrate,
    p['referrer'] AS referrer,
    p['deliveryType'] AS delivery_type,
    p['playbackType'] AS playback_type,
    p['kalsig'] AS kalsig,
    toInt64OrNull(p['sessionStartTime']) AS session_start_time,
    toInt64OrNull(p['uiConfId']) AS ui_conf_id,
    p['clientVer'] AS client_ver,
    p['clientTag'] AS client_tag,
    toFloat64OrNull(p['position']) AS position,
    p['playbackContext'] AS playback_context,
    p['customVar1'] AS custom_var1,
    p['customVar2'] AS custom_var2,
    p['customVar3'] AS custom_var3,
    p['socialNetwork'] AS social_network,
    p['reportType'] AS report_type,
    toFloat64OrNull(p['targetPosition']) AS target_position,
    p['caption'] AS caption,
    toFloat64OrNull(p['playbackSpeed']) AS playback_speed,
    p['userId'] AS user_id,
    p['applicationVer'] AS application_ver,
    p['playlistId'] AS playlist_id,
    toFloat64OrNull(p['bufferTimeSum']) AS buffer_time_sum,
    toFloat64OrNull(p['playTimeSum']) AS play_time_sum,
    toFloat64OrNull(p['averageBitrate']) AS average_bitrate,
    toFloat64OrNull(p['joinTime']) AS join_time,
    toFloat64OrNull(p['canPlay']) AS can_play,
    toFloat64OrNull(p['playerJSLoadTime']) AS player_js_load_time,
    p['audioLanguage'] AS audio_language,
    p['captionsLanguage'] AS captions_language,
    toInt64OrNull(p['soundMode']) AS sound_mode,
    toInt64OrNull(p['tabMode']) AS tab_mode,
    toFloat64OrNull(p['forwardBufferHealth']) AS forward_buffer_health,
    toFloat64OrNull(p['manifestDownloadTime']) AS manifest_download_time,
    toFloat64OrNull(p['segmentDownloadTime']) AS segment_download_time,
    toFloat64OrNull(p['bandwidth']) AS bandwidth,
    toFloat64OrNull(p['droppedFramesRatio']) AS dropped_frames_ratio,
    toFloat64OrNull(p['targetBuffer']) AS target_buffer,
    p['networkConnectionType'] AS network_connection_type,
    toFloat64OrNull(p['networkConnectionOverhead']) AS network_connection_overhead,
    toInt64OrNull(p['flavorParamsId']) AS flavor_params_id,
    p['language'] AS language,
    p['errorCode'] AS error_code,
    p['errorDetails'] AS error_details,
    toInt64OrNull(p['errorPosition']) AS error_position,
    p['playerSkin'] AS player_skin,
    toInt64OrNull(p['virtualEventId']) AS virtual_event_id,
    p['persistentSessionId'] AS persistent_session_id,
    p['application'] AS application,
    p['kalturaApplication'] AS kaltura_application,
    p['kalturaApplicationVer'] AS kaltura_application_ver,
    p['buttonName'] AS button_name,
    p['buttonType'] AS button_type,
    p['buttonValue'] AS button_value,
    p['buttonInfo'] AS button_info,
    p['pageName'] AS page_name,
    p['pageType'] AS page_type,
    p['pageLoadType'] AS page_load_type,
    if(session_start_time > 100000000000, fromUnixTimestamp64Milli(session_start_time),
       if(session_start_time > 0, toDateTime64(session_start_time, 3), NULL)) AS session_started_at,
    ks['hash'] AS ks_hash,
    if(empty(ks), 'none', ks['status']) AS ks_status,
    toInt64OrNull(ks['partner_id']) AS ks_partner_id,
    ks['user_id'] AS ks_user_id,
    toInt64OrNull(ks['expiry']) AS ks_expiry,
    ks['privileges'] AS ks_privileges,
    missing AS missing_fields,
    mapFilter((k, v) -> NOT has(['eventType', 'partnerId', 'entryId', 'flavourId', 'sessionId', 'eventIndex', 'bufferTime', 'actualBitrate', 'preferredBitrate', 'referrer', 'deliveryType', 'playbackType', 'kalsig', 'sessionStartTime', 'uiConfId', 'clientVer', 'clientTag', 'position', 'playbackContext', 'customVar1', 'customVar2', 'customVar3', 'socialNetwork', 'reportType', 'targetPosition', 'caption', 'playbackSpeed', 'ks', 'userId', 'applicationVer', 'playlistId', 'bufferTimeSum', 'playTimeSum', 'averageBitrate', 'joinTime', 'canPlay', 'playerJSLoadTime', 'audioLanguage', 'captionsLanguage', 'soundMode', 'tabMode', 'forwardBufferHealth', 'manifestDownloadTime', 'segmentDownloadTime', 'bandwidth', 'droppedFramesRatio', 'targetBuffer', 'networkConnectionType', 'networkConnectionOverhead', 'flavorParamsId', 'language', 'errorCode', 'errorDetails', 'errorPosition', 'playerSkin', 'virtualEventId', 'persistentSessionId', 'application', 'kalturaApplication', 'kalturaApplicationVer', 'buttonName', 'buttonType', 'buttonValue', 'buttonInfo', 'pageName', 'pageType', 'pageLoadType', 'service', 'action', 'apiVersion', 'format'], k), p) AS extra,
    ip,
    user_agent
FROM analytics.events_incoming
WHERE kind = 'e';

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.rejected_events_mv TO analytics.rejected_events AS
WITH
    arrayFilter(x -> x != '' AND NOT startsWith(x, '='), splitByChar('&', q)) AS pairs,  -- no nameless pairs
    mapUpdate(body, mapFromArrays(
        arrayMap(x -> toValidUTF8(decodeURLFormComponent(substringIndex(x, '=', 1))), pairs),
        arrayMap(x -> if(position(x, '=') > 0, toValidUTF8(decodeURLFormComponent(substring(x, position(x, '=') + 1))), ''), pairs)
    )) AS p
SELECT
    fromUnixTimestamp64Milli(received_ms) AS received_at,
    reason,
    message,
    toInt64OrNull(p['partnerId']) AS partner_id,
    toInt64OrNull(trimBoth(p['eventType'])) AS event_type,
    q AS raw_query,
    raw_body,
    ks['hash'] AS ks_hash,
    ip,
    user_agent
FROM analytics.events_incoming
WHERE kind = 'r';
