-- Equal window coverage and the paper's image-level similarity (issue 11).
--
-- 1. The window lattice is recorded per database (engine/windows.py):
--    'equal'  corners from -(large - stride) on both axes: every pixel is covered by as many windows;
--    'origin' corners at multiples of the stride from (0, 0): the layout of every database made
--             before this migration. A database that already holds images keeps 'origin' for all of
--             its images, new ones included (scores are only comparable under one layout); a database
--             without images (a new one) uses 'equal'.
--    images.layout repeats it per image, so each row says how to rebuild its window grid; windows'
--    boxes may now start at negative coordinates (in the border filled with the model's mean colour).
--
-- 2. Image-level scores: E_I of the whole image, prepared by the model's own open_clip preprocessing
--    (image_embeddings), and per concept its max_rank_sim and rank_sim as exact integer counts
--    (|T| * rank_sim, as window_concepts.rank_less). NULL for images ingested before this migration
--    until `convis-db ingest --backfill-image-level` fills them.

CREATE TABLE window_layout (
    layout     VARCHAR NOT NULL CHECK (layout IN ('equal', 'origin')),
    decided_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
INSERT INTO window_layout (layout)
SELECT CASE WHEN EXISTS (SELECT 1 FROM images) THEN 'origin' ELSE 'equal' END;

ALTER TABLE images ADD COLUMN layout VARCHAR DEFAULT 'origin';

-- Windows' top concepts with their boxes in original pixels, now clipped to the image on every side
-- (with the equal layout a box may start before the image; the stored windows keep the full box).
CREATE OR REPLACE VIEW window_top_concepts AS
SELECT wc.image_id, wc.window_idx, wc.k, s.name AS synset, wc.synset_id,
       wc.rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS rank_sim,
       CAST(greatest(floor(w.x0 * i.scale), 0) AS INTEGER) AS x0,
       CAST(greatest(floor(w.y0 * i.scale), 0) AS INTEGER) AS y0,
       CAST(least(ceil(w.x1 * i.scale), i.width) AS INTEGER) AS x1,
       CAST(least(ceil(w.y1 * i.scale), i.height) AS INTEGER) AS y1
FROM window_concepts wc
JOIN windows w ON w.image_id = wc.image_id AND w.window_idx = wc.window_idx
JOIN images i ON i.image_id = wc.image_id
JOIN synsets s ON s.synset_id = wc.synset_id;

-- x = E_I(whole image), L2-normalised, float32; one row per image that has image-level scores.
CREATE TABLE image_embeddings (
    image_id  INTEGER PRIMARY KEY,
    embedding FLOAT[] NOT NULL
);

-- image_max_rank_less = |T| * max_rank_sim(x, X) (X and its descendants), image_rank_less =
-- |T| * rank_sim(x, X) (X alone); exact integers, NULL where not computed.
ALTER TABLE image_scores ADD COLUMN image_max_rank_less INTEGER;
ALTER TABLE image_scores ADD COLUMN image_rank_less INTEGER;
ALTER TABLE concept_index ADD COLUMN image_max_rank_less INTEGER;
ALTER TABLE concept_index ADD COLUMN image_rank_less INTEGER;

-- All scores of one concept, indexed or not yet indexed (now with the image-level counts).
CREATE OR REPLACE MACRO concept_rows(sid) AS TABLE
    SELECT synset_id, image_id, score, peak_x, peak_y, self_score, self_peak_x, self_peak_y,
           image_max_rank_less, image_rank_less
    FROM concept_index WHERE synset_id = sid
    UNION ALL
    SELECT synset_id, image_id, score, peak_x, peak_y, self_score, self_peak_x, self_peak_y,
           image_max_rank_less, image_rank_less
    FROM image_scores
    WHERE synset_id = sid AND image_id > (SELECT indexed_through FROM concept_index_state);

-- Every concept's scores for every image, now with the image-level scores (NULL where not computed).
CREATE OR REPLACE VIEW image_concepts AS
SELECT sc.image_id, i.path, s.name AS synset, sc.synset_id, sc.score,
       CAST(round((sc.peak_x + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_x,
       CAST(round((sc.peak_y + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_y,
       sc.self_score, s.depth, s.definition,
       sc.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score,
       sc.image_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_self_score
FROM image_scores sc
JOIN images i ON i.image_id = sc.image_id
JOIN synsets s ON s.synset_id = sc.synset_id;

-- images_with('dog.n.01', 0.99 [, level := 'image' | 'map']): images whose score for the concept (or any
-- descendant) reaches min_score, best first. level 'image': the image-level max_rank_sim of the whole
-- image (the paper's Table I quantity; images without image-level scores are left out); 'map': the peak
-- of the saliency map. Unset: 'image' when the database has image-level scores, else 'map' (as `search`).
-- `score` is the chosen one; map_score and image_score give both. Exact for every threshold.
CREATE OR REPLACE MACRO images_with(concept, min_score, level := NULL) AS TABLE
WITH chosen AS (
    SELECT CASE
        WHEN coalesce(level, 'auto') NOT IN ('auto', 'image', 'map')
            THEN error('images_with: level ' || level || ' is not image or map')
        WHEN level IS NOT NULL THEN level
        WHEN EXISTS (SELECT 1 FROM image_embeddings) THEN 'image'
        ELSE 'map' END AS level
), rows AS (
    SELECT cr.image_id, i.path, cr.score AS map_score,
           cr.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score,
           CAST(round((cr.peak_x + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_x,
           CAST(round((cr.peak_y + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_y
    FROM concept_rows((SELECT synset_id FROM synsets WHERE name = concept)) cr
    JOIN images i ON i.image_id = cr.image_id
)
SELECT r.image_id, r.path, CASE WHEN c.level = 'image' THEN r.image_score ELSE r.map_score END AS score,
       r.peak_x, r.peak_y, r.map_score, r.image_score
FROM rows r, chosen c
WHERE (CASE WHEN c.level = 'image' THEN r.image_score ELSE r.map_score END) >= min_score
ORDER BY score DESC, r.map_score DESC, r.image_id;
