-- Every catalogued artwork knows the collection it came from (docs/lifecycle.md,
-- "Learning a collection from its curators").
--
-- A curator's confirmations and corrections train the nightly model. To learn *that
-- collection* (and to measure what its labels bring) the retraining has to group and weigh
-- them by collection, as it does the sources of a training folder; before this an artwork
-- without "__" in its name got its class name as its source, so a museum's 200 confirmed
-- paintings became one family called "painting".
--
-- artclf.collection_of(key) is the default, from the key it was dropped under:
--   incoming/<collection>/.../name          -> <collection>
--   training/<label>/<collection>/.../name  -> <collection>
--   otherwise the name's prefix before "__" (the training-folder convention), else NULL.
-- It is filled at insert (trigger) unless the writer gave one, and can be changed by the
-- owner or a curator with artclf.set_collection(ids, collection) (`artclf label
-- --collection`). Collection names follow the source rule of the cross-validation: the part
-- before the first "_" or "-" is the family held out together.

CREATE FUNCTION artclf.collection_of(drop_key text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN drop_key ^@ 'incoming/' AND split_part(drop_key, '/', 3) <> ''
            THEN nullif(split_part(drop_key, '/', 2), '')
        WHEN drop_key ^@ 'training/' AND split_part(drop_key, '/', 4) <> ''
            THEN nullif(split_part(drop_key, '/', 3), '')
        WHEN position('__' IN regexp_replace(drop_key, '^.*/', '')) > 1
            THEN split_part(regexp_replace(drop_key, '^.*/', ''), '__', 1)
    END
$$;

ALTER TABLE artclf.artworks ADD COLUMN collection text
    CHECK (collection IS NULL OR (collection <> '' AND length(collection) <= 200));

UPDATE artclf.artworks SET collection = artclf.collection_of(source_key)
 WHERE collection IS NULL;

CREATE INDEX artworks_collection ON artclf.artworks (collection) WHERE collection IS NOT NULL;

CREATE FUNCTION artclf.default_collection() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.collection := coalesce(NEW.collection, artclf.collection_of(NEW.source_key));
    RETURN NEW;
END
$$;

CREATE TRIGGER artworks_default_collection BEFORE INSERT ON artclf.artworks
    FOR EACH ROW EXECUTE FUNCTION artclf.default_collection();

-- Move artworks to another collection (a curator's "these came from museum X").
CREATE FUNCTION artclf.set_collection(p_artwork_ids bigint[], p_collection text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n integer;
BEGIN
    IF p_collection IS NULL OR p_collection = '' OR length(p_collection) > 200
       OR p_collection ~ '[/[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid collection name %: 1-200 characters, no "/" or control characters',
            quote_literal(coalesce(p_collection, 'NULL')) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE artclf.artworks SET collection = p_collection, updated_at = now()
     WHERE id = ANY(p_artwork_ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE EXECUTE ON FUNCTION artclf.set_collection(bigint[], text) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'artclf_curator') THEN
        GRANT EXECUTE ON FUNCTION artclf.set_collection(bigint[], text) TO artclf_curator;
    END IF;
END
$$;

-- The catalogue view gains the column (appended: existing readers keep their positions).
CREATE OR REPLACE VIEW artclf.catalogue AS
SELECT a.id, a.location, a.bucket, a.key,
       e.label, e.probability, e.probabilities, e.model_version,
       a.curated_label, a.curated_by, a.curated_at,
       coalesce(a.curated_label, e.label) AS best_label,
       a.label AS filed_label, a.model_version AS filed_by,
       a.width, a.height, a.format, a.byte_size, a.sha256, a.source_key, a.created_at,
       a.collection
FROM artclf.artworks AS a
LEFT JOIN artclf.embeddings AS e
       ON e.artwork_id = a.id AND e.model_version = artclf.active_version();
