"""``artclf label DIR``: a curator labels a whole folder of pictures in one go.

``DIR`` holds one sub-folder per class (``DIR/painting/*.jpg``, ...), the layout of a
training folder. Every picture in it ends labelled in the catalogue through
``artclf.confirm_label``, the function the review page calls, under the curator's name:

* a picture already catalogued (same SHA-256) is confirmed or corrected where it is;
* a new picture is dropped under ``incoming/<collection>/<class>/<name>`` and ingested now
  (the same pipeline as any drop: validated, de-duplicated, classified, placed), then
  labelled; a near or exact copy of a catalogued artwork labels that artwork; a picture the
  pipeline quarantines is reported with its reason and labels nothing.

The collection is ``DIR``'s own name unless ``collection`` is given; an explicit one is also
set on the already catalogued pictures (``artclf.set_collection``). Everything is checked
before anything changes: a sub-folder that is not a class, or a folder without pictures, is
refused with the offending names and the catalogue and the lake are left as they were.
Re-running is harmless: a picture already labelled so is left alone (no second review row).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artclf_core import CLASSES
from artclf_core.catalogue import db
from artclf_core.config import INCOMING_PREFIX, Settings
from artclf_core.lake import s3 as s3lib

log = logging.getLogger("artclf.label")

#: File suffixes taken as pictures (the others are listed as skipped).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class Picture:
    path: Path
    label: str
    sha256: str
    md5: str  # the ETag S3 gives a single-part PUT of it: matches an earlier drop


@dataclass
class LabelSummary:
    """What ``label_folder`` did, per picture outcome."""

    collection: str
    confirmed: int = 0  # the label was the model's (or an earlier curator's) already
    corrected: int = 0
    unchanged: int = 0  # already labelled so by a curator: nothing written
    new: int = 0  # of the above, pictures catalogued by this run
    via_duplicate: int = 0  # labels given to the artwork a dropped copy duplicates
    not_labelled: dict[str, str] = field(default_factory=dict)  # file -> why
    skipped: list[str] = field(default_factory=list)  # files that are not pictures
    ids: list[int] = field(default_factory=list)

    def line(self) -> str:
        labelled = self.confirmed + self.corrected
        return (
            f"labelled {labelled} ({self.confirmed} confirmed, {self.corrected} corrected; "
            f"{self.new} newly catalogued, {self.via_duplicate} through a copy) / "
            f"already so {self.unchanged} / not labelled {len(self.not_labelled)} / "
            f"skipped {len(self.skipped)}; collection {self.collection!r}"
        )


def scan(folder: str | Path) -> tuple[list[Picture], list[str]]:
    """The pictures of ``folder/<class>/`` and the files skipped; raises ``ValueError``
    (nothing changed) for a sub-folder that is not a class, a file beside the class
    folders, or no picture at all."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    bad = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in root.iterdir()
        if not p.name.startswith(".") and not (p.is_dir() and p.name in CLASSES)
    )
    if bad:
        raise ValueError(
            f"{root}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a class folder; "
            f"expected only sub-folders named {', '.join(CLASSES)}. Nothing was labelled."
        )
    pictures, skipped = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name in CLASSES):
        for f in sorted(sub.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(str(f.relative_to(root)))
                continue
            data = f.read_bytes()
            pictures.append(
                Picture(
                    f, sub.name, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
                )
            )
    if not pictures:
        raise ValueError(f"{root}: no pictures under {', '.join(CLASSES)} sub-folders")
    return pictures, skipped


def _by_sha(conn: Any, shas: list[str]) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT sha256, id FROM artclf.artworks WHERE sha256 = ANY(%s)", (shas,)
        ).fetchall()
    )


