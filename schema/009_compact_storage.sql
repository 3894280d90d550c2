-- Compact storage and sharded ingest.
--
-- storage_settings records how this database keeps window embeddings (init --embeddings):
--   float32  windows.embedding FLOAT[] (exact: maps from stored data equal the stored scores)
--   float16  windows.embedding_f16 BLOB, little-endian IEEE half floats (DuckDB has no half type),
--            read back as float32; half the bytes of the dominant cost
--   none     no window embeddings; maps of stored images are recomputed from the image file
-- Stored scores and per-window top-K are exact in every choice (computed from float32 before storing).
-- A database made before this migration stores float32, and says so after the upgrade.
CREATE TABLE storage_settings (
    embeddings VARCHAR NOT NULL CHECK (embeddings IN ('float32', 'float16', 'none'))
);
INSERT INTO storage_settings VALUES ('float32');

ALTER TABLE windows ADD COLUMN embedding_f16 BLOB;
ALTER TABLE windows ALTER COLUMN embedding DROP NOT NULL;

-- Shards (Parquet folders written by `ingest --engine ray` or elsewhere) merged into this database,
-- by their name, which holds a hash of the files in them: merging one again is a no-op.
CREATE TABLE merged_shards (
    shard     VARCHAR PRIMARY KEY,
    images    INTEGER NOT NULL,      -- images added by this merge
    skipped   INTEGER NOT NULL,      -- images of the shard already stored (same content hash)
    merged_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
