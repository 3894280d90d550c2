-- The number format the CLIP encoders computed in: fp32, bf16 or fp16 (convis_db/models/precision.py).
-- images.precision: the precision of the image encoder that made the image's window embeddings.
-- models.definition_precision: the precision of the text encoder that embedded the definitions.
--
-- Rows written before this migration keep NULL (read back as 'unrecorded'): the precision was implied
-- by the device (fp32 on a CPU, bf16 or fp16 autocast on CUDA), and the device was never recorded, so
-- any value filled in here could be wrong.
ALTER TABLE images ADD COLUMN precision VARCHAR;
ALTER TABLE models ADD COLUMN definition_precision VARCHAR;
