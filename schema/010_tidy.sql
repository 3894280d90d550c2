-- One library API (issue 13): clearer names, a profile of the database, and foreign keys on T.
--
-- 1. The peak columns of image_scores and concept_index hold working pixels (the image resized to
--    about max_pixels); the views' peak_x / peak_y hold original pixels. The stored ones are renamed
--    so that the two cannot be mistaken:
--        peak_x -> work_peak_x,  peak_y -> work_peak_y,
--        self_peak_x -> work_self_peak_x,  self_peak_y -> work_self_peak_y.
--    DuckDB binds views and macros when they are queried, so every one that read the old names is
--    re-created below; their output columns (peak_x / peak_y in original pixels) do not change.
--    A database opened read-only before this migration keeps the old names; the Python readers pick
--    the names present (store/image_store.py: work_peak_select).

ALTER TABLE image_scores RENAME COLUMN peak_x TO work_peak_x;
ALTER TABLE image_scores RENAME COLUMN peak_y TO work_peak_y;
ALTER TABLE image_scores RENAME COLUMN self_peak_x TO work_self_peak_x;
ALTER TABLE image_scores RENAME COLUMN self_peak_y TO work_self_peak_y;
ALTER TABLE concept_index RENAME COLUMN peak_x TO work_peak_x;
ALTER TABLE concept_index RENAME COLUMN peak_y TO work_peak_y;
ALTER TABLE concept_index RENAME COLUMN self_peak_x TO work_self_peak_x;
ALTER TABLE concept_index RENAME COLUMN self_peak_y TO work_self_peak_y;

-- original_px(v, scale): a working-pixel coordinate (a peak) as the original pixel that holds the centre of
-- its working pixel, floor((v + 0.5) * scale) with scale = images.scale; the views below use it, and it
-- equals convis_db.engine.pixels.original_point (and the round((v + 0.5) * scale - 0.5) of the views
-- before 010, DuckDB rounding halves away from zero).
CREATE OR REPLACE MACRO original_px(v, scale) AS CAST(floor((v + 0.5) * scale) AS INTEGER);

-- All scores of one concept, indexed or not yet indexed: what search reads. Peaks in working pixels.
CREATE OR REPLACE MACRO concept_rows(sid) AS TABLE
    SELECT synset_id, image_id, score, work_peak_x, work_peak_y, self_score, work_self_peak_x, work_self_peak_y,
           image_max_rank_less, image_rank_less
    FROM concept_index WHERE synset_id = sid
    UNION ALL
    SELECT synset_id, image_id, score, work_peak_x, work_peak_y, self_score, work_self_peak_x, work_self_peak_y,
           image_max_rank_less, image_rank_less
    FROM image_scores
    WHERE synset_id = sid AND image_id > (SELECT indexed_through FROM concept_index_state);

-- Every concept's scores for every image, peaks in original pixels (image-level scores NULL where not computed).
CREATE OR REPLACE VIEW image_concepts AS
SELECT sc.image_id, i.path, s.name AS synset, sc.synset_id, sc.score,
       original_px(sc.work_peak_x, i.scale) AS peak_x,
       original_px(sc.work_peak_y, i.scale) AS peak_y,
       sc.self_score, s.depth, s.definition,
       sc.image_max_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_score,
       sc.image_rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS image_self_score
FROM image_scores sc
JOIN images i ON i.image_id = sc.image_id
JOIN synsets s ON s.synset_id = sc.synset_id;

-- images_with('dog.n.01', 0.99 [, level := 'image' | 'map']): as defined by 005 (this is the definition
-- that counts; 003 and 004 wrote earlier ones), reading the renamed columns. level 'image': the
-- image-level max_rank_sim (images without it are left out); 'map': the peak of the saliency map;
-- unset: 'image' when the database has image-level scores, else 'map' (as `search`). peak_x / peak_y in
-- original pixels.
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
           original_px(cr.work_peak_x, i.scale) AS peak_x,
           original_px(cr.work_peak_y, i.scale) AS peak_y
    FROM concept_rows((SELECT synset_id FROM synsets WHERE name = concept)) cr
    JOIN images i ON i.image_id = cr.image_id
)
SELECT r.image_id, r.path, CASE WHEN c.level = 'image' THEN r.image_score ELSE r.map_score END AS score,
       r.peak_x, r.peak_y, r.map_score, r.image_score
FROM rows r, chosen c
WHERE (CASE WHEN c.level = 'image' THEN r.image_score ELSE r.map_score END) >= min_score
ORDER BY score DESC, r.map_score DESC, r.image_id;

