-- Sessions and viewers count only ids that were sent (a new migration: deployments that applied
-- 002, 005 and 009 get it too).
--   * sessions: 002 counted uniq(sessionId) over every event, so events without a sessionId (stored as
--     '') added one session. Now uniq over non-empty sessionIds only.
--   * viewers: userId, else sessionId, over plays; a play with neither was the viewer 's:', so every
--     such play in a bucket collapsed into one made-up viewer. Now a play with neither id is not
--     counted as a viewer (it still counts as a play). Same fix in entry_hourly (summary,
--     top-content, timeline), referrer_daily (referrers) and context_daily (contexts).
-- The views are replaced (DROP + CREATE); rows the aggregate tables already hold are not rewritten:
-- hours and days aggregated before this migration keep the counts the earlier views made.

DROP VIEW IF EXISTS analytics.entry_hourly_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.entry_hourly_mv TO analytics.entry_hourly AS
SELECT
    partner_id,
    entry_id,
    toStartOfHour(toDateTime(received_at, 'UTC')) AS hour,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 2) AS play_requests,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 4) AS resumes,
    countIf(event_type = 11) AS reached_25,
    countIf(event_type = 12) AS reached_50,
    countIf(event_type = 13) AS reached_75,
    countIf(event_type = 14) AS reached_100,
    countIf(event_type = 99) AS views,
    10 * countIf(event_type = 99) AS view_seconds,
    sumIf(ifNull(buffer_time, 0), event_type = 99) AS view_buffer_seconds,
    sumIf(ifNull(actual_bitrate, 0), event_type = 99) AS bitrate_sum,
    countIf(event_type = 99 AND actual_bitrate IS NOT NULL) AS bitrate_count,
    sumIf(ifNull(join_time, 0), event_type = 3) AS join_time_sum,
    countIf(event_type = 3 AND join_time IS NOT NULL) AS join_time_count,
    countIf(event_type = 21) AS share_clicks,
    countIf(event_type = 22) AS shares,
    countIf(event_type = 23) AS downloads,
    countIf(event_type = 24) AS report_clicks,
    countIf(event_type = 25) AS reports,
    countIf(event_type = 35) AS seeks,
    countIf(event_type = 98) AS errors,
    uniqStateIf(session_id, session_id != '') AS sessions,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)),
                event_type = 3 AND (user_id != '' OR session_id != '')) AS viewers
FROM analytics.events
GROUP BY partner_id, entry_id, hour;

DROP VIEW IF EXISTS analytics.context_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.context_daily_mv TO analytics.context_daily AS
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    playback_context,
    custom_var1,
    custom_var2,
    custom_var3,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 14) AS reached_100,
    10 * countIf(event_type = 99) AS view_seconds,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)),
                event_type = 3 AND (user_id != '' OR session_id != '')) AS viewers
FROM analytics.events
WHERE event_type IN (1, 3, 14, 99)
GROUP BY partner_id, day, playback_context, custom_var1, custom_var2, custom_var3;

DROP VIEW IF EXISTS analytics.referrer_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.referrer_daily_mv TO analytics.referrer_daily AS
WITH
    decodeURLComponent(decodeURLComponent(referrer)) AS percent_decoded,
    replaceAll(percent_decoded, ' ', '+') AS base64_text,
    if(tryBase64Decode(base64_text) != '', tryBase64Decode(base64_text), tryBase64URLDecode(base64_text)) AS base64_decoded,
    lower(decodeURLComponent(decodeURLComponent(
        if(match(base64_decoded, '^[A-Za-z][A-Za-z0-9+.-]*(://|%3[Aa])'), base64_decoded, percent_decoded)))) AS url,
    multiIf(
        -- an IPv6 literal: the bracketed address ('' when the bracket is not closed)
        match(url, '^[a-z][a-z0-9+.-]*://(?:[^@/?#]*@)?\\['),
            extract(url, '^[a-z][a-z0-9+.-]*://(?:[^@/?#]*@)?(\\[[^\\]/?#@]*\\])'),
        -- domain() wants a dot in the host; single-label hosts (localhost, intranet names) come from the URL itself
        domainWithoutWWW(url) != '', domainWithoutWWW(url),
        extract(url, '^[a-z][a-z0-9+.-]*://(?:[^@/?#]*@)?([^:/?#]+)')) AS host
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    host AS referrer_domain,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 14) AS reached_100,
    10 * countIf(event_type = 99) AS view_seconds,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)),
                event_type = 3 AND (user_id != '' OR session_id != '')) AS viewers
FROM analytics.events
WHERE event_type IN (1, 3, 14, 99)
GROUP BY partner_id, day, referrer_domain;
