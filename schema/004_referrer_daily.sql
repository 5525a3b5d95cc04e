-- Traffic sources per partner × day (UTC) × referrer domain, for `report referrers`.
-- The referrer arrives decoded once (analytics.events.referrer) but clients send it in several
-- shapes: the upstream document's clients percent-encode it (sometimes twice: 'http%253A%2F%2F…'),
-- the current Kaltura player sends it Base64-encoded (standard or URL-safe alphabet; a '+' sent
-- unescaped arrives as a space). The view percent-decodes twice, Base64-decodes when that yields a
-- URL, percent-decodes that twice more, and keeps the host without 'www.' in lower case. A referrer that is
-- missing or has no recognisable host gets the domain '' (shown as '(none)').

CREATE TABLE IF NOT EXISTS analytics.referrer_daily
(
    partner_id Int64,
    day Date,
    referrer_domain String,
    impressions SimpleAggregateFunction(sum, UInt64),
    plays SimpleAggregateFunction(sum, UInt64),
    reached_100 SimpleAggregateFunction(sum, UInt64),
    view_seconds SimpleAggregateFunction(sum, UInt64),
    viewers AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (partner_id, day, referrer_domain)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.referrer_daily_mv TO analytics.referrer_daily AS
WITH
    decodeURLComponent(decodeURLComponent(referrer)) AS percent_decoded,
    replaceAll(percent_decoded, ' ', '+') AS base64_text,
    if(tryBase64Decode(base64_text) != '', tryBase64Decode(base64_text), tryBase64URLDecode(base64_text)) AS base64_decoded,
    decodeURLComponent(decodeURLComponent(
        if(match(base64_decoded, '^[A-Za-z][A-Za-z0-9+.-]*(://|%3[Aa])'), base64_decoded, percent_decoded))) AS url,
    -- domain() wants a dot in the host; single-label hosts (localhost, intranet names) come from the URL itself
    if(domainWithoutWWW(url) != '', domainWithoutWWW(url),
       extract(url, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^:/?#]+)')) AS host
SELECT
    partner_id,
    toDate(received_at, 'UTC') AS day,
    lower(host) AS referrer_domain,
    countIf(event_type = 1) AS impressions,
    countIf(event_type = 3) AS plays,
    countIf(event_type = 14) AS reached_100,
    10 * countIf(event_type = 99) AS view_seconds,
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)), event_type = 3) AS viewers
FROM analytics.events
WHERE event_type IN (1, 3, 14, 99)
GROUP BY partner_id, day, referrer_domain;