-- 2. database_profile: one row saying what the database holds and how its images were explained.
--    A view, not a table: it is computed from images, models, window_layout, storage_settings and
--    vocabulary each time, so it cannot drift from the stored rows (a table would need every writer
--    to keep it in step). It has one row whatever the database holds (NULLs where nothing is stored).
--    The model is the one the stored images were explained with (one database explains its images
--    with one model and one setting); before the first image, the lowest model_id with definition
--    embeddings, which is the model queries use (store/model_store.py: pick_model). n_models counts
--    every model with definition embeddings: with several, the others are listed in `models`.
--    max_pixels, stride, small, large and top_k are those of the stored images (NULL before the first
--    image); layout is the window lattice of the database (005), embeddings how window embeddings are
--    kept (009), hierarchy how T was built (006).
CREATE VIEW database_profile AS
WITH first_image AS (
    SELECT model_id, max_pixels, stride, small, large, top_k FROM images ORDER BY image_id LIMIT 1
), embedded AS (
    SELECT DISTINCT model_id FROM definition_embeddings
), profile_model AS (
    SELECT m.* FROM models m
    WHERE m.model_id = (SELECT model_id FROM first_image)
       OR (NOT EXISTS (SELECT 1 FROM first_image) AND m.model_id = (SELECT min(model_id) FROM embedded))
)
SELECT m.model_id, m.name AS model, m.pretrained, m.is_random, m.embed_dim, m.image_size,
       m.definition_precision,
       (SELECT layout FROM window_layout LIMIT 1) AS layout,
       i.max_pixels, i.stride, i.small, i.large, i.top_k,
       (SELECT embeddings FROM storage_settings LIMIT 1) AS embeddings,
       (SELECT name FROM vocabulary LIMIT 1) AS vocabulary,
       (SELECT hierarchy FROM vocabulary LIMIT 1) AS hierarchy,
       (SELECT count(*) FROM synsets) AS n_synsets,
       (SELECT count(*) FROM images) AS n_images,
       (SELECT count(*) FROM embedded) AS n_models
FROM (SELECT 1) one
LEFT JOIN profile_model m ON true
LEFT JOIN first_image i ON true;

-- 3. Foreign keys on the tables init writes: T (synsets, isa_edges, closure), models and
--    definition_embeddings. DuckDB cannot add a constraint to an existing table, so each is rebuilt:
--    the old table renamed away, the new one created with its constraints under the old name, the rows
--    copied, the old one dropped (views and macros bind by name when queried: nothing to re-create).
--    0.3-0.5 s for the 7,343-synset physical-objects T with one model (69,501 closure pairs), with or
--    without 7.3 M image_scores rows (benchmarks/bench_migration_010.py, docs/benchmarks.md).
--    What DuckDB 2.0.1 allows with them, and why some keys are left out:
--    * inserting a second model and its definitions (init --model other) and UPDATE of a column that
--      is in no index (models.definition_precision, store/model_store.py) work;
--    * an UPDATE of a key or UNIQUE column of a referenced row (synsets.name, models.name/pretrained)
--      is refused while the row is referenced (DuckDB runs it as delete + insert); convis-db never
--      does that: T and a model's identity are written once;
--    * a later migration may ADD COLUMN to any of these tables, and rename or drop columns of the
--      referring ones (isa_edges, closure, definition_embeddings); a referenced table (synsets, models)
--      cannot be renamed nor have a column renamed or dropped, and is dropped only after the tables
--      referring to it: such a change rebuilds the referrers too, as done here;
--    * the tables written per image (images.model_id, image_scores.synset_id, window_concepts,
--      windows, image_embeddings) get no keys: each key keeps an index on the referring columns that
--      every ingest would update and check (7,343 image_scores rows per image), and a shard merge
--      inserts them in bulk; their writers take ids from the rows they just read;
--    * vocabulary is referred to by nothing and refers to nothing; the mutual_* tables are written by
--      `mutual` runs, not once at init, and are left as they are.
ALTER TABLE definition_embeddings RENAME TO definition_embeddings_pre010;
ALTER TABLE closure RENAME TO closure_pre010;
ALTER TABLE isa_edges RENAME TO isa_edges_pre010;
ALTER TABLE models RENAME TO models_pre010;
ALTER TABLE synsets RENAME TO synsets_pre010;

