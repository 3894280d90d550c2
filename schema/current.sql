-- The whole current schema of a convis-db database, in one file, for reading.
-- Written by `python -m convis_db.store.schema_dump > schema/current.sql` from a database the numbered
-- migrations beside this file have just built (tests/test_schema_dump.py checks that it is current).
-- Databases are made and upgraded by those migrations, never from this file: it holds no rows (the
-- migrations also insert a few, e.g. concept_index_state's first one).

-- Sequences
CREATE SEQUENCE image_id_seq INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START 1 NO CYCLE;
CREATE SEQUENCE model_id_seq INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START 1 NO CYCLE;
CREATE SEQUENCE mutual_bank_id_seq INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START 1 NO CYCLE;
CREATE SEQUENCE mutual_explanation_id_seq INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START 1 NO CYCLE;

-- Tables
CREATE TABLE concept_counts (
    synset_id INTEGER NOT NULL,
    map_images BIGINT NOT NULL,
    image_images BIGINT NOT NULL,
    image_last INTEGER,
    map_last DOUBLE
);
CREATE TABLE concept_index_state (
    indexed_through INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    top_through INTEGER
);
CREATE TABLE concept_map_terms (
    image_id INTEGER NOT NULL,
    synset_id INTEGER NOT NULL,
    map_sum INTEGER NOT NULL,
    map_windows INTEGER NOT NULL,
    peak_segment_x INTEGER NOT NULL,
    peak_segment_y INTEGER NOT NULL,
    image_max_rank_less INTEGER
);
CREATE TABLE concept_order (
    synset_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    map_sum INTEGER NOT NULL,
    map_windows INTEGER NOT NULL,
    image_max_rank_less INTEGER
);
CREATE TABLE concept_self_terms (
    image_id INTEGER NOT NULL,
    synset_id INTEGER NOT NULL,
    self_sum INTEGER NOT NULL,
    self_windows INTEGER NOT NULL,
    self_peak_segment_x INTEGER NOT NULL,
    self_peak_segment_y INTEGER NOT NULL,
    image_rank_less INTEGER
);
CREATE TABLE concept_top (
    "level" VARCHAR NOT NULL,
    synset_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    map_sum INTEGER NOT NULL,
    map_windows INTEGER NOT NULL,
    image_max_rank_less INTEGER,
    work_peak_x INTEGER NOT NULL,
    work_peak_y INTEGER NOT NULL
);
CREATE TABLE image_embeddings (
    image_id INTEGER PRIMARY KEY,
    embedding FLOAT[] NOT NULL
);
CREATE TABLE images (
    image_id INTEGER DEFAULT(nextval('image_id_seq')) PRIMARY KEY,
    sha256 VARCHAR NOT NULL UNIQUE,
    path VARCHAR NOT NULL,
    model_id INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    work_width INTEGER NOT NULL,
    work_height INTEGER NOT NULL,
    scale DOUBLE NOT NULL,
    stride INTEGER NOT NULL,
    small INTEGER NOT NULL,
    "large" INTEGER NOT NULL,
    max_pixels INTEGER NOT NULL,
    top_k INTEGER NOT NULL,
    grid_rows INTEGER NOT NULL,
    grid_cols INTEGER NOT NULL,
    n_windows INTEGER NOT NULL,
    ingested_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL,
    layout VARCHAR DEFAULT('origin'),
    "precision" VARCHAR,
    segment_centres_x INTEGER[],
    segment_centres_y INTEGER[]
);
CREATE TABLE ingest_failures (
    path VARCHAR PRIMARY KEY,
    sha256 VARCHAR,
    "error" VARCHAR NOT NULL,
    attempts INTEGER DEFAULT(1) NOT NULL,
    last_attempt TIMESTAMP DEFAULT(current_timestamp) NOT NULL
);
CREATE TABLE merged_shards (
    shard VARCHAR PRIMARY KEY,
    images INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    merged_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL
);
CREATE TABLE models (
    model_id INTEGER DEFAULT(nextval('model_id_seq')) PRIMARY KEY,
    "name" VARCHAR NOT NULL,
    pretrained VARCHAR NOT NULL,
    is_random BOOLEAN NOT NULL,
    config_json VARCHAR NOT NULL,
    weights_sha256 VARCHAR,
    embed_dim INTEGER NOT NULL,
    image_size INTEGER NOT NULL,
    image_mean FLOAT[] NOT NULL,
    image_std FLOAT[] NOT NULL,
    created_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL,
    definition_precision VARCHAR,
    UNIQUE("name", pretrained)
);
CREATE TABLE mutual_bank_entries (
    bank_id INTEGER NOT NULL,
    entry_idx INTEGER NOT NULL,
    "text" VARCHAR NOT NULL,
    classes VARCHAR[] NOT NULL,
    embedding FLOAT[] NOT NULL
);
CREATE TABLE mutual_banks (
    bank_id INTEGER DEFAULT(nextval('mutual_bank_id_seq')) PRIMARY KEY,
    model_id INTEGER NOT NULL,
    "name" VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    n_entries INTEGER NOT NULL,
    created_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL,
    UNIQUE(model_id, sha256)
);
CREATE TABLE mutual_explanations (
    explanation_id INTEGER DEFAULT(nextval('mutual_explanation_id_seq')) PRIMARY KEY,
    image_id INTEGER,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    model_id INTEGER NOT NULL,
    bank VARCHAR NOT NULL,
    bank_id INTEGER,
    labels VARCHAR[] NOT NULL,
    templates VARCHAR[] NOT NULL,
    predicted VARCHAR NOT NULL,
    predicted_score DOUBLE NOT NULL,
    decomposition VARCHAR NOT NULL,
    settings_json VARCHAR NOT NULL,
    n_concepts INTEGER NOT NULL,
    n_mutual INTEGER NOT NULL,
    mi DOUBLE NOT NULL,
    auc DOUBLE NOT NULL,
    created_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL
);
CREATE TABLE mutual_textual_concepts (
    explanation_id INTEGER NOT NULL,
    side VARCHAR NOT NULL,
    concept_idx INTEGER,
    rank INTEGER NOT NULL,
    entry_idx INTEGER NOT NULL,
    synset_id INTEGER,
    "text" VARCHAR NOT NULL,
    score DOUBLE NOT NULL
);
CREATE TABLE mutual_visual_concepts (
    explanation_id INTEGER NOT NULL,
    concept_idx INTEGER NOT NULL,
    n_patches INTEGER NOT NULL,
    importance DOUBLE NOT NULL,
    x0 INTEGER NOT NULL,
    y0 INTEGER NOT NULL,
    x1 INTEGER NOT NULL,
    y1 INTEGER NOT NULL,
    patch_mask BOOLEAN[] NOT NULL,
    grid_rows INTEGER NOT NULL,
    grid_cols INTEGER NOT NULL
);
CREATE TABLE schema_migrations (
    "version" INTEGER PRIMARY KEY,
    "name" VARCHAR NOT NULL,
    checksum VARCHAR NOT NULL,
    applied_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL
);
CREATE TABLE storage_settings (
    embeddings VARCHAR NOT NULL,
    CHECK((embeddings IN ('float32', 'float16', 'none')))
);
CREATE TABLE synsets (
    synset_id INTEGER PRIMARY KEY,
    "name" VARCHAR NOT NULL UNIQUE,
    wn_offset INTEGER NOT NULL,
    lemmas VARCHAR[] NOT NULL,
    definition VARCHAR NOT NULL,
    depth INTEGER NOT NULL,
    lexname VARCHAR NOT NULL,
    is_word_sense BOOLEAN NOT NULL
);
CREATE TABLE vocabulary (
    vocab_id INTEGER PRIMARY KEY,
    "name" VARCHAR NOT NULL,
    "source" VARCHAR NOT NULL,
    words_sha256 VARCHAR NOT NULL,
    n_words INTEGER NOT NULL,
    missing_words VARCHAR[] NOT NULL,
    n_synsets INTEGER NOT NULL,
    wordnet_version VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL,
    hierarchy VARCHAR DEFAULT('extended')
);
CREATE TABLE window_embeddings (
    image_id INTEGER NOT NULL,
    window_idx INTEGER NOT NULL,
    embedding FLOAT[],
    embedding_f16_hi BLOB,
    embedding_f16_lo BLOB
);
CREATE TABLE window_layout (
    layout VARCHAR NOT NULL,
    decided_at TIMESTAMP DEFAULT(current_timestamp) NOT NULL,
    CHECK((layout IN ('equal', 'origin')))
);
CREATE TABLE window_top (
    image_id INTEGER NOT NULL,
    window_idx INTEGER NOT NULL,
    synset_ids INTEGER[] NOT NULL,
    rank_less INTEGER[]
);
CREATE TABLE closure (
    ancestor_id INTEGER,
    descendant_id INTEGER,
    "distance" INTEGER NOT NULL,
    FOREIGN KEY (ancestor_id) REFERENCES synsets(synset_id),
    FOREIGN KEY (descendant_id) REFERENCES synsets(synset_id),
    PRIMARY KEY(ancestor_id, descendant_id)
);
CREATE TABLE definition_embeddings (
    model_id INTEGER,
    synset_id INTEGER,
    embedding FLOAT[] NOT NULL,
    FOREIGN KEY (model_id) REFERENCES models(model_id),
    FOREIGN KEY (synset_id) REFERENCES synsets(synset_id),
    PRIMARY KEY(model_id, synset_id)
);
CREATE TABLE isa_edges (
    parent_id INTEGER,
    child_id INTEGER,
    kind VARCHAR NOT NULL,
    FOREIGN KEY (parent_id) REFERENCES synsets(synset_id),
    FOREIGN KEY (child_id) REFERENCES synsets(synset_id),
    CHECK((kind IN ('hypernym', 'instance'))),
    PRIMARY KEY(parent_id, child_id)
);

-- Macros and views, each after what it reads
CREATE MACRO ancestors(concept) AS TABLE
    SELECT a.synset_id, a.name, a.definition, a.depth, c.distance
    FROM synsets d
    JOIN closure c ON c.descendant_id = d.synset_id
    JOIN synsets a ON a.synset_id = c.ancestor_id
    WHERE d.name = concept;
CREATE MACRO children(concept) AS TABLE
    SELECT c.synset_id, c.name, c.definition, e.kind
    FROM synsets p JOIN isa_edges e ON e.parent_id = p.synset_id JOIN synsets c ON c.synset_id = e.child_id
    WHERE p.name = concept;
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
CREATE MACRO descendants(concept) AS TABLE
    SELECT d.synset_id, d.name, d.definition, d.depth, c.distance
    FROM synsets a
    JOIN closure c ON c.ancestor_id = a.synset_id
    JOIN synsets d ON d.synset_id = c.descendant_id
    WHERE a.name = concept;
CREATE OR REPLACE MACRO exact_windows(value, max_windows, n_synsets) AS
    list_filter(range(1, max_windows + 1),
                lambda c: value = round(value * (c * n_synsets)::DOUBLE) / (c::DOUBLE * n_synsets::DOUBLE))[1];
CREATE OR REPLACE MACRO f16_embedding(hi, lo) AS
    CASE WHEN hi IS NOT NULL AND lo IS NOT NULL
         THEN unhex(array_to_string(list_transform(list_zip(regexp_extract_all(hex(lo), '..'),
                                                            regexp_extract_all(hex(hi), '..')),
                                                   lambda pair: pair[1] || pair[2]), '')) END;
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
CREATE OR REPLACE MACRO inner_concepts() AS TABLE
    SELECT DISTINCT ancestor_id AS synset_id FROM closure WHERE descendant_id <> ancestor_id;
CREATE OR REPLACE MACRO lattice_first_start(stride, origin) AS
    origin + ((-origin) // stride + 1) * stride;
CREATE OR REPLACE MACRO lattice_origin(layout, stride, large) AS
    (CASE layout WHEN 'equal' THEN stride - large ELSE 0 END)::INTEGER;
CREATE OR REPLACE MACRO lattice_starts_before_end(stride, large, origin) AS
    (origin + large - lattice_first_start(stride, origin)) // stride + 1;
CREATE OR REPLACE MACRO original_px(v, scale) AS CAST(floor((v + 0.5) * scale) AS INTEGER);
CREATE MACRO parents(concept) AS TABLE
    SELECT p.synset_id, p.name, p.definition, e.kind
    FROM synsets c JOIN isa_edges e ON e.child_id = c.synset_id JOIN synsets p ON p.synset_id = e.parent_id
    WHERE c.name = concept;
CREATE OR REPLACE MACRO segment_of(x, stride, large, layout) AS
    (CASE WHEN x >= lattice_first_start(stride, lattice_origin(layout, stride, large))
          THEN (x - lattice_first_start(stride, lattice_origin(layout, stride, large))) // stride + 1 ELSE 0 END
     + CASE WHEN large % stride <> 0 AND x >= lattice_origin(layout, stride, large) + large
            THEN (x - lattice_origin(layout, stride, large) - large) // stride + 1 ELSE 0 END)::INTEGER;
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
CREATE OR REPLACE MACRO window_corner(layout, stride, large, k) AS
    (CASE layout WHEN 'equal' THEN stride - large ELSE 0 END + k * stride)::INTEGER;
CREATE VIEW concept_peaks AS SELECT t.image_id, t.synset_id, t.map_sum, t.map_windows, i.segment_centres_x[(t.peak_segment_x + 1)] AS work_peak_x, i.segment_centres_y[(t.peak_segment_y + 1)] AS work_peak_y, t.image_max_rank_less FROM (concept_map_terms AS t INNER JOIN images AS i ON ((i.image_id = t.image_id)));
CREATE VIEW concept_self_peaks AS SELECT t.image_id, t.synset_id, t.self_sum, t.self_windows, i.segment_centres_x[(t.self_peak_segment_x + 1)] AS work_self_peak_x, i.segment_centres_y[(t.self_peak_segment_y + 1)] AS work_self_peak_y, t.image_rank_less FROM (concept_self_terms AS t INNER JOIN images AS i ON ((i.image_id = t.image_id)));
CREATE VIEW database_profile AS WITH first_image AS (SELECT model_id, max_pixels, stride, small, "large", top_k FROM images ORDER BY image_id LIMIT 1), embedded AS (SELECT DISTINCT model_id FROM definition_embeddings), profile_model AS (SELECT m.* FROM models AS m WHERE ((m.model_id = (SELECT model_id FROM first_image)) OR ((NOT EXISTS(SELECT 1 FROM first_image)) AND (m.model_id = (SELECT min(model_id) FROM embedded))))) SELECT m.model_id, m."name" AS model, m.pretrained, m.is_random, m.embed_dim, m.image_size, m.definition_precision, (SELECT layout FROM window_layout LIMIT 1) AS layout, i.max_pixels, i.stride, i.small, i."large", i.top_k, (SELECT embeddings FROM storage_settings LIMIT 1) AS embeddings, (SELECT "name" FROM vocabulary LIMIT 1) AS vocabulary, (SELECT hierarchy FROM vocabulary LIMIT 1) AS hierarchy, (SELECT count_star() FROM synsets) AS n_synsets, (SELECT count_star() FROM images) AS n_images, (SELECT count_star() FROM embedded) AS n_models FROM (((SELECT 1) AS one LEFT JOIN profile_model AS m ON (true)) LEFT JOIN first_image AS i ON (true));
CREATE VIEW mutual_concepts AS SELECT e.explanation_id, e.image_id, e.path, e.predicted, e.decomposition, e.bank, t.rank, t."text", t.synset_id, s."name" AS synset, t.score FROM ((mutual_textual_concepts AS t INNER JOIN mutual_explanations AS e USING (explanation_id)) LEFT JOIN synsets AS s ON ((s.synset_id = t.synset_id))) WHERE (t.side = 'mutual');
CREATE VIEW regions_with_exact_above AS SELECT image_id, (1.0 - (top_k / (SELECT count_star() FROM synsets))) AS exact_above FROM images;
CREATE VIEW window_concepts AS SELECT image_id, window_idx, k, synset_id, CAST(COALESCE("ties"[k], ((SELECT count_star() FROM synsets) - k)) AS INTEGER) AS rank_less FROM (SELECT image_id, window_idx, rank_less AS "ties", CAST(unnest("range"(1, (len(synset_ids) + 1))) AS SMALLINT) AS k, unnest(synset_ids) AS synset_id FROM window_top);
CREATE VIEW window_top_concepts AS SELECT wc.image_id, wc.window_idx, wc.k, s."name" AS synset, wc.synset_id, (wc.rank_less / CAST((SELECT count_star() FROM synsets) AS DOUBLE)) AS rank_sim, CAST(greatest(floor((window_corner(i.layout, i.stride, i."large", (wc.window_idx % i.grid_cols)) * i.scale)), 0) AS INTEGER) AS x0, CAST(greatest(floor((window_corner(i.layout, i.stride, i."large", (wc.window_idx // i.grid_cols)) * i.scale)), 0) AS INTEGER) AS y0, CAST(least(ceil(((window_corner(i.layout, i.stride, i."large", (wc.window_idx % i.grid_cols)) + i."large") * i.scale)), i.width) AS INTEGER) AS x1, CAST(least(ceil(((window_corner(i.layout, i.stride, i."large", (wc.window_idx // i.grid_cols)) + i."large") * i.scale)), i.height) AS INTEGER) AS y1 FROM ((window_concepts AS wc INNER JOIN images AS i ON ((i.image_id = wc.image_id))) INNER JOIN synsets AS s ON ((s.synset_id = wc.synset_id)));
CREATE VIEW windows AS SELECT i.image_id, g.window_idx, CAST((g.window_idx // i.grid_cols) AS INTEGER) AS grid_row, CAST((g.window_idx % i.grid_cols) AS INTEGER) AS grid_col, window_corner(i.layout, i.stride, i."large", (g.window_idx % i.grid_cols)) AS x0, window_corner(i.layout, i.stride, i."large", (g.window_idx // i.grid_cols)) AS y0, CAST((window_corner(i.layout, i.stride, i."large", (g.window_idx % i.grid_cols)) + i."large") AS INTEGER) AS x1, CAST((window_corner(i.layout, i.stride, i."large", (g.window_idx // i.grid_cols)) + i."large") AS INTEGER) AS y1, e.embedding, e.embedding_f16_hi, e.embedding_f16_lo FROM ((images AS i CROSS JOIN (SELECT CAST(unnest("range"(i.n_windows)) AS INTEGER) AS window_idx) AS g) LEFT JOIN window_embeddings AS e ON (((e.image_id = i.image_id) AND (e.window_idx = g.window_idx))));
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
CREATE MACRO regions_with(concept, min_score) AS TABLE
SELECT image_id, window_idx, x0, y0, x1, y1, best_synset, rank_sim
FROM (
    SELECT wt.image_id, wt.window_idx, wt.x0, wt.y0, wt.x1, wt.y1, wt.synset AS best_synset, wt.rank_sim,
           row_number() OVER (PARTITION BY wt.image_id, wt.window_idx ORDER BY wt.rank_sim DESC, wt.k) AS rn
    FROM window_top_concepts wt
    JOIN closure c ON c.descendant_id = wt.synset_id
    JOIN synsets a ON a.synset_id = c.ancestor_id
    WHERE a.name = concept AND wt.rank_sim >= min_score
)
WHERE rn = 1
ORDER BY rank_sim DESC, image_id, window_idx;
CREATE OR REPLACE MACRO segment_centre(j, length, stride, large, layout) AS
    ((segment_start(j, stride, large, lattice_origin(layout, stride, large))
      + least(segment_start(j + 1, stride, large, lattice_origin(layout, stride, large)), length) - 1)
     // 2)::INTEGER;
CREATE VIEW concept_full_peaks AS SELECT p.image_id, p.synset_id, p.map_sum, p.map_windows, p.work_peak_x, p.work_peak_y, CASE  WHEN ((s.synset_id IS NULL)) THEN (p.map_sum) ELSE s.self_sum END AS self_sum, CASE  WHEN ((s.synset_id IS NULL)) THEN (p.map_windows) ELSE s.self_windows END AS self_windows, CASE  WHEN ((s.synset_id IS NULL)) THEN (p.work_peak_x) ELSE s.work_self_peak_x END AS work_self_peak_x, CASE  WHEN ((s.synset_id IS NULL)) THEN (p.work_peak_y) ELSE s.work_self_peak_y END AS work_self_peak_y, p.image_max_rank_less, CASE  WHEN ((s.synset_id IS NULL)) THEN (p.image_max_rank_less) ELSE s.image_rank_less END AS image_rank_less FROM (concept_peaks AS p LEFT JOIN concept_self_peaks AS s ON (((s.image_id = p.image_id) AND (s.synset_id = p.synset_id))));
CREATE VIEW concept_index AS SELECT o.synset_id, o.image_id, (CAST(o.map_sum AS DOUBLE) / (CAST(o.map_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS score, p.work_peak_x, p.work_peak_y, (CAST(p.self_sum AS DOUBLE) / (CAST(p.self_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS self_score, p.work_self_peak_x, p.work_self_peak_y, o.image_max_rank_less, CASE  WHEN ((o.image_max_rank_less IS NULL)) THEN (NULL) ELSE p.image_rank_less END AS image_rank_less, (CAST(o.map_sum AS DOUBLE) / (CAST(o.map_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS map_peak, (CAST(p.self_sum AS DOUBLE) / (CAST(p.self_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS self_map_peak FROM (concept_order AS o INNER JOIN concept_full_peaks AS p ON (((p.image_id = o.image_id) AND (p.synset_id = o.synset_id))));
CREATE VIEW image_scores AS SELECT image_id, synset_id, (CAST(map_sum AS DOUBLE) / (CAST(map_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS score, work_peak_x, work_peak_y, (CAST(self_sum AS DOUBLE) / (CAST(self_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS self_score, work_self_peak_x, work_self_peak_y, image_max_rank_less, image_rank_less, (CAST(map_sum AS DOUBLE) / (CAST(map_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS map_peak, (CAST(self_sum AS DOUBLE) / (CAST(self_windows AS DOUBLE) * CAST((SELECT count_star() FROM synsets) AS DOUBLE))) AS self_map_peak FROM concept_full_peaks;
CREATE VIEW image_concepts AS SELECT sc.image_id, i.path, s."name" AS synset, sc.synset_id, sc.score, original_px(sc.work_peak_x, i.scale) AS peak_x, original_px(sc.work_peak_y, i.scale) AS peak_y, sc.self_score, s.depth, s.definition, (sc.image_max_rank_less / CAST((SELECT count_star() FROM synsets) AS DOUBLE)) AS image_score, (sc.image_rank_less / CAST((SELECT count_star() FROM synsets) AS DOUBLE)) AS image_self_score, sc.map_peak, sc.self_map_peak FROM ((image_scores AS sc INNER JOIN images AS i ON ((i.image_id = sc.image_id))) INNER JOIN synsets AS s ON ((s.synset_id = sc.synset_id)));
CREATE MACRO concept_scores(img) AS TABLE
SELECT synset, score, self_score, peak_x, peak_y, depth, definition
FROM image_concepts WHERE image_id = img
ORDER BY score DESC, self_score DESC, synset;
