-- Which fingerprint scheme an artwork's pHash and dHash were computed with
-- (artclf_core.images.fingerprints.FINGERPRINT_VERSION, docs/dedup.md "The hash").
--
-- 1: imagehash's pHash and dHash of the decoded picture (JPEG draft decode), up to 2026-12-07.
-- 2: the same hashes of the picture squeezed to 160 x 160, the pixels ingestion already makes
--    for the model: half the CPU. The two differ by a few bits at most (none for 90 % of
--    pictures), well inside the near-copy thresholds (14 and 14), so a catalogue with rows of
--    both schemes still finds its copies; `artclf rehash` recomputes the older rows from the
--    lake so that every comparison is exact again.
--
-- Rows catalogued before this migration are scheme 1; ingestion writes the scheme it used.

ALTER TABLE artclf.artworks
    ADD COLUMN fingerprint_version smallint NOT NULL DEFAULT 1
    CHECK (fingerprint_version >= 1);

ALTER TABLE artclf.artworks ALTER COLUMN fingerprint_version SET DEFAULT 2;

CREATE INDEX artworks_fingerprint_version ON artclf.artworks (fingerprint_version, id)
    WHERE fingerprint_version < 2;
