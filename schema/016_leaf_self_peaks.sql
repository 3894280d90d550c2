-- The "self" peak terms stored only for concepts with descendants (issue 24).
--
-- A leaf of T (no descendant but itself in closure) has one map: the maximum over the concept and its
-- descendants is the concept's own row, so the engine's self terms (self_sum, self_windows,
-- work_self_peak_x/y, image_rank_less) equal its map terms (map_sum, map_windows, work_peak_x/y,
-- image_max_rank_less) exactly (tests/test_leaf_self_peaks.py). concept_peaks keeps the map terms of
-- every (image, concept); concept_self_peaks holds the self terms of the inner concepts only (3,166 of
-- the reference 7,080): rows are left out, not nulled (DuckDB's compression still pays for NULLs).
-- Every view and macro gives the same rows and columns, bit for bit: a reader takes a leaf's self
-- terms from its map terms.

-- Concepts with a descendant other than themselves (T never changes once a database is made).
CREATE OR REPLACE MACRO inner_concepts() AS TABLE
    SELECT DISTINCT ancestor_id AS synset_id FROM closure WHERE descendant_id <> ancestor_id;

CREATE TABLE IF NOT EXISTS concept_self_peaks (
    image_id            INTEGER NOT NULL,
    synset_id           INTEGER NOT NULL,  -- a concept with descendants
    self_sum            INTEGER NOT NULL,  -- concept_peaks' map terms for the concept alone
    self_windows        INTEGER NOT NULL,
    work_self_peak_x    INTEGER NOT NULL,
    work_self_peak_y    INTEGER NOT NULL,
    image_rank_less     INTEGER            -- NULL where not computed
);

-- A leaf whose stored self terms differ from its map terms was not written by convis-db's engine: refuse
-- rather than lose them.
SELECT error('schema 016: image ' || image_id || ' concept ' || synset_id || ' is a leaf of T whose self '
             || 'peak differs from its map peak, so the file was not written by convis-db')
FROM concept_peaks
WHERE synset_id NOT IN (SELECT synset_id FROM inner_concepts())
  AND (self_sum <> map_sum OR self_windows <> map_windows OR work_self_peak_x <> work_peak_x
       OR work_self_peak_y <> work_peak_y OR image_rank_less IS DISTINCT FROM image_max_rank_less)
LIMIT 1;

-- The inner concepts' self terms, in image order. convis-db runs this statement itself a batch of images
-- at a time, with progress (store/migration_steps.py); run alone, it moves all.
INSERT INTO concept_self_peaks
SELECT image_id, synset_id, self_sum, self_windows, work_self_peak_x, work_self_peak_y, image_rank_less
FROM concept_peaks
WHERE synset_id IN (SELECT synset_id FROM inner_concepts())
  AND image_id > (SELECT coalesce(max(image_id), -2147483648) FROM concept_self_peaks)
ORDER BY image_id, synset_id;

ALTER TABLE concept_peaks DROP COLUMN self_sum;
ALTER TABLE concept_peaks DROP COLUMN self_windows;
ALTER TABLE concept_peaks DROP COLUMN work_self_peak_x;
ALTER TABLE concept_peaks DROP COLUMN work_self_peak_y;
ALTER TABLE concept_peaks DROP COLUMN image_rank_less;

-- concept_peaks' rows with the self terms of schema 013: an inner concept's from concept_self_peaks, a
-- leaf's its map terms. The readers below join it.
CREATE OR REPLACE VIEW concept_full_peaks AS
SELECT p.image_id, p.synset_id, p.map_sum, p.map_windows, p.work_peak_x, p.work_peak_y,
       CASE WHEN s.synset_id IS NULL THEN p.map_sum ELSE s.self_sum END AS self_sum,
       CASE WHEN s.synset_id IS NULL THEN p.map_windows ELSE s.self_windows END AS self_windows,
       CASE WHEN s.synset_id IS NULL THEN p.work_peak_x ELSE s.work_self_peak_x END AS work_self_peak_x,
       CASE WHEN s.synset_id IS NULL THEN p.work_peak_y ELSE s.work_self_peak_y END AS work_self_peak_y,
       p.image_max_rank_less,
       CASE WHEN s.synset_id IS NULL THEN p.image_max_rank_less ELSE s.image_rank_less END AS image_rank_less
FROM concept_peaks p
LEFT JOIN concept_self_peaks s ON s.image_id = p.image_id AND s.synset_id = p.synset_id;

CREATE OR REPLACE VIEW image_scores AS
SELECT image_id, synset_id,
       map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
       work_peak_x, work_peak_y,
       self_sum::DOUBLE / (self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_score,
       work_self_peak_x, work_self_peak_y, image_max_rank_less, image_rank_less,
       map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
       self_sum::DOUBLE / (self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_map_peak
FROM concept_full_peaks;

CREATE OR REPLACE VIEW concept_index AS
SELECT o.synset_id, o.image_id,
       o.map_sum::DOUBLE / (o.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS score,
       p.work_peak_x, p.work_peak_y,
       p.self_sum::DOUBLE / (p.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_score,
       p.work_self_peak_x, p.work_self_peak_y, o.image_max_rank_less,
       CASE WHEN o.image_max_rank_less IS NULL THEN NULL ELSE p.image_rank_less END AS image_rank_less,
       o.map_sum::DOUBLE / (o.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
       p.self_sum::DOUBLE / (p.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS self_map_peak
FROM concept_order o JOIN concept_full_peaks p ON p.image_id = o.image_id AND p.synset_id = o.synset_id;

-- concept_rows as in schema 013; the self terms of one concept: concept_self_peaks' rows of that concept
-- for an inner one, its map terms for a leaf.
CREATE OR REPLACE MACRO concept_rows(sid) AS TABLE
    SELECT k.synset_id, k.image_id, k.map_peak AS score, p.work_peak_x, p.work_peak_y,
           CASE WHEN s.synset_id IS NULL
                THEN p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE)
                ELSE s.self_sum::DOUBLE / (s.self_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE)
           END AS self_score,
           CASE WHEN s.synset_id IS NULL THEN p.work_peak_x ELSE s.work_self_peak_x END AS work_self_peak_x,
           CASE WHEN s.synset_id IS NULL THEN p.work_peak_y ELSE s.work_self_peak_y END AS work_self_peak_y,
           k.image_max_rank_less,
           CASE WHEN k.image_max_rank_less IS NULL THEN NULL
                WHEN s.synset_id IS NULL THEN p.image_max_rank_less ELSE s.image_rank_less END AS image_rank_less
    FROM concept_keys(sid) k
    JOIN concept_peaks p ON p.image_id = k.image_id AND p.synset_id = k.synset_id
    LEFT JOIN (SELECT * FROM concept_self_peaks WHERE synset_id = sid) s
        ON s.image_id = k.image_id AND s.synset_id = k.synset_id;