CREATE TABLE synsets (
    synset_id     INTEGER PRIMARY KEY,         -- dense 0..n-1, in name order; row of the embedding matrix
    name          VARCHAR NOT NULL UNIQUE,     -- dog.n.01
    wn_offset     INTEGER NOT NULL,            -- WordNet 3.0 data.noun offset (ImageNet id: 'n' || lpad(offset, 8, '0'))
    lemmas        VARCHAR[] NOT NULL,
    definition    VARCHAR NOT NULL,
    depth         INTEGER NOT NULL,            -- shortest is-a distance to entity.n.01
    lexname       VARCHAR NOT NULL,            -- noun.animal, noun.artifact, ...
    is_word_sense BOOLEAN NOT NULL             -- a noun sense of a vocabulary word (not only an ancestor)
);
INSERT INTO synsets (synset_id, name, wn_offset, lemmas, definition, depth, lexname, is_word_sense)
SELECT synset_id, name, wn_offset, lemmas, definition, depth, lexname, is_word_sense
FROM synsets_pre010 ORDER BY synset_id;

-- Every is-a edge of T: parent is a hypernym (or instance hypernym) of child. A DAG: all parents kept.
CREATE TABLE isa_edges (
    parent_id INTEGER NOT NULL REFERENCES synsets (synset_id),
    child_id  INTEGER NOT NULL REFERENCES synsets (synset_id),
    kind      VARCHAR NOT NULL CHECK (kind IN ('hypernym', 'instance')),
    PRIMARY KEY (parent_id, child_id)
);
INSERT INTO isa_edges (parent_id, child_id, kind)
SELECT parent_id, child_id, kind FROM isa_edges_pre010 ORDER BY parent_id, child_id;

-- Transitive closure: every (ancestor, descendant) pair with the shortest distance; each synset is its
-- own descendant at distance 0.
CREATE TABLE closure (
    ancestor_id   INTEGER NOT NULL REFERENCES synsets (synset_id),
    descendant_id INTEGER NOT NULL REFERENCES synsets (synset_id),
    distance      INTEGER NOT NULL,
    PRIMARY KEY (ancestor_id, descendant_id)
);
INSERT INTO closure (ancestor_id, descendant_id, distance)
SELECT ancestor_id, descendant_id, distance FROM closure_pre010 ORDER BY ancestor_id, descendant_id;

CREATE TABLE models (
    model_id       INTEGER PRIMARY KEY DEFAULT nextval('model_id_seq'),
    name           VARCHAR NOT NULL,           -- open_clip model name (or config file stem)
    pretrained     VARCHAR NOT NULL,           -- tag, checkpoint path, or 'none'
    is_random      BOOLEAN NOT NULL,           -- seeded random weights: every score is meaningless
    config_json    VARCHAR NOT NULL,
    weights_sha256 VARCHAR,
    embed_dim      INTEGER NOT NULL,
    image_size     INTEGER NOT NULL,
    image_mean     FLOAT[] NOT NULL,
    image_std      FLOAT[] NOT NULL,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    definition_precision VARCHAR,              -- 007: fp32, bf16 or fp16; NULL: unrecorded
    UNIQUE (name, pretrained)
);
INSERT INTO models (model_id, name, pretrained, is_random, config_json, weights_sha256, embed_dim, image_size,
                    image_mean, image_std, created_at, definition_precision)
SELECT model_id, name, pretrained, is_random, config_json, weights_sha256, embed_dim, image_size,
       image_mean, image_std, created_at, definition_precision
FROM models_pre010 ORDER BY model_id;

-- L2-normalised text embeddings of each synset's definition, per model. FLOAT[] (a list), not FLOAT[D]:
-- one table holds every model's, and models differ in D. Cosines in SQL: list_cosine_similarity
-- (README, SQL section).
CREATE TABLE definition_embeddings (
    model_id  INTEGER NOT NULL REFERENCES models (model_id),
    synset_id INTEGER NOT NULL REFERENCES synsets (synset_id),
    embedding FLOAT[] NOT NULL,
    PRIMARY KEY (model_id, synset_id)
);
INSERT INTO definition_embeddings (model_id, synset_id, embedding)
SELECT model_id, synset_id, embedding FROM definition_embeddings_pre010 ORDER BY model_id, synset_id;

DROP TABLE definition_embeddings_pre010;
DROP TABLE closure_pre010;
DROP TABLE isa_edges_pre010;
DROP TABLE models_pre010;
DROP TABLE synsets_pre010;

-- 5. Leftovers: none to drop. images_with, image_concepts, window_top_concepts and concept_rows were
--    written by several migrations with CREATE OR REPLACE; only the last definition exists in a
--    database, and those above are the current ones. 009 replaced no table or column (windows.embedding
--    still holds float32 embeddings). Every other view and macro is documented in README's SQL section.
