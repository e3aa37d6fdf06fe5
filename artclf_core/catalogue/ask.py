"""Ask about a picture without cataloguing it: its label, probabilities and nearest artworks.

The prototype's main use (upload a picture, see its medium and the 5 most similar artworks)
for the CLI (``artclf classify``) and the HTTP API (``POST classify``). It runs exactly what
ingestion runs on an object up to the catalogue: the same decoder and limits
(:func:`artclf_core.images.decode.decode_image`, so a bad file gets the reason ingestion would
record), the same model input and one forward pass per batch, then the same nearest-neighbour
SQL (``artclf.similar_to_embedding``) on the active model's partition. Nothing is written.

Neighbours are only meaningful when the embedding comes from the model whose vectors the
catalogue serves: :func:`load_model` therefore loads the active version; with another model
(``ARTCLF_MODEL`` set to a different version) the answers carry no neighbours and say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artclf_core.catalogue import artworks, db, registry
from artclf_core.images import fingerprints
from artclf_core.images.decode import DEFAULT_LIMITS, ImageRejected, Limits, decode_image
from artclf_core.images.model_input import to_model_input


@dataclass
class Answer:
    """What artclf says about one picture; ``reason`` set means it was rejected."""

    name: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    format: str | None = None
    sha256: str | None = None
    #: The catalogued artwork with the same bytes, if any (the picture is already in the lake).
    catalogued_as: int | None = None
    model_version: str | None = None
    reason: str | None = None
    message: str | None = None
    #: Why ``neighbours`` is empty although the picture was classified (no catalogue yet...).
    note: str | None = None
    #: The model's review threshold: under it a curator should check the label.
    review_threshold: float | None = None

    @property
    def low_confidence(self) -> bool:
        p = self.probability
        return p is not None and self.review_threshold is not None and p < self.review_threshold

    @property
    def probability(self) -> float | None:
        return self.probabilities.get(self.label) if self.label else None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        out["probability"] = self.probability
        if self.label:
            out["low_confidence"] = self.low_confidence
        return out


def load_model(settings: Any) -> Any:
    """The model whose embeddings the catalogue serves (``ARTCLF_MODEL`` if set)."""
    from artclf_core.catalogue.registry import load_for_inference

    return load_for_inference(settings)


def analyse(
    model: Any, pictures: Sequence[tuple[str, bytes]], limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Answer], list[np.ndarray | None]]:
    """Validate, classify and embed ``(name, bytes)`` pictures in one forward pass.

    Returns the answers and, aligned with them, each accepted picture's embedding (``None``
    for rejected ones), for :func:`add_neighbours`.
    """
    answers: list[Answer] = []
    inputs: list[np.ndarray | None] = []
    for name, data in pictures:
        answer = Answer(name=name)
        try:
            decoded = decode_image(data, limits)  # refuses too_large_file before parsing
        except ImageRejected as exc:
            answer.reason, answer.message = exc.reason, exc.message
            answers.append(answer)
            inputs.append(None)
            continue
        answer.width, answer.height, answer.format = decoded.width, decoded.height, decoded.format
        answer.sha256 = fingerprints.sha256_hex(data)
        answers.append(answer)
        inputs.append(to_model_input(decoded.image, model.image_size))
    embeddings: list[np.ndarray | None] = [None] * len(answers)
    accepted = [i for i, x in enumerate(inputs) if x is not None]
    if accepted:
        probs, vectors = model.predict(np.stack([inputs[i] for i in accepted]))
        classes = list(model.classes)
        threshold = (
            (model.metrics or {}).get("review_threshold")
            if isinstance(model.metrics, dict)
            else None
        )
        for i, p, e in zip(accepted, probs, vectors, strict=True):
            answers[i].review_threshold = float(threshold) if threshold is not None else None
            answers[i].label = classes[int(np.argmax(p))]
            answers[i].probabilities = {
                c: round(float(x), 4) for c, x in zip(classes, p, strict=True)
            }
            answers[i].model_version = model.version
            embeddings[i] = e
    return answers, embeddings


def add_neighbours(
    conn: Any,
    answers: Sequence[Answer],
    embeddings: Sequence[np.ndarray | None],
    *,
    k: int = 5,
    same_label: bool = True,
) -> None:
    """Fill each classified answer's k nearest catalogued artworks (cosine distance)."""
    active = registry.active_version(conn)
    known = artworks.find_exact(conn, [a.sha256 for a in answers if a.sha256])
    asked: list[int] = []
    for i, (answer, vector) in enumerate(zip(answers, embeddings, strict=True)):
        if vector is None:
            continue
        answer.catalogued_as = known.get(answer.sha256 or "")
        if active is None:
            answer.note = "the catalogue is empty: no model is active yet"
        elif answer.model_version != active:
            answer.note = (
                f"classified by {answer.model_version}, but the catalogue serves {active}'s "
                "embeddings: no neighbours (unset ARTCLF_MODEL to use the active model)"
            )
        else:
            asked.append(i)
    if asked:  # one round trip for the whole batch
        rows = conn.execute(
            "SELECT q.i, n.rank, n.artwork_id, n.location, n.label, n.distance"
            " FROM unnest(%s::int[], %s::text[], %s::text[]) AS q(i, v, label)"
            " CROSS JOIN LATERAL artclf.similar_to_embedding(q.v::vector, %s, q.label) AS n"
            " ORDER BY q.i, n.rank",
            (
                asked,
                [db.vector_text(embeddings[i]) for i in asked],
                [answers[i].label if same_label else None for i in asked],
                k,
            ),
        ).fetchall()
        for i, *neighbour in rows:
            answers[i].neighbours.append(
                dict(zip(artworks.NEIGHBOUR_FIELDS, neighbour, strict=True))
            )
    conn.commit()


def classify(
    model: Any,
    conn: Any,
    pictures: Sequence[tuple[str, bytes]],
    *,
    k: int = 5,
    same_label: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Answer]:
    """:func:`analyse` then :func:`add_neighbours`: the whole question, for CLI and API."""
    answers, embeddings = analyse(model, pictures, limits)
    add_neighbours(conn, answers, embeddings, k=k, same_label=same_label)
    return answers
