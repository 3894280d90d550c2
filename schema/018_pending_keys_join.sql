-- concept_keys without a scalar subquery in its second branch (issue 24, queries at 1M images).
--
-- The macro's second branch reads concept_peaks' rows of the images past the concept index's
-- watermark (concept_index_state.indexed_through). Written as `image_id > (SELECT indexed_through
-- ...)`, DuckDB checked the statistics of every concept_peaks row group against the value at run time
-- even when no image is past it (the usual state): 3.4-6.6 ms at 1M generated images, 1.1 ms at 100k.
-- As a join with the one-row state table it takes 0.8 and 0.5 ms, and images_with('dog.n.01', 0.99,
-- top := 20) at 1M images 37 / 32 ms (level image / map) instead of 42 / 52 (docs/benchmarks.md,
-- "Pending keys as a join"). Rows, columns and their order are unchanged: concept_index_state holds
-- one row; with none both forms give no pending rows.

CREATE OR REPLACE MACRO concept_keys(sid) AS TABLE
    SELECT synset_id, image_id,
           map_sum::DOUBLE / (map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           image_max_rank_less
    FROM concept_order WHERE synset_id = sid
    UNION ALL
    SELECT p.synset_id, p.image_id,
           p.map_sum::DOUBLE / (p.map_windows::DOUBLE * (SELECT count(*) FROM synsets)::DOUBLE) AS map_peak,
           p.image_max_rank_less
    FROM concept_peaks p JOIN concept_index_state st ON p.image_id > st.indexed_through
    WHERE p.synset_id = sid;
