-- Per-concept scores stored once, exactly, in integers (issue 24), and columns named by what they hold
-- (issue 22, item 10). docs/storage.md has the bytes before and after.
--
-- 1. image_scores held each map peak as a DOUBLE: the mean of the concept's rank_less counts over the
--    windows covering the peak, i.e. (an integer sum) / (windows * |T|). A DOUBLE of such a ratio takes
--    55-60 bits in DuckDB; the two integers take about 19 and 1 (INTEGER columns are bitpacked to the
--    bits their values need). concept_peaks keeps the integers:
--      map_sum, map_windows    the map's peak (the concept with its descendants) = map_sum / (map_windows * |T|)
--      self_sum, self_windows  the same for the concept alone (its own map, no descendants)
--    A reader's DOUBLE is map_sum::DOUBLE / (map_windows::DOUBLE * |T|::DOUBLE): the engine's own
--    operations (engine/saliency.py), so every value is bit for bit the DOUBLE stored before.
-- 2. concept_index repeated every column of image_scores in concept order. concept_order keeps what a
--    search ranks and filters by (map peak, image-level count) under (synset_id, image_id); the peaks'
--    pixels are read from concept_peaks for the rows a query returns.
-- 3. image_scores and concept_index are now views with their old columns (score, self_score, ...), so old
--    queries answer as before, plus map_peak and self_map_peak: "score" meant the map peak there, while
--    image_score (image_concepts, images_with) is the image-level one.
--
-- Converting a stored DOUBLE back to its integers: the smallest windows count c (1 to the most windows
-- that can cover a pixel, ceil(large / stride)^2) for which value = round(value * c * |T|) / (c * |T|)
-- exactly, with the sum round(value * c * |T|). Distinct ratios with such small denominators lie far
-- further apart than a DOUBLE's rounding, so that pair is the stored ratio in lowest terms and gives the
-- same DOUBLE back. exact_windows is that rule; the shard merge converts older shards with it too.

-- The smallest windows count c in 1..max_windows with value = round(value * c * n_synsets) / (c * n_synsets)
-- exactly; NULL when there is none (a value that is no such ratio).
CREATE OR REPLACE MACRO exact_windows(value, max_windows, n_synsets) AS
    list_filter(range(1, max_windows + 1),
                lambda c: value = round(value * (c * n_synsets)::DOUBLE) / (c::DOUBLE * n_synsets::DOUBLE))[1];

