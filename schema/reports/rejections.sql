-- rejections: what clients send wrong: rejected beacons per partner and reason, with an example
-- params: partner from to
--
-- Reads analytics.rejections_daily (per partner × day × reason, UTC). partner_id is NULL when the
-- beacon's partnerId was missing or not an integer (stored as -1); --partner selects one partner's.
-- rejected = count of beacons answered 400; share = rejected / all rejected in the result;
-- example_message = one of the group's one-line reasons; last_seen = the latest receive time (UTC).
SELECT
    nullIf(j.partner_id, -1) AS partner_id,
    reason,
    sum(j.rejected) AS rejected,
    round(sum(j.rejected) / sum(sum(j.rejected)) OVER (), 4) AS share,
    anyLast(j.example_message) AS example_message,
    formatDateTime(max(j.last_seen), '%Y-%m-%d %H:%i:%S', 'UTC') AS last_seen
FROM analytics.rejections_daily AS j
WHERE ({partner:Nullable(Int64)} IS NULL OR j.partner_id = {partner:Nullable(Int64)})
  AND day >= {from:Date}
  AND day <= {to:Date}
GROUP BY partner_id, reason
ORDER BY rejected DESC, partner_id, reason
