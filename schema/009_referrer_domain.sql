-- Fix of 004's referrer domain (a new migration: deployments that applied 004 get it too).
--   * domainWithoutWWW is case-sensitive and 004 lower-cased its result, so 'https://WWW.Example.com/'
--     was counted as 'www.example.com', apart from 'example.com'. The URL is now lower-cased first.
--   * An IPv6 literal host ('http://[2001:db8::1]:8080/x') came out as '[2001' (or '[' after a
--     user@): it is now kept with its brackets, '[2001:db8::1]', as the URL writes it.
-- The view is replaced (DROP + CREATE); rows referrer_daily already holds are not rewritten: days
-- aggregated before this migration keep the domains 004 derived.

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
    uniqStateIf(if(user_id != '', concat('u:', user_id), concat('s:', session_id)), event_type = 3) AS viewers
FROM analytics.events
WHERE event_type IN (1, 3, 14, 99)
GROUP BY partner_id, day, referrer_domain;