def _outcomes(conn: Any, bucket: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The latest ingest-log row of each dropped key: state, reason and what it copies."""
    rows = db.fetch_dicts(
        conn,
        "SELECT DISTINCT ON (key) key, etag, state, reason, message, duplicate_of"
        " FROM artclf.ingest_log WHERE bucket = %s AND key = ANY(%s) ORDER BY key, id DESC",
        (bucket, keys),
    )
    return {r["key"]: r for r in rows}


def label_folder(
    settings: Settings,
    folder: str | Path,
    *,
    curator: str,
    collection: str | None = None,
    model: Any = None,
) -> LabelSummary:
    """Label every picture of ``folder`` (module docstring); ``model`` is the ingest model
    for new pictures (default: the active one)."""
    pictures, skipped = scan(folder)
    coll = collection or Path(folder).resolve().name
    summary = LabelSummary(collection=coll, skipped=skipped)
    prefix = f"{INCOMING_PREFIX}{coll}/"
    # Where each picture not yet catalogued is (or was) dropped: a deterministic key, so a
    # re-run finds the outcome of its earlier drop (a copy is never dropped twice).
    drop_key = {p.sha256: s3lib.fit_key(f"{prefix}{p.label}/", "", p.path.name) for p in pictures}
    with db.connect(settings.db_url) as conn:
        known = _by_sha(conn, [p.sha256 for p in pictures])
        earlier = _outcomes(conn, settings.bucket, [drop_key[p.sha256] for p in pictures])
        conn.commit()
    dropped: dict[str, str] = {}  # sha -> key
    for p in pictures:
        row = earlier.get(drop_key[p.sha256])
        copy_of_earlier = row is not None and row["state"] == "duplicate" and row["etag"] == p.md5
        if p.sha256 in known or copy_of_earlier or p.sha256 in dropped:
            continue
        dropped[p.sha256] = drop_key[p.sha256]
    if dropped:
        client = s3lib.client(settings)
        by_sha = {p.sha256: p for p in pictures}
        for sha, key in dropped.items():
            client.put_object(Bucket=settings.bucket, Key=key, Body=by_sha[sha].path.read_bytes())
        from artclf_core.ingest.ingestor import Ingestor

        with Ingestor(settings, model=model) as ing:
            ingested = ing.ingest_prefix(prefix)
        log.info("ingested the %d new picture(s): %s", len(dropped), ingested.line())
    with db.connect(settings.db_url) as conn:
        known = _by_sha(conn, [p.sha256 for p in pictures])
        outcome = _outcomes(conn, settings.bucket, [drop_key[p.sha256] for p in pictures])
        wanted: dict[int, tuple[str, Picture]] = {}
        for p in pictures:
            aid = known.get(p.sha256)
            via_copy = False
            if aid is None:
                row = outcome.get(drop_key[p.sha256])
                if row is not None and row["state"] == "duplicate" and row["duplicate_of"]:
                    aid, via_copy = int(row["duplicate_of"]), True
                else:
                    why = (
                        f"{row['state']}: {row['reason']} ({row['message']})"
                        if row is not None
                        else "not catalogued yet (another worker holds it): run again"
                    )
                    summary.not_labelled[str(p.path)] = why
                    continue
            if aid in wanted and wanted[aid][0] != p.label:
                summary.not_labelled[str(p.path)] = (
                    f"artwork {aid} is also under {wanted[aid][0]}/ ({wanted[aid][1].path.name})"
                )
                continue
            wanted[aid] = (p.label, p)
            summary.via_duplicate += via_copy
            summary.new += p.sha256 in dropped and not via_copy
        ids = sorted(wanted)
        current = dict(
            conn.execute(
                "SELECT a.id, coalesce(a.curated_label, e.label) FROM artclf.artworks a"
                " LEFT JOIN artclf.embeddings e ON e.artwork_id = a.id"
                "  AND e.model_version = artclf.active_version()"
                " WHERE a.id = ANY(%s)",
                (ids,),
            ).fetchall()
        )
        curated = dict(
            conn.execute(
                "SELECT id, curated_label FROM artclf.artworks WHERE id = ANY(%s)"
                " AND curated_by IS NOT NULL",
                (ids,),
            ).fetchall()
        )
        todo = [(aid, label) for aid, (label, _) in sorted(wanted.items())]
        changes = [(aid, label) for aid, label in todo if curated.get(aid) != label]
        summary.unchanged = len(todo) - len(changes)
        for aid, label in changes:
            was = current.get(aid)
            if was is None or was == label:
                summary.confirmed += 1
            else:
                summary.corrected += 1
        if changes:  # one statement for the whole folder, in id order
            conn.execute(
                "SELECT artclf.confirm_label(c.id, c.label, %s)"
                " FROM unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS c(id, label, n)"
                " ORDER BY c.n",
                (curator, [a for a, _ in changes], [lab for _, lab in changes]),
            )
        if collection:
            conn.execute("SELECT artclf.set_collection(%s, %s)", (sorted(wanted), collection))
        conn.commit()
    summary.ids = sorted(wanted)
    return summary
