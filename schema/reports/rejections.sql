-- rejections: what clients send wrong: rejected beacons per partner and reason, with an example
-- params: partner from to
--
-- Reads analytics.rejections_daily_v2 (per partner × day × reason, UTC; schema/011), and
-- analytics.rejections_daily for what was aggregated before 011 (schema/007, where -1 stood for a
-- missing partner and is read as NULL, as this report always showed it). partner_id is NULL ('-')
-- when the beacon's partnerId was missing or not an integer; --partner selects one partner's
-- (--partner -1 the partner -1's, from 011 on).
-- rejected = count of beacons answered 400; share = rejected / all rejected in the result;
-- example_message = one of the group's one-line reasons; last_seen = the latest receive time (UTC).
SELECT
    j.partner_id AS partner_id,
    reason,
    sum(j.rejected) AS rejected,
    round(sum(j.rejected) / sum(sum(j.rejected)) OVER (), 4) AS share,
    anyLast(j.example_message) AS example_message,
    formatDateTime(max(j.last_seen), '%Y-%m-%d %H:%i:%S', 'UTC') AS last_seen
FROM
(
    SELECT partner_id, day, reason, rejected, example_message, last_seen
    FROM analytics.rejections_daily_v2
    UNION ALL
    SELECT nullIf(partner_id, -1) AS partner_id, day, reason, rejected, example_message, last_seen
    FROM analytics.rejections_daily
) AS j
WHERE ({partner:Nullable(Int64)} IS NULL OR j.partner_id = {partner:Nullable(Int64)})
  AND j.day >= {from:Date}
  AND j.day <= {to:Date}
GROUP BY partner_id, reason
ORDER BY rejected DESC, partner_id, reason