-- One row per (image, concept of T), in image order (ingest and shard merges append each image's rows).
CREATE TABLE IF NOT EXISTS concept_peaks (
    image_id            INTEGER NOT NULL,
    synset_id           INTEGER NOT NULL,
    map_sum             INTEGER NOT NULL,  -- rank_less counts (max over the concept's descendants) summed
                                           -- over the windows covering the map's peak
    map_windows         INTEGER NOT NULL,  -- how many windows cover that pixel
    work_peak_x         INTEGER NOT NULL,  -- the map's peak, working pixels
    work_peak_y         INTEGER NOT NULL,
    self_sum            INTEGER NOT NULL,  -- the same for the concept alone
    self_windows        INTEGER NOT NULL,
    work_self_peak_x    INTEGER NOT NULL,
    work_self_peak_y    INTEGER NOT NULL,
    image_max_rank_less INTEGER,           -- image-level counts (schema 005); NULL where not computed
    image_rank_less     INTEGER
);

-- concept_index's search keys, in sorted runs of (synset_id, map peak descending, image_id).
CREATE TABLE IF NOT EXISTS concept_order (
    synset_id           INTEGER NOT NULL,
    image_id            INTEGER NOT NULL,
    map_sum             INTEGER NOT NULL,
    map_windows         INTEGER NOT NULL,
    image_max_rank_less INTEGER
);

-- image_scores' rows as integers. convis-db runs this statement itself a batch of images at a time, with
-- progress, before the rest of this file (store/migration_steps.py, in the same transaction): then no
-- image is left for it here. Run alone, it converts all.
INSERT INTO concept_peaks
SELECT image_id, synset_id,
       CAST(round(score * (map_windows * n)::DOUBLE) AS INTEGER), map_windows, work_peak_x, work_peak_y,
       CAST(round(self_score * (self_windows * n)::DOUBLE) AS INTEGER), self_windows,
       work_self_peak_x, work_self_peak_y, image_max_rank_less, image_rank_less
FROM (
    SELECT s.*, t.n,
           coalesce(exact_windows(s.score, t.most, t.n),
                    error('schema 013: image ' || s.image_id || ' concept ' || s.synset_id || ': score ' || s.score
                          || ' is no ratio of integers, so the file was not written by convis-db')) AS map_windows,
           coalesce(exact_windows(s.self_score, t.most, t.n),
                    error('schema 013: image ' || s.image_id || ' concept ' || s.synset_id || ': self_score '
                          || s.self_score || ' is no ratio of integers, so the file was not written by convis-db'))
               AS self_windows
    FROM image_scores s,
         (SELECT (SELECT count(*) FROM synsets) AS n,
                 (SELECT coalesce(max(((large + stride - 1) // stride) * ((large + stride - 1) // stride)), 1024)
                  FROM images) AS most) t
    WHERE s.image_id > (SELECT coalesce(max(image_id), -2147483648) FROM concept_peaks)
)
ORDER BY image_id, synset_id;

-- concept_index's rows as search keys (its own copy of the image-level count, as before). Run by
-- convis-db a range of concepts at a time, like the statement above.
INSERT INTO concept_order
SELECT synset_id, image_id, CAST(round(score * (map_windows * n)::DOUBLE) AS INTEGER), map_windows,
       image_max_rank_less
FROM (
    SELECT ci.*, t.n,
           coalesce(exact_windows(ci.score, t.most, t.n),
                    error('schema 013: concept_index image ' || ci.image_id || ' concept ' || ci.synset_id
                          || ': score ' || ci.score || ' is no ratio of integers')) AS map_windows
    FROM concept_index ci,
         (SELECT (SELECT count(*) FROM synsets) AS n,
                 (SELECT coalesce(max(((large + stride - 1) // stride) * ((large + stride - 1) // stride)), 1024)
                  FROM images) AS most) t
    WHERE ci.synset_id > (SELECT coalesce(max(synset_id), -2147483648) FROM concept_order)
)
ORDER BY synset_id, score DESC, image_id;

DROP TABLE image_scores;
DROP TABLE concept_index;

-- The rows image_scores held (the same columns and DOUBLEs), and the new names: map_peak (was score),
-- self_map_peak (was self_score).
CREATE VIEW image_scores AS
SELECT image_id, synset_id,
       map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
       work_peak_x, work_peak_y,
       self_sum::DOUBLE / (self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_score,
       work_self_peak_x, work_self_peak_y, image_max_rank_less, image_rank_less,
       map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
       self_sum::DOUBLE / (self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_map_peak
FROM concept_peaks;

-- The rows concept_index held: concept_order's keys with the rest of each row from concept_peaks. Its
-- image-level counts are the index's copy (NULL until `refresh_concept_index` copies a backfill in).
CREATE VIEW concept_index AS
SELECT o.synset_id, o.image_id,
       o.map_sum::DOUBLE / (o.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
       p.work_peak_x, p.work_peak_y,
       p.self_sum::DOUBLE / (p.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_score,
       p.work_self_peak_x, p.work_self_peak_y, o.image_max_rank_less,
       CASE WHEN o.image_max_rank_less IS NULL THEN NULL ELSE p.image_rank_less END AS image_rank_less,
       o.map_sum::DOUBLE / (o.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
       p.self_sum::DOUBLE / (p.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_map_peak
FROM concept_order o JOIN concept_peaks p ON p.image_id = o.image_id AND p.synset_id = o.synset_id;

-- image_concepts as before, plus map_peak and self_map_peak beside score and self_score.
CREATE OR REPLACE VIEW image_concepts AS
SELECT sc.image_id, i.path, s.name AS synset, sc.synset_id, sc.score,
       original_px(sc.work_peak_x, i.scale) AS peak_x, original_px(sc.work_peak_y, i.scale) AS peak_y,
       sc.self_score, s.depth, s.definition,
       sc.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score,
       sc.image_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_self_score,
       sc.map_peak, sc.self_map_peak
FROM image_scores sc
JOIN images i ON i.image_id = sc.image_id
JOIN synsets s ON s.synset_id = sc.synset_id;

-- What `search` ranks by, for one concept: concept_order's rows, plus concept_peaks' rows of images
-- past the index's watermark (as concept_rows does), without the peaks' pixels: a search ranks these
-- and reads the pixels from concept_peaks for the rows it returns only (query/search.py).
CREATE OR REPLACE MACRO concept_keys(sid) AS TABLE
    SELECT synset_id, image_id,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           image_max_rank_less
    FROM concept_order WHERE synset_id = sid
    UNION ALL
    SELECT synset_id, image_id,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           image_max_rank_less
    FROM concept_peaks
    WHERE synset_id = sid AND image_id > (SELECT indexed_through FROM concept_index_state);

-- concept_rows(sid) (schema 004's, read by images_with and search) with the same rows and columns: the
-- concept's search keys first, then the rest of each row from concept_peaks (joined on the keys' rows,
-- which DuckDB filters concept_peaks by), rather than through the concept_index view (a join of whole
-- tables before the concept is chosen, measured 20 x slower in images_with at 1,000 images).
CREATE OR REPLACE MACRO concept_rows(sid) AS TABLE
    SELECT k.synset_id, k.image_id, k.map_peak AS score, p.work_peak_x, p.work_peak_y,
           p.self_sum::DOUBLE / (p.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_score,
           p.work_self_peak_x, p.work_self_peak_y, k.image_max_rank_less,
           CASE WHEN k.image_max_rank_less IS NULL THEN NULL ELSE p.image_rank_less END AS image_rank_less
    FROM concept_keys(sid) k
    JOIN concept_peaks p ON p.image_id = k.image_id AND p.synset_id = k.synset_id;
