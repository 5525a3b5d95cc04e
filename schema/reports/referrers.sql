-- referrers: where viewers came from, per referrer domain: loads, plays, viewers, minutes viewed
-- params: partner from to limit
--
-- Reads analytics.referrer_daily (per partner × day × domain, UTC). The domain is derived in
-- ClickHouse from the referrer as sent (percent-encoded once or twice, or Base64), lower case,
-- without 'www.'; '(none)' = no referrer or no recognisable host (schema/004_referrer_daily.sql).
-- loads = impressions (1); plays = eventType 3; unique_viewers = uniq(userId, else sessionId) over
-- plays; minutes_viewed = 10 s per VIEW event (99) / 60; play_through_ratio = reached 100 % / plays;
-- share_of_plays = the domain's plays / all plays in the result's partner and period.
SELECT
    if(referrer_domain = '', '(none)', referrer_domain) AS domain,
    sum(r.impressions) AS loads,
    sum(r.plays) AS plays,
    uniqMerge(r.viewers) AS unique_viewers,
    round(sum(r.view_seconds) / 60, 2) AS minutes_viewed,
    round(sum(r.reached_100) / nullIf(sum(r.plays), 0), 4) AS play_through_ratio,
    round(sum(r.plays) / nullIf(sum(sum(r.plays)) OVER (), 0), 4) AS share_of_plays
FROM analytics.referrer_daily AS r
WHERE ({partner:Nullable(Int64)} IS NULL OR r.partner_id = {partner:Nullable(Int64)})
  AND day >= {from:Date}
  AND day <= {to:Date}
GROUP BY domain
ORDER BY plays DESC, loads DESC, domain
LIMIT {limit:UInt32}
