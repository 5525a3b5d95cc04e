-- Merges of analytics.events column by column (the vertical algorithm) from the first merge on, not
-- only from 131072 rows (the default): a wide table of ~60 columns merged row-wise holds a buffer per
-- column and a block of every column at once. Measured with bench/rss_ship.py (shipping a 640 MiB
-- backlog into the embedded engine): the merge peaks went from ~450 MiB tracked (+~100 MiB RSS)
-- to ~35 MiB, at the same insert rate.
ALTER TABLE analytics.events MODIFY SETTING vertical_merge_algorithm_min_rows_to_activate = 1;
