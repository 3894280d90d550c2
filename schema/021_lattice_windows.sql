-- Window boxes and grid positions computed from the image's lattice, not stored (issue 24).
--
-- Every window convis-db has written is a corner of its image's lattice: on each axis the corners are
-- origin + k * stride (origin 0 for the 'origin' layout, stride - large for 'equal'), window_idx runs
-- row-major over grid_rows x grid_cols, and a box is its corner to corner + large, never clipped
-- (engine/windows.py since its first version). So the windows table held, for a database made with
-- --embeddings none, nothing that images does not determine: 9 KB per image at the paper's settings.
--
-- window_embeddings keeps what cannot be computed: each window's embedding (float32, or float16 as its
-- high and low bytes, schema 017), one row per window, and no rows at all with --embeddings none.
-- `windows` is now a view with the old table's columns, types and rows: one row per window of every
-- image, its box and grid position from the lattice macros below, its embedding joined (NULL where
-- none is kept). window_top_concepts computes the boxes the same way. Writers (ingest, the shard merge)
-- store window_embeddings rows only; shards keep their windows rows, boxes included, which the merge
-- checks against the lattice before leaving them out (store/shard_checks.py).

-- The corner of lattice position k (a column for x, a row for y), in working pixels.
CREATE OR REPLACE MACRO window_corner(layout, stride, large, k) AS
    (CASE layout WHEN 'equal' THEN stride - large ELSE 0 END + k * stride)::INTEGER;

-- A file whose windows are not its lattice's was not written by convis-db: refuse rather than lose them.
SELECT error('schema 021: image ' || w.image_id || ' window ' || w.window_idx || ' is not at its lattice '
             || 'position (grid or box), so the file was not written by convis-db')
FROM windows w JOIN images i ON i.image_id = w.image_id
WHERE w.grid_row <> w.window_idx // i.grid_cols OR w.grid_col <> w.window_idx % i.grid_cols
   OR w.x0 <> window_corner(i.layout, i.stride, i.large, w.window_idx % i.grid_cols)
   OR w.y0 <> window_corner(i.layout, i.stride, i.large, w.window_idx // i.grid_cols)
   OR w.x1 <> w.x0 + i.large OR w.y1 <> w.y0 + i.large
LIMIT 1;

SELECT error('schema 021: image ' || i.image_id || ' has ' || coalesce(w.n, 0) || ' window rows for its '
             || i.n_windows || ' windows, so the file was not written by convis-db')
FROM images i
LEFT JOIN (SELECT image_id, count(*) AS n, min(window_idx) AS lo, max(window_idx) AS hi
           FROM windows GROUP BY image_id) w ON w.image_id = i.image_id
WHERE w.n IS DISTINCT FROM i.n_windows OR w.lo <> 0 OR w.hi <> i.n_windows - 1
   OR i.n_windows <> i.grid_rows * i.grid_cols
LIMIT 1;

-- The table keeps its rows and blocks (no copy of the embeddings): renamed, its computed columns dropped,
-- and the rows that hold no embedding (every row of an --embeddings none file) deleted.
ALTER TABLE windows RENAME TO window_embeddings;
ALTER TABLE window_embeddings DROP COLUMN grid_row;
ALTER TABLE window_embeddings DROP COLUMN grid_col;
ALTER TABLE window_embeddings DROP COLUMN x0;
ALTER TABLE window_embeddings DROP COLUMN y0;
ALTER TABLE window_embeddings DROP COLUMN x1;
ALTER TABLE window_embeddings DROP COLUMN y1;
DELETE FROM window_embeddings
WHERE embedding IS NULL AND embedding_f16_hi IS NULL AND embedding_f16_lo IS NULL;

CREATE OR REPLACE VIEW windows AS
SELECT i.image_id, g.window_idx,
       (g.window_idx // i.grid_cols)::INTEGER AS grid_row,
       (g.window_idx % i.grid_cols)::INTEGER AS grid_col,
       window_corner(i.layout, i.stride, i.large, g.window_idx % i.grid_cols) AS x0,
       window_corner(i.layout, i.stride, i.large, g.window_idx // i.grid_cols) AS y0,
       (window_corner(i.layout, i.stride, i.large, g.window_idx % i.grid_cols) + i.large)::INTEGER AS x1,
       (window_corner(i.layout, i.stride, i.large, g.window_idx // i.grid_cols) + i.large)::INTEGER AS y1,
       e.embedding, e.embedding_f16_hi, e.embedding_f16_lo
FROM images i
CROSS JOIN LATERAL (SELECT unnest(range(i.n_windows))::INTEGER AS window_idx) g
LEFT JOIN window_embeddings e ON e.image_id = i.image_id AND e.window_idx = g.window_idx;

CREATE OR REPLACE VIEW window_top_concepts AS
SELECT wc.image_id, wc.window_idx, wc.k, s.name AS synset, wc.synset_id,
       wc.rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS rank_sim,
       CAST(greatest(floor(window_corner(i.layout, i.stride, i.large, wc.window_idx % i.grid_cols)
                           * i.scale), 0) AS INTEGER) AS x0,
       CAST(greatest(floor(window_corner(i.layout, i.stride, i.large, wc.window_idx // i.grid_cols)
                           * i.scale), 0) AS INTEGER) AS y0,
       CAST(least(ceil((window_corner(i.layout, i.stride, i.large, wc.window_idx % i.grid_cols) + i.large)
                       * i.scale), i.width) AS INTEGER) AS x1,
       CAST(least(ceil((window_corner(i.layout, i.stride, i.large, wc.window_idx // i.grid_cols) + i.large)
                       * i.scale), i.height) AS INTEGER) AS y1
FROM window_concepts wc
JOIN images i ON i.image_id = wc.image_id
JOIN synsets s ON s.synset_id = wc.synset_id;
