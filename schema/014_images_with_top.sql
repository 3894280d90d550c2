-- images_with without every image's rows (issue 24, queries at 1M images).
--
-- Since schema 013 the peaks' pixels are in concept_peaks alone, in image order: a concept's rows
-- there are spread over every row group. images_with joined concept_rows (concept_order joined to
-- concept_peaks) for every match, so it read every image's rows, 7,080 per image, even under a LIMIT
-- (DuckDB cannot move a LIMIT written outside the macro below its join). It now ranks the concept's
-- search keys (concept_keys, schema 013) and reads the peaks of the rows it returns; `top := N` keeps
-- the N best before that read, so images_with('dog.n.01', 0.99, top := 20) reads the concept's row
-- groups and 20 images' rows at any collection size. Without `top` it returns every match, as before.
-- Rows, columns and order are unchanged.

CREATE OR REPLACE MACRO images_with(concept, min_score, level := NULL, top := NULL) AS TABLE
WITH chosen AS (
    SELECT CASE
        WHEN coalesce(level, 'auto') NOT IN ('auto', 'image', 'map')
            THEN error('images_with: level ' || level || ' is not image or map')
        WHEN level IS NOT NULL THEN level
        WHEN EXISTS (SELECT 1 FROM image_embeddings) THEN 'image'
        ELSE 'map' END AS ranked_by
), keyed AS (
    SELECT k.image_id, k.synset_id, k.map_peak AS map_score,
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
