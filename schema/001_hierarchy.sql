-- The WordNet hierarchy T, the CLIP models, and the definition embeddings d_s = E_T(def(s)).
-- One database holds one vocabulary (T); it may hold definition embeddings of several models.

CREATE TABLE vocabulary (
    vocab_id        INTEGER PRIMARY KEY,
    name            VARCHAR NOT NULL,          -- physical-objects, all-nouns, or a word file's stem
    source          VARCHAR NOT NULL,          -- builtin:... or the word file's absolute path
    words_sha256    VARCHAR NOT NULL,          -- hash of the word list: identifies the vocabulary
    n_words         INTEGER NOT NULL,
    missing_words   VARCHAR[] NOT NULL,        -- vocabulary words with no WordNet noun sense
    n_synsets       INTEGER NOT NULL,
    wordnet_version VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

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

-- Every is-a edge of T: parent is a hypernym (or instance hypernym) of child. A DAG: all parents kept.
CREATE TABLE isa_edges (
    parent_id INTEGER NOT NULL,
    child_id  INTEGER NOT NULL,
    kind      VARCHAR NOT NULL CHECK (kind IN ('hypernym', 'instance')),
    PRIMARY KEY (parent_id, child_id)
);

-- Transitive closure: every (ancestor, descendant) pair with the shortest distance; each synset is its
-- own descendant at distance 0.
CREATE TABLE closure (
    ancestor_id   INTEGER NOT NULL,
    descendant_id INTEGER NOT NULL,
    distance      INTEGER NOT NULL,
    PRIMARY KEY (ancestor_id, descendant_id)
);

CREATE SEQUENCE model_id_seq START 1;
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
    UNIQUE (name, pretrained)
);

-- L2-normalised text embeddings of each synset's definition, per model.
CREATE TABLE definition_embeddings (
    model_id  INTEGER NOT NULL,
    synset_id INTEGER NOT NULL,
    embedding FLOAT[] NOT NULL,
    PRIMARY KEY (model_id, synset_id)
);

-- descendants('animal.n.01'): the synsets under a concept, itself included (distance 0).
CREATE MACRO descendants(concept) AS TABLE
    SELECT d.synset_id, d.name, d.definition, d.depth, c.distance
    FROM synsets a
    JOIN closure c ON c.ancestor_id = a.synset_id
    JOIN synsets d ON d.synset_id = c.descendant_id
    WHERE a.name = concept;

-- ancestors('dog.n.01'): the synsets above a concept up to entity.n.01, itself included (distance 0).
CREATE MACRO ancestors(concept) AS TABLE
    SELECT a.synset_id, a.name, a.definition, a.depth, c.distance
    FROM synsets d
    JOIN closure c ON c.descendant_id = d.synset_id
    JOIN synsets a ON a.synset_id = c.ancestor_id
    WHERE d.name = concept;

-- children('animal.n.01') and parents('dog.n.01'): one is-a step.
CREATE MACRO children(concept) AS TABLE
    SELECT c.synset_id, c.name, c.definition, e.kind
    FROM synsets p JOIN isa_edges e ON e.parent_id = p.synset_id JOIN synsets c ON c.synset_id = e.child_id
    WHERE p.name = concept;

CREATE MACRO parents(concept) AS TABLE
    SELECT p.synset_id, p.name, p.definition, e.kind
    FROM synsets c JOIN isa_edges e ON e.child_id = c.synset_id JOIN synsets p ON p.synset_id = e.parent_id
    WHERE c.name = concept;
