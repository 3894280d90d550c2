-- float16 window embeddings as two BLOBs: the high bytes of the halves and their low bytes (issue 24).
--
-- Schema 009 kept a window's float16 embedding as one BLOB of little-endian IEEE halves (low byte, high
-- byte, low byte, ...). The high byte of a half is its sign, its 5 exponent bits and its top 2 mantissa
-- bits: for unit-norm CLIP vectors it takes few values, and zstd shrinks a column of them by a third;
-- the low byte (8 mantissa bits) is close to random. Interleaved, no method shrinks them. The windows
-- table now keeps
--   embedding_f16_hi  BLOB  the high byte of each half, in vector order (dim bytes)
--   embedding_f16_lo  BLOB  the low byte of each half, in vector order (dim bytes)
-- in place of embedding_f16, both NULL where the database stores float32 or none. Half i of a window
-- is embedding_f16_lo[i] + 256 x embedding_f16_hi[i]; the macro f16_embedding(hi, lo) gives back the
-- BLOB of schema 009, byte for byte.
--
-- The columns have no USING COMPRESSION: DuckDB writes a column it is told to compress one way with
-- that method even where every value is NULL (4-8 KB per image each, measured, docs/storage.md), which
-- a float32 or none database would pay for nothing. A writable connection to a float16 database lets
-- DuckDB choose zstd for them instead (store/db.py FLOAT16_COMPRESSION).

ALTER TABLE windows ADD COLUMN IF NOT EXISTS embedding_f16_hi BLOB;
ALTER TABLE windows ADD COLUMN IF NOT EXISTS embedding_f16_lo BLOB;

-- Every stored embedding's bytes, split: the hex digits of byte pairs, the second pair's (high) resp.
-- the first's (low). convis-db splits the rows itself first, a batch of images at a time, with progress
-- (store/migration_steps.py); run alone, this splits them all.
UPDATE windows
SET embedding_f16_hi = unhex(regexp_replace(hex(embedding_f16), '..(..)', '\1', 'g')),
    embedding_f16_lo = unhex(regexp_replace(hex(embedding_f16), '(..)..', '\1', 'g'))
WHERE embedding_f16 IS NOT NULL AND embedding_f16_hi IS NULL;

ALTER TABLE windows DROP COLUMN embedding_f16;

-- A window's float16 embedding as schema 009 stored it (little-endian halves), from its two columns.
-- NULL where either is (a float32 or none database's rows).
CREATE OR REPLACE MACRO f16_embedding(hi, lo) AS
    CASE WHEN hi IS NOT NULL AND lo IS NOT NULL
         THEN unhex(array_to_string(list_transform(list_zip(regexp_extract_all(hex(lo), '..'),
                                                            regexp_extract_all(hex(hi), '..')),
                                                   lambda pair: pair[1] || pair[2]), '')) END;
