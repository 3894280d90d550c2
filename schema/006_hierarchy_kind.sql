-- How T was built (init --hierarchy): 'reference' (the authors' T: raw wn.synsets lookups, hypernym
-- links only) or 'extended' (normalised words, instance hypernyms count as is-a). Databases made
-- before the choice existed hold the extended T, so their row reads 'extended'.
ALTER TABLE vocabulary ADD COLUMN hierarchy VARCHAR DEFAULT 'extended';
UPDATE vocabulary SET hierarchy = 'extended' WHERE hierarchy IS NULL;
