-- A copy of image_scores sorted by concept, for `search` and `images_with` over large collections.
-- image_scores is written in image order (one transaction per image), so finding the images of one
-- concept would scan every row; concept_index holds the same rows in runs sorted by (synset_id,
-- score DESC), where DuckDB's zone maps skip all row groups of other concepts. Ingestion appends one
-- run per `ingest` call for the images past `indexed_through`, and rebuilds the table into a single
-- sorted run when there are too many runs. Images past `indexed_through` (after a crash, say) are read
-- from image_scores directly, so answers are always complete.

CREATE TABLE concept_index (
    synset_id   INTEGER NOT NULL,
    image_id    INTEGER NOT NULL,
    score       DOUBLE NOT NULL,
    peak_x      INTEGER NOT NULL,
    peak_y      INTEGER NOT NULL,
    self_score  DOUBLE NOT NULL,
    self_peak_x INTEGER NOT NULL,
    self_peak_y INTEGER NOT NULL
);

CREATE TABLE concept_index_state (
    indexed_through INTEGER NOT NULL,   -- every image with image_id <= this is in concept_index
    runs            INTEGER NOT NULL    -- sorted runs appended since the last rebuild
);
INSERT INTO concept_index_state VALUES (0, 0);

-- All scores of one concept, indexed or not yet indexed: what search reads.
CREATE MACRO concept_rows(sid) AS TABLE
    SELECT synset_id, image_id, score, peak_x, peak_y, self_score, self_peak_x, self_peak_y
    FROM concept_index WHERE synset_id = sid
    UNION ALL
    SELECT synset_id, image_id, score, peak_x, peak_y, self_score, self_peak_x, self_peak_y
    FROM image_scores
    WHERE synset_id = sid AND image_id > (SELECT indexed_through FROM concept_index_state);

-- images_with now reads the concept-sorted copy (same answers, fast on large collections).
CREATE OR REPLACE MACRO images_with(concept, min_score) AS TABLE
SELECT cr.image_id, i.path, cr.score,
       CAST(round((cr.peak_x + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_x,
       CAST(round((cr.peak_y + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_y
FROM concept_rows((SELECT synset_id FROM synsets WHERE name = concept)) cr
JOIN images i ON i.image_id = cr.image_id
WHERE cr.score >= min_score
ORDER BY cr.score DESC, cr.image_id;
