-- Each peak stored as the index of its map segment on each axis, not as a working pixel (issue 24).
--
-- A saliency map is constant on the rectangles between window edges (engine/saliency.py): on each axis
-- the pixels are cut into segments where the set of covering windows changes, and the engine gives a
-- peak as the centre pixel of its segment, (start + stop - 1) // 2. At the paper's settings a 632-pixel
-- axis has 40 segments: a segment index takes 6 bits where the pixel took 10, 11 KB per image over the
-- four peak columns.
--
-- images.segment_centres_x / _y list each image's segment centres along x and y (working pixels, about
-- 70 numbers: 0.1 KB per image). concept_map_terms and concept_self_terms hold what concept_peaks and
-- concept_self_peaks held, with peak_segment_x/y (and self_peak_segment_x/y), a peak's index in those
-- lists (from 0), in place of its pixels. concept_peaks and concept_self_peaks are now views with their
-- old columns, each pixel read from its image's list, so every reader (the views and macros of the
-- README, search, explain) gets the same rows. Writers fill the lists from the engine's segments and
-- convert each peak with list_position (store/image_store.py); the shard merge refuses a peak that is no
-- segment's centre (store/shard_checks.py).
--
-- The segments of an axis of `length` pixels, windows at origin + k * stride (k >= 0) of side `large`
-- (origin from the layout: 0, or stride - large for 'equal'), start at 0 and at every window start or
-- end inside the axis: the starts origin + k * stride (k >= 1) and the ends origin + large + k * stride
-- (k >= 0) that are > 0, two arithmetic progressions of one step, the same one when the stride divides
-- the large side. The macros below count and place them in closed form, for this upgrade's lists and for
-- SQL users; tests/test_peak_segments.py checks them against engine/saliency.axis_segments over every
-- layout, stride 1-24, large side stride to 3 x stride + 6 and axis lengths 1-69, 300, 473 and 632.

CREATE OR REPLACE MACRO lattice_origin(layout, stride, large) AS
    (CASE layout WHEN 'equal' THEN stride - large ELSE 0 END)::INTEGER;

