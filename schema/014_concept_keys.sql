-- A concept's rows read without every image's rows (issue 24, queries at 1M images).
--
-- Since schema 013 concept_index is a view joining concept_order (the concept-ordered search keys) to
-- concept_peaks (image order) for the peaks' pixels and self scores. A query over one concept's rows
-- of that view reads the concept's row groups of concept_order, but concept_peaks holds the concept's
-- rows spread over every row group, so the join reads all of them: every image's rows, 7,080 per
-- image (tens of GB at a million images). What ranks and filters (the map peak and the image-level
-- count) is all in concept_order, so:
--
-- 1. concept_keys(sid): a concept's search keys, with no pixel: concept_order's rows for the concept
--    and the images appended since the last refresh (concept_peaks past concept_index_state's
--    watermark, as concept_rows reads them). score is the map peak, the same DOUBLE as concept_rows'.
--    Search, count and regions rank over it and read concept_peaks for the rows they return only.
-- 2. images_with ranks over concept_keys and reads the peaks of the rows it returns; `top := N` keeps
--    the N best before that read, so `images_with('dog.n.01', 0.99, top := 20)` reads the concept's
--    rows and 20 images' rows at any collection size. Without `top` it returns every match as before
--    (a LIMIT written outside the macro cannot move inside it: DuckDB joins the peaks of every match).
--    Its rows, columns and order are unchanged.

CREATE OR REPLACE MACRO concept_keys(sid) AS TABLE
    SELECT synset_id, image_id, map_sum, map_windows,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
           image_max_rank_less
    FROM concept_order WHERE synset_id = sid
    UNION ALL
    SELECT synset_id, image_id, map_sum, map_windows,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
           image_max_rank_less
    FROM concept_peaks
    WHERE synset_id = sid AND image_id > (SELECT indexed_through FROM concept_index_state);

CREATE OR REPLACE MACRO images_with(concept, min_score, level := NULL, top := NULL) AS TABLE
WITH chosen AS (
    SELECT CASE
        WHEN coalesce(level, 'auto') NOT IN ('auto', 'image', 'map')
            THEN error('images_with: level ' || level || ' is not image or map')
        WHEN level IS NOT NULL THEN level
        WHEN EXISTS (SELECT 1 FROM image_embeddings) THEN 'image'
        ELSE 'map' END AS ranked_by
), keyed AS (
    SELECT k.image_id, k.synset_id, k.score AS map_score,
           k.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score, c.ranked_by
    FROM concept_keys((SELECT synset_id FROM synsets WHERE name = concept)) k, chosen c
), ranked AS (
    SELECT image_id, synset_id, map_score, image_score,
           CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END AS score
    FROM keyed
    WHERE (CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END) >= min_score
    ORDER BY score DESC, map_score DESC, image_id
    LIMIT coalesce(top, 9223372036854775807)
)
SELECT r.image_id, i.path, r.score,
       original_px(p.work_peak_x, i.scale) AS peak_x, original_px(p.work_peak_y, i.scale) AS peak_y,
       r.map_score, r.image_score
FROM ranked r
JOIN concept_peaks p ON p.image_id = r.image_id AND p.synset_id = r.synset_id
JOIN images i ON i.image_id = r.image_id
ORDER BY r.score DESC, r.map_score DESC, r.image_id;
