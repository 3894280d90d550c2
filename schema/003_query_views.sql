-- The SQL surface for users: views with synset names joined in, and table macros for common questions.
-- Coordinates in these views are original-image pixels.

-- Every concept's score for every image (score: the concept and its descendants; self_score: the synset alone).
CREATE VIEW image_concepts AS
SELECT sc.image_id, i.path, s.name AS synset, sc.synset_id, sc.score,
       CAST(round((sc.peak_x + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_x,
       CAST(round((sc.peak_y + 0.5) * i.scale - 0.5) AS INTEGER) AS peak_y,
       sc.self_score, s.depth, s.definition
FROM image_scores sc
JOIN images i ON i.image_id = sc.image_id
JOIN synsets s ON s.synset_id = sc.synset_id;

-- Each window's stored top concepts (k = 1 is the best), with its large-patch box in original pixels.
CREATE VIEW window_top_concepts AS
SELECT wc.image_id, wc.window_idx, wc.k, s.name AS synset, wc.synset_id,
       wc.rank_less / (SELECT count(*) FROM synsets)::DOUBLE AS rank_sim,
       CAST(floor(w.x0 * i.scale) AS INTEGER) AS x0, CAST(floor(w.y0 * i.scale) AS INTEGER) AS y0,
       CAST(least(ceil(w.x1 * i.scale), i.width) AS INTEGER) AS x1,
       CAST(least(ceil(w.y1 * i.scale), i.height) AS INTEGER) AS y1
FROM window_concepts wc
JOIN windows w ON w.image_id = wc.image_id AND w.window_idx = wc.window_idx
JOIN images i ON i.image_id = wc.image_id
JOIN synsets s ON s.synset_id = wc.synset_id;

-- images_with('dog.n.01', 0.99): images whose score for the concept (or any descendant) reaches min_score.
-- Exact for every threshold: each image stores the peak of every concept's map.
CREATE MACRO images_with(concept, min_score) AS TABLE
SELECT ic.image_id, ic.path, ic.score, ic.peak_x, ic.peak_y
FROM image_concepts ic
WHERE ic.synset = concept AND ic.score >= min_score
ORDER BY ic.score DESC, ic.image_id;

-- regions_with('dog.n.01', 0.99): windows where the concept or a descendant has rank_sim >= min_score,
-- from the stored top-K lists, with the best matching descendant. Exact when
-- min_score > 1 - top_k / |T| (every synset above that rank is in a window's top-K); below that bound
-- it may miss windows (use the `regions` command, which recomputes maps from the stored embeddings).
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

-- concept_scores(image_id): every concept of one image, best first.
CREATE MACRO concept_scores(img) AS TABLE
SELECT synset, score, self_score, peak_x, peak_y, depth, definition
FROM image_concepts WHERE image_id = img
ORDER BY score DESC, self_score DESC, synset;

-- The smallest min_score for which regions_with is exact, per image (1 - top_k / |T|).
CREATE VIEW regions_with_exact_above AS
SELECT image_id, 1.0 - top_k / (SELECT count(*) FROM synsets) AS exact_above FROM images;
