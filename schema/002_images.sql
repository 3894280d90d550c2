-- Ingested images, their windows, the score of every concept per image, and each window's top concepts.
-- Coordinates are in working-image pixels (the image resized to about max_pixels); `scale` converts
-- them to original pixels (original = working * scale).

CREATE SEQUENCE image_id_seq START 1;
CREATE TABLE images (
    image_id     INTEGER PRIMARY KEY DEFAULT nextval('image_id_seq'),
    sha256       VARCHAR NOT NULL UNIQUE,      -- content hash of the file: ingestion is idempotent
    path         VARCHAR NOT NULL,             -- absolute path when ingested
    model_id     INTEGER NOT NULL,
    width        INTEGER NOT NULL,             -- original size (upright, after EXIF orientation)
    height       INTEGER NOT NULL,
    work_width   INTEGER NOT NULL,             -- working size the windows are cut from
    work_height  INTEGER NOT NULL,
    scale        DOUBLE NOT NULL,              -- original pixels per working pixel
    stride       INTEGER NOT NULL,
    small        INTEGER NOT NULL,
    large        INTEGER NOT NULL,
    max_pixels   INTEGER NOT NULL,
    top_k        INTEGER NOT NULL,
    grid_rows    INTEGER NOT NULL,             -- windows per column and per row of the grid
    grid_cols    INTEGER NOT NULL,
    n_windows    INTEGER NOT NULL,
    ingested_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One row per window: the large patch's box [x0, x1) x [y0, y1) in working pixels (it may reach past
-- the border, where the patch is filled with the model's mean colour) and e = (E_I(S) + E_I(L)) / 2,
-- each E_I L2-normalised, stored as float32.
CREATE TABLE windows (
    image_id   INTEGER NOT NULL,
    window_idx INTEGER NOT NULL,               -- grid_row * grid_cols + grid_col
    grid_row   INTEGER NOT NULL,
    grid_col   INTEGER NOT NULL,
    x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL,
    embedding  FLOAT[] NOT NULL
);

-- The score of every concept of T for every image: the peak value of its saliency map (exact), with the
-- peak's centre in working pixels. score uses max_rank_sim (the concept and all its descendants);
-- self_score uses rank_sim of the synset alone.
CREATE TABLE image_scores (
    image_id    INTEGER NOT NULL,
    synset_id   INTEGER NOT NULL,
    score       DOUBLE NOT NULL,
    peak_x      INTEGER NOT NULL,
    peak_y      INTEGER NOT NULL,
    self_score  DOUBLE NOT NULL,
    self_peak_x INTEGER NOT NULL,
    self_peak_y INTEGER NOT NULL
);

-- Each window's top_k synsets by cosine (k = 1 is the best), with rank_less = |T| * rank_sim, the exact
-- number of synsets with a smaller cosine (the view window_top_concepts adds rank_sim). Every synset
-- missing from a window's list has rank_sim <= 1 - top_k / |T|.
CREATE TABLE window_concepts (
    image_id   INTEGER NOT NULL,
    window_idx INTEGER NOT NULL,
    k          SMALLINT NOT NULL,
    synset_id  INTEGER NOT NULL,
    rank_less  INTEGER NOT NULL
);

-- Files that could not be ingested, with the reason; re-tried only with `ingest --retry-failed`.
CREATE TABLE ingest_failures (
    path         VARCHAR PRIMARY KEY,
    sha256       VARCHAR,
    error        VARCHAR NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 1,
    last_attempt TIMESTAMP NOT NULL DEFAULT current_timestamp
);
