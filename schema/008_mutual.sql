-- Mutual-knowledge explanations of zero-shot predictions (Sammani & Deligiannis, NeurIPS 2024).
-- docs/mutual.md describes the method and every column.

-- Descriptor banks read from a user's file (class -> list of descriptor texts), embedded once per model.
-- The default bank, the definitions of T, is not copied here: it is definition_embeddings itself.
CREATE SEQUENCE mutual_bank_id_seq START 1;
CREATE TABLE mutual_banks (
    bank_id     INTEGER PRIMARY KEY DEFAULT nextval('mutual_bank_id_seq'),
    model_id    INTEGER NOT NULL,
    name        VARCHAR NOT NULL,             -- the file's name when it was stored
    sha256      VARCHAR NOT NULL,             -- of the file's bytes: the same file is embedded once per model
    n_entries   INTEGER NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (model_id, sha256)
);
CREATE TABLE mutual_bank_entries (
    bank_id     INTEGER NOT NULL,
    entry_idx   INTEGER NOT NULL,             -- 0.. in the file's order, duplicates merged
    text        VARCHAR NOT NULL,             -- the descriptor, embedded alone (no class name)
    classes     VARCHAR[] NOT NULL,           -- the classes that list it
    embedding   FLOAT[] NOT NULL              -- E_T(text), L2-normalised
);

-- One explained zero-shot prediction.
CREATE SEQUENCE mutual_explanation_id_seq START 1;
CREATE TABLE mutual_explanations (
    explanation_id  INTEGER PRIMARY KEY DEFAULT nextval('mutual_explanation_id_seq'),
    image_id        INTEGER,                  -- the ingested image with this file's sha256, if any
    path            VARCHAR NOT NULL,
    sha256          VARCHAR NOT NULL,
    model_id        INTEGER NOT NULL,
    bank            VARCHAR NOT NULL,         -- 'definitions' or 'descriptors'
    bank_id         INTEGER,                  -- mutual_banks row for 'descriptors'
    labels          VARCHAR[] NOT NULL,       -- the zero-shot classes
    templates       VARCHAR[] NOT NULL,       -- prompt templates, averaged
    predicted       VARCHAR NOT NULL,         -- the predicted label
    predicted_score DOUBLE NOT NULL,          -- cosine(image, class text embedding)
    decomposition   VARCHAR NOT NULL,         -- 'pca' or 'kmeans'
    settings_json   VARCHAR NOT NULL,
    n_concepts      INTEGER NOT NULL,         -- visual concepts found
    n_mutual        INTEGER NOT NULL,
    mi              DOUBLE NOT NULL,          -- the authors' MI estimate for this image
    auc             DOUBLE NOT NULL,          -- mean of its MI-dynamics curve
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The visual concepts (regions) of an explanation; boxes in original pixels, [x0, x1) x [y0, y1).
CREATE TABLE mutual_visual_concepts (
    explanation_id INTEGER NOT NULL,
    concept_idx    INTEGER NOT NULL,
    n_patches      INTEGER NOT NULL,
    importance     DOUBLE NOT NULL,           -- logit_scale * cosine(concept embedding, predicted class)
    x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL,
    patch_mask     BOOLEAN[] NOT NULL,        -- row-major over the patch grid
    grid_rows      INTEGER NOT NULL,
    grid_cols      INTEGER NOT NULL
);

-- Textual concepts. side: 'vision' (a visual concept's texts; concept_idx set), 'language' (the bank
-- entries around the predicted class), 'mutual' (in both). entry_idx indexes the bank: the synset_id
-- for the definitions bank (synset_id is then set too), mutual_bank_entries.entry_idx otherwise.
CREATE TABLE mutual_textual_concepts (
    explanation_id INTEGER NOT NULL,
    side           VARCHAR NOT NULL,
    concept_idx    INTEGER,
    rank           INTEGER NOT NULL,          -- 1 = first in that list
    entry_idx      INTEGER NOT NULL,
    synset_id      INTEGER,
    text           VARCHAR NOT NULL,
    score          DOUBLE NOT NULL            -- vision/mutual: relevance to the image; language: to the class
);

-- Mutual concepts with their prediction, ready for SQL (which concepts are mutual for images predicted as X).
CREATE VIEW mutual_concepts AS
SELECT e.explanation_id, e.image_id, e.path, e.predicted, e.decomposition, e.bank,
       t.rank, t.text, t.synset_id, s.name AS synset, t.score
FROM mutual_textual_concepts t
JOIN mutual_explanations e USING (explanation_id)
LEFT JOIN synsets s ON s.synset_id = t.synset_id
WHERE t.side = 'mutual';
