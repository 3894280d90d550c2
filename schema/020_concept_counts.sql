-- Each concept's number of indexed images per ranking, and where its concept_top lists end, so that
-- `count` (and the explorer's total under each page of results) answers from a few rows instead of
-- counting one key per image of the collection (issue 24, queries at 1M images).
--
-- concept_counts holds, per concept: how many indexed images have a map score (map_images: every image)
-- and an image-level count (image_images); the image-level count of the image list's last image
-- (image_last) and the map peak of the map list's last (map_last, the DOUBLE the queries compute). Every
-- stored score is >= 0, so a count at min_score 0 is one of the first two; at a threshold above a list's
-- last (or when the list holds every image) the list answers, and otherwise the keys are counted
-- (query/search.py). The refresh keeps it with the lists, in the same transaction and from the same
-- images (concept_index_state.top_through), from 10,000 indexed images on.
--
-- concept_counts_rows(after, through): concept_counts' counts with the images after..through of
-- concept_peaks added, and concept_top's ends (the lists already hold those images): the one rule the
-- refresh and this migration apply.

CREATE TABLE concept_counts (
    synset_id INTEGER NOT NULL,
    map_images BIGINT NOT NULL,
    image_images BIGINT NOT NULL,
    image_last INTEGER,
    map_last DOUBLE
);

CREATE OR REPLACE MACRO concept_counts_rows(after_image, through_image) AS TABLE
WITH counted AS (
    SELECT synset_id, sum(map_images)::BIGINT AS map_images, sum(image_images)::BIGINT AS image_images
    FROM (
        SELECT synset_id, map_images, image_images FROM concept_counts
        UNION ALL
        SELECT synset_id, count(*) AS map_images, count(image_max_rank_less) AS image_images
        FROM concept_peaks WHERE image_id > after_image AND image_id <= through_image
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

-- A file whose lists are kept gets its counts now, from the same images (none where they are not kept:
-- top_through is NULL and no image id is <= NULL).
INSERT INTO concept_counts
SELECT * FROM concept_counts_rows(0, (SELECT top_through FROM concept_index_state));
