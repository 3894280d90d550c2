-- Each concept's best images kept apart, so that a search or images_with(..., top := N) for N <= 100 reads
-- 100 rows instead of one key per image of the collection (issue 24, queries at 1M images).
--
-- concept_order holds one key per (concept, image), so ranking a concept's images reads as many keys as
-- the collection has images: 10 ms at 1M generated images against 2 ms at 100k, and the hits' peaks then
-- come from concept_peaks, whose row groups DuckDB checks one by one (17 ms at 1M, 6 at 100k).
-- concept_top holds, per concept and per ranking (level 'image': the image-level count, then the map
-- peak, then the image id; level 'map': the map peak, then the image id, as search and images_with rank),
-- the best 100 indexed images with their peaks. It is kept by the concept index's refresh (store/
-- concept_index.py) once the collection has enough images to pay for it (its rows are a fixed cost);
-- concept_index_state.top_through says through which image it is complete (NULL: not kept).
--
-- concept_top_rows(after, through, keep): the best `keep` per concept and ranking among concept_top's
-- rows and concept_peaks' rows of the images after..through, the one rule the refresh applies. Of the
-- new rows it ranks only those that could enter a list: a concept's full lists end with their worst
-- image-level count and map peak, and a row below both cannot rank above either list's last (ties go
-- to the smaller image id, and new images have the larger ones).

ALTER TABLE concept_index_state ADD COLUMN top_through INTEGER;

CREATE TABLE concept_top (
    level VARCHAR NOT NULL,
    synset_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    map_sum INTEGER NOT NULL,
    map_windows INTEGER NOT NULL,
    image_max_rank_less INTEGER,
    work_peak_x INTEGER NOT NULL,
    work_peak_y INTEGER NOT NULL
);

CREATE OR REPLACE MACRO concept_top_rows(after_image, through_image, keep) AS TABLE
WITH bar AS (  -- per concept: its lists' lengths, their worst kept image-level count and map peak
    SELECT synset_id,
           count(*) FILTER (WHERE level = 'image') AS n_image, count(*) FILTER (WHERE level = 'map') AS n_map,
           min(image_max_rank_less) FILTER (WHERE level = 'image') AS worst_image,
           min(map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE))
               FILTER (WHERE level = 'map') AS worst_map
    FROM concept_top GROUP BY synset_id
), candidates AS (
    -- the new images' rows that could enter a list (none can that ranks below a full list's last)
    SELECT p.synset_id, p.image_id, p.map_sum, p.map_windows, p.image_max_rank_less, p.work_peak_x, p.work_peak_y
    FROM concept_peaks p LEFT JOIN bar b ON b.synset_id = p.synset_id
    WHERE p.image_id > after_image AND p.image_id <= through_image
      AND (b.synset_id IS NULL OR b.n_image < keep OR b.n_map < keep OR p.image_max_rank_less >= b.worst_image
           OR p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) >= b.worst_map)
    UNION ALL
    SELECT DISTINCT synset_id, image_id, map_sum, map_windows, image_max_rank_less, work_peak_x, work_peak_y
    FROM concept_top
), scored AS (
    SELECT *, map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak
    FROM candidates
)
SELECT level, synset_id, image_id, map_sum, map_windows, image_max_rank_less, work_peak_x, work_peak_y
FROM (
    SELECT 'image' AS level, *,
           row_number() OVER (PARTITION BY synset_id ORDER BY image_max_rank_less DESC, map_peak DESC, image_id) AS pos
    FROM scored WHERE image_max_rank_less IS NOT NULL
    UNION ALL
    SELECT 'map' AS level, *, row_number() OVER (PARTITION BY synset_id ORDER BY map_peak DESC, image_id) AS pos
    FROM scored
)
WHERE pos <= keep;

CREATE OR REPLACE MACRO images_with(concept, min_score, level := NULL, top := NULL) AS TABLE
WITH chosen AS (
    SELECT CASE
        WHEN coalesce(level, 'auto') NOT IN ('auto', 'image', 'map')
            THEN error('images_with: level ' || level || ' is not image or map')
        WHEN level IS NOT NULL THEN level
        WHEN EXISTS (SELECT 1 FROM image_embeddings) THEN 'image'
        ELSE 'map' END AS ranked_by
), kept AS (  -- one row when concept_top answers: kept through the watermark, and top <= its 100
    SELECT indexed_through FROM concept_index_state
    WHERE top_through = indexed_through AND coalesce(top, 9223372036854775807) <= 100
), scanned AS (  -- one row when it does not: every key is ranked
    SELECT 1 AS one WHERE NOT EXISTS (SELECT 1 FROM kept)
), keyed AS (
    SELECT k.image_id, k.synset_id, k.map_peak AS map_score,
           k.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score, c.ranked_by,
           NULL::INTEGER AS work_peak_x, NULL::INTEGER AS work_peak_y
    FROM concept_keys((SELECT synset_id FROM synsets WHERE name = concept)) k JOIN scanned ON true, chosen c
    UNION ALL
    SELECT t.image_id, t.synset_id,
           t.map_sum::DOUBLE / (t.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_score,
           t.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score, c.ranked_by,
           t.work_peak_x, t.work_peak_y
    FROM concept_top t JOIN kept ON true JOIN chosen c ON t.level = c.ranked_by
    WHERE t.synset_id = (SELECT synset_id FROM synsets WHERE name = concept)
    UNION ALL  -- with concept_top: the images past the watermark too (not yet in any list)
    SELECT p.image_id, p.synset_id,
           p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_score,
           p.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score, c.ranked_by,
           p.work_peak_x, p.work_peak_y
    FROM concept_peaks p JOIN kept ON p.image_id > kept.indexed_through, chosen c
    WHERE p.synset_id = (SELECT synset_id FROM synsets WHERE name = concept)
), ranked AS (
    SELECT image_id, synset_id, map_score, image_score, work_peak_x, work_peak_y,
           CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END AS score
    FROM keyed
    WHERE (CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END) >= min_score
    ORDER BY score DESC, map_score DESC, image_id
    LIMIT coalesce(top, 9223372036854775807)
), placed AS (
    SELECT r.image_id, r.score, r.map_score, r.image_score, r.work_peak_x, r.work_peak_y
    FROM ranked r WHERE r.work_peak_x IS NOT NULL
    UNION ALL
    SELECT r.image_id, r.score, r.map_score, r.image_score, p.work_peak_x, p.work_peak_y
    FROM (SELECT * FROM ranked WHERE work_peak_x IS NULL) r
    JOIN concept_peaks p ON p.image_id = r.image_id AND p.synset_id = r.synset_id
)
SELECT r.image_id, i.path, r.score,
       original_px(r.work_peak_x, i.scale) AS peak_x, original_px(r.work_peak_y, i.scale) AS peak_y,
       r.map_score, r.image_score
FROM placed r
JOIN images i ON i.image_id = r.image_id
ORDER BY r.score DESC, r.map_score DESC, r.image_id;