-- The first window start inside the axis (> 0).
CREATE OR REPLACE MACRO lattice_first_start(stride, origin) AS
    origin + ((-origin) // stride + 1) * stride;

-- How many window starts come before the first window end (the stride not dividing the large side).
CREATE OR REPLACE MACRO lattice_starts_before_end(stride, large, origin) AS
    (origin + large - lattice_first_start(stride, origin)) // stride + 1;

-- The first pixel of segment j.
CREATE OR REPLACE MACRO segment_start(j, stride, large, origin) AS
    CASE WHEN j = 0 THEN 0
         WHEN large % stride = 0 OR j <= lattice_starts_before_end(stride, large, origin)
             THEN lattice_first_start(stride, origin) + (j - 1) * stride
         WHEN (j - lattice_starts_before_end(stride, large, origin) - 1) % 2 = 0
             THEN origin + large + ((j - lattice_starts_before_end(stride, large, origin) - 1) // 2) * stride
         ELSE lattice_first_start(stride, origin)
              + (lattice_starts_before_end(stride, large, origin)
                 + (j - lattice_starts_before_end(stride, large, origin) - 2) // 2) * stride
    END;

-- The centre pixel of segment j of an axis of `length` pixels: the peak the engine gives for it.
CREATE OR REPLACE MACRO segment_centre(j, length, stride, large, layout) AS
    ((segment_start(j, stride, large, lattice_origin(layout, stride, large))
      + least(segment_start(j + 1, stride, large, lattice_origin(layout, stride, large)), length) - 1)
     // 2)::INTEGER;

-- The segment that holds pixel x: the window starts and ends in 1..x.
CREATE OR REPLACE MACRO segment_of(x, stride, large, layout) AS
    (CASE WHEN x >= lattice_first_start(stride, lattice_origin(layout, stride, large))
          THEN (x - lattice_first_start(stride, lattice_origin(layout, stride, large))) // stride + 1 ELSE 0 END
     + CASE WHEN large % stride <> 0 AND x >= lattice_origin(layout, stride, large) + large
            THEN (x - lattice_origin(layout, stride, large) - large) // stride + 1 ELSE 0 END)::INTEGER;

-- Each image's segment centres, as the engine's axis_segments gives them.
ALTER TABLE images ADD COLUMN IF NOT EXISTS segment_centres_x INTEGER[];
ALTER TABLE images ADD COLUMN IF NOT EXISTS segment_centres_y INTEGER[];
UPDATE images SET
    segment_centres_x = list_transform(range(segment_of(work_width - 1, stride, large, layout) + 1),
                                       lambda j: segment_centre(j, work_width, stride, large, layout)),
    segment_centres_y = list_transform(range(segment_of(work_height - 1, stride, large, layout) + 1),
                                       lambda j: segment_centre(j, work_height, stride, large, layout))
WHERE segment_centres_x IS NULL OR segment_centres_y IS NULL;

-- A row of no image has no lattice to place its peaks in: refuse rather than drop it (convis-db writes an
-- image's rows with its images row, in one transaction; such rows are left by a hand-made DELETE).
SELECT error('schema 022: concept_peaks holds rows of image ' || p.image_id || ', which images does not hold: '
             || 'delete them (DELETE FROM concept_peaks WHERE image_id NOT IN (SELECT image_id FROM images), '
             || 'and the same in concept_self_peaks) with DuckDB, then open the file again')
FROM (SELECT image_id FROM concept_peaks UNION ALL SELECT image_id FROM concept_self_peaks) p
WHERE p.image_id NOT IN (SELECT image_id FROM images)
LIMIT 1;

-- A peak that is not its segment's centre was not written by convis-db's engine: refuse rather than
-- move it.
SELECT error('schema 022: image ' || p.image_id || ' concept ' || p.synset_id || ': the peak ('
             || p.work_peak_x || ', ' || p.work_peak_y || ') is not the centre of a segment of its map, '
             || 'so the file was not written by convis-db')
FROM concept_peaks p JOIN images i ON i.image_id = p.image_id
WHERE NOT list_contains(i.segment_centres_x, p.work_peak_x) OR NOT list_contains(i.segment_centres_y, p.work_peak_y)
LIMIT 1;

SELECT error('schema 022: image ' || p.image_id || ' concept ' || p.synset_id || ': the self peak ('
             || p.work_self_peak_x || ', ' || p.work_self_peak_y || ') is not the centre of a segment of its '
             || 'map, so the file was not written by convis-db')
FROM concept_self_peaks p JOIN images i ON i.image_id = p.image_id
WHERE NOT list_contains(i.segment_centres_x, p.work_self_peak_x)
   OR NOT list_contains(i.segment_centres_y, p.work_self_peak_y)
LIMIT 1;

CREATE TABLE IF NOT EXISTS concept_map_terms (
    image_id            INTEGER NOT NULL,
    synset_id           INTEGER NOT NULL,
    map_sum             INTEGER NOT NULL,
    map_windows         INTEGER NOT NULL,
    peak_segment_x      INTEGER NOT NULL,  -- the map peak's index in images.segment_centres_x, from 0
    peak_segment_y      INTEGER NOT NULL,  -- and in segment_centres_y
    image_max_rank_less INTEGER
);

CREATE TABLE IF NOT EXISTS concept_self_terms (
    image_id            INTEGER NOT NULL,
    synset_id           INTEGER NOT NULL,  -- a concept with descendants (schema 016)
    self_sum            INTEGER NOT NULL,
    self_windows        INTEGER NOT NULL,
    self_peak_segment_x INTEGER NOT NULL,
    self_peak_segment_y INTEGER NOT NULL,
    image_rank_less     INTEGER
);

-- The rows in image order. convis-db runs these statements itself a batch of images at a time, with
-- progress (store/migration_steps.py); run alone, they move all.
INSERT INTO concept_map_terms
SELECT p.image_id, p.synset_id, p.map_sum, p.map_windows,
       list_position(i.segment_centres_x, p.work_peak_x) - 1, list_position(i.segment_centres_y, p.work_peak_y) - 1,
       p.image_max_rank_less
FROM concept_peaks p JOIN images i ON i.image_id = p.image_id
WHERE p.image_id > (SELECT coalesce(max(image_id), -2147483648) FROM concept_map_terms)
ORDER BY p.image_id, p.synset_id;

INSERT INTO concept_self_terms
SELECT p.image_id, p.synset_id, p.self_sum, p.self_windows,
       list_position(i.segment_centres_x, p.work_self_peak_x) - 1,
       list_position(i.segment_centres_y, p.work_self_peak_y) - 1, p.image_rank_less
FROM concept_self_peaks p JOIN images i ON i.image_id = p.image_id
WHERE p.image_id > (SELECT coalesce(max(image_id), -2147483648) FROM concept_self_terms)
ORDER BY p.image_id, p.synset_id;

DROP TABLE concept_peaks;
DROP TABLE concept_self_peaks;

CREATE OR REPLACE VIEW concept_peaks AS
SELECT t.image_id, t.synset_id, t.map_sum, t.map_windows,
       i.segment_centres_x[t.peak_segment_x + 1] AS work_peak_x,
       i.segment_centres_y[t.peak_segment_y + 1] AS work_peak_y,
       t.image_max_rank_less
FROM concept_map_terms t JOIN images i ON i.image_id = t.image_id;

CREATE OR REPLACE VIEW concept_self_peaks AS
SELECT t.image_id, t.synset_id, t.self_sum, t.self_windows,
       i.segment_centres_x[t.self_peak_segment_x + 1] AS work_self_peak_x,
       i.segment_centres_y[t.self_peak_segment_y + 1] AS work_self_peak_y,
       t.image_rank_less
FROM concept_self_terms t JOIN images i ON i.image_id = t.image_id;

-- Readers that need no peak read the terms alone (no join with images): schema 018's pending keys and
-- schema 020's counts, restated over concept_map_terms with the same rows.
CREATE OR REPLACE MACRO concept_keys(sid) AS TABLE
    SELECT synset_id, image_id,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           image_max_rank_less
    FROM concept_order WHERE synset_id = sid
    UNION ALL
    SELECT p.synset_id, p.image_id,
           p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           p.image_max_rank_less
    FROM concept_map_terms p JOIN concept_index_state st ON p.image_id > st.indexed_through
    WHERE p.synset_id = sid;

CREATE OR REPLACE MACRO concept_counts_rows(after_image, through_image) AS TABLE
WITH counted AS (
    SELECT synset_id, sum(map_images)::BIGINT AS map_images, sum(image_images)::BIGINT AS image_images
    FROM (
        SELECT synset_id, map_images, image_images FROM concept_counts
        UNION ALL
        SELECT synset_id, count(*) AS map_images, count(image_max_rank_less) AS image_images
        FROM concept_map_terms WHERE image_id > after_image AND image_id <= through_image
        GROUP BY synset_id
    )
    GROUP BY synset_id
), ends AS (
    SELECT synset_id, min(image_max_rank_less) FILTER (WHERE level = 'image') AS image_last,
           min(map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE))
               FILTER (WHERE level = 'map') AS map_last
    FROM concept_top GROUP BY synset_id
)
SELECT c.synset_id, c.map_images, c.image_images, e.image_last, e.map_last
FROM counted c LEFT JOIN ends e ON e.synset_id = c.synset_id;

-- images_with (schema 019) with the same rows: the rows it ranks without peaks (every key when the kept
-- lists do not answer, the images past the watermark when they do) take their segments from
-- concept_map_terms for the rows it returns only, and their pixels from the images row it joins for the
-- path. Through the concept_peaks view DuckDB joined every image's row to find them: 38-48 instead of 14
-- ms at 100k generated images (docs/benchmarks.md, "Peaks as segment indexes").
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
           NULL::INTEGER AS work_peak_x, NULL::INTEGER AS work_peak_y
    FROM concept_map_terms p JOIN kept ON p.image_id > kept.indexed_through, chosen c
    WHERE p.synset_id = (SELECT synset_id FROM synsets WHERE name = concept)
), ranked AS (
    SELECT image_id, synset_id, map_score, image_score, work_peak_x, work_peak_y,
           CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END AS score
    FROM keyed
    WHERE (CASE WHEN ranked_by = 'image' THEN image_score ELSE map_score END) >= min_score
    ORDER BY score DESC, map_score DESC, image_id
    LIMIT coalesce(top, 9223372036854775807)
), placed AS (  -- the rows without peaks (keys, pending images) get their segments from the terms
    SELECT r.image_id, r.score, r.map_score, r.image_score, r.work_peak_x, r.work_peak_y,
           NULL::INTEGER AS peak_segment_x, NULL::INTEGER AS peak_segment_y
    FROM ranked r WHERE r.work_peak_x IS NOT NULL
    UNION ALL
    SELECT r.image_id, r.score, r.map_score, r.image_score, NULL, NULL, t.peak_segment_x, t.peak_segment_y
    FROM (SELECT * FROM ranked WHERE work_peak_x IS NULL) r
    JOIN concept_map_terms t ON t.image_id = r.image_id AND t.synset_id = r.synset_id
)
SELECT r.image_id, i.path, r.score,
       original_px(coalesce(r.work_peak_x, i.segment_centres_x[r.peak_segment_x + 1]), i.scale) AS peak_x,
       original_px(coalesce(r.work_peak_y, i.segment_centres_y[r.peak_segment_y + 1]), i.scale) AS peak_y,
       r.map_score, r.image_score
FROM placed r
JOIN images i ON i.image_id = r.image_id
ORDER BY r.score DESC, r.map_score DESC, r.image_id;
