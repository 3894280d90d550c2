-- Compact concept data (issue 24): the same answers in about a third of the bytes (docs/storage.md).
--
-- 1. Each window's top-K as one row of lists, not K rows. window_concepts held, per window, K rows of
--    (image_id, window_idx, k, synset_id, rank_less). k repeats 1..K and rank_less is |T| - k unless
--    cosines tie, yet DuckDB cannot see either pattern across windows (7 bits per value each, measured),
--    and 174,000 rows per image at paper settings make every ingest write whole row groups that a
--    checkpoint rewrites. window_top holds one row per window:
--      synset_ids  the top_k synset ids, best first: k is the position (1-based)
--      rank_less   NULL when every entry's rank_less is |T| - k (no tie among the cosines that decide
--                  it: nearly every window), else the whole list of exact counts, as before.
--    window_concepts is now a view with the same columns and values, so every query that read the
--    table (window_top_concepts, regions_with, users' SQL) answers as before. A database opened
--    read-only before this migration keeps its window_concepts table: same name, same columns.
--    Ingest and shard merges write window_top (store/image_store.py: insert_tables), shards keep
--    window_concepts rows (shard format unchanged).

CREATE TABLE IF NOT EXISTS window_top (
    image_id   INTEGER NOT NULL,
    window_idx INTEGER NOT NULL,
    synset_ids INTEGER[] NOT NULL,     -- top_k synset ids by cosine, best first (k = position)
    rank_less  INTEGER[]               -- NULL: rank_less[k] = |T| - k for every k, else the exact counts
);

-- The rows of window_concepts, one window at a time. convis-db runs this statement itself a batch of
-- images at a time, with progress, before the rest of this file (store/migration_steps.py, in the same
-- transaction): then only images past those batches are left here, none. Run alone, it converts all.
INSERT INTO window_top (image_id, window_idx, synset_ids, rank_less)
SELECT image_id, window_idx, list(synset_id ORDER BY k),
       CASE WHEN bool_and(rank_less = (SELECT count(*) FROM synsets) - k) THEN NULL
            ELSE list(rank_less ORDER BY k) END
FROM window_concepts
WHERE image_id > (SELECT coalesce(max(image_id), 0) FROM window_top)
GROUP BY image_id, window_idx
ORDER BY image_id, window_idx;

DROP TABLE window_concepts;

-- The rows window_concepts held: one per (image, window, k), k = 1 the best.
CREATE VIEW window_concepts AS
SELECT image_id, window_idx, k, synset_id,
       CAST(coalesce(ties[k], (SELECT count(*) FROM synsets) - k) AS INTEGER) AS rank_less
FROM (
    SELECT image_id, window_idx, rank_less AS ties,
           CAST(unnest(range(1, len(synset_ids) + 1)) AS SMALLINT) AS k,
           unnest(synset_ids) AS synset_id
    FROM window_top
);
