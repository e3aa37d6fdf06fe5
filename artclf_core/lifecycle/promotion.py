"""The promotion gate: does a newly trained model replace the active one?

Both models are scored on the *same* validation images (source-disjoint, never trained on by
the candidate), so the comparison measures the models and not the luck of a split. The rule
is deliberately simple enough to state in one sentence, because an ML owner has to trust it:

    promote only if balanced accuracy improves by at least ``min_gain`` and no class's F1
    drops by more than ``max_f1_drop``.

Balanced accuracy rather than accuracy because the classes are imbalanced (63 icons against
496 paintings in the shared set): accuracy rewards a model that gives up on the rare class.
The per-class F1 guard stops a model that gains on average by sacrificing one medium that
curators rely on. With no active model (first training) or an active model that was never
scored on this set, the candidate is promoted when it is at least valid (every class scored).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

#: Default minimum gain in balanced accuracy (absolute, 0-1): one point.
DEFAULT_MIN_GAIN = 0.01
#: Default largest tolerated drop of any class's F1 (absolute, 0-1): five points.
DEFAULT_MAX_F1_DROP = 0.05


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the gate; ``from_env`` reads ``ARTCLF_GATE_MIN_GAIN`` and
    ``ARTCLF_GATE_MAX_F1_DROP`` (the retraining DAG's params override both)."""

    min_gain: float = DEFAULT_MIN_GAIN
    max_f1_drop: float = DEFAULT_MAX_F1_DROP

    @classmethod
    def from_env(
        cls, *, min_gain: float | None = None, max_f1_drop: float | None = None
    ) -> GatePolicy:
        """The environment's thresholds (else the defaults), each overridable by a value."""
        if min_gain is None:
            min_gain = float(os.environ.get("ARTCLF_GATE_MIN_GAIN") or DEFAULT_MIN_GAIN)
        if max_f1_drop is None:
            max_f1_drop = float(os.environ.get("ARTCLF_GATE_MAX_F1_DROP") or DEFAULT_MAX_F1_DROP)
        return cls(min_gain=float(min_gain), max_f1_drop=float(max_f1_drop))


@dataclass
class Decision:
    """The gate's verdict, with every reason, stored in ``model_versions.decision``."""

    promote: bool
    reasons: list[str]
    candidate: dict[str, Any]
    active: dict[str, Any] | None
    policy: dict[str, float]
    deltas: dict[str, float] = field(default_factory=dict)
    #: The curator collections' side (:func:`with_collections`), None when there was none.
    collections: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "REFUSE"
        return f"{verdict}: " + "; ".join(self.reasons)


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": round(float(report["accuracy"]), 4),
        "balanced_accuracy": round(float(report["balanced_accuracy"]), 4),
        "f1": {c: round(float(v["f1"]), 4) for c, v in report["per_class"].items()},
        "n": int(report["n"]),
    }


def decide(
    candidate: dict[str, Any],
    active: dict[str, Any] | None,
    policy: GatePolicy | None = None,
) -> Decision:
    """Apply the gate to two classification reports (``lifecycle.metrics`` format) computed
    on the same validation set; ``active`` is None when there is no model to beat."""
    policy = policy or GatePolicy()
    cand = _brief(candidate)
    pol = asdict(policy)
    if cand["n"] == 0:
        return Decision(
            False, ["the validation set is empty: nothing to judge on"], cand, None, pol
        )
    if active is None:
        return Decision(True, ["no active model to compare with"], cand, None, pol)
    act = _brief(active)
    reasons: list[str] = []
    promote = True
    gain = cand["balanced_accuracy"] - act["balanced_accuracy"]
    deltas = {"balanced_accuracy": round(gain, 4)}
    if gain + 1e-9 < policy.min_gain:
        promote = False
        reasons.append(
            f"balanced accuracy {cand['balanced_accuracy']:.3f} vs {act['balanced_accuracy']:.3f}"
            f" (gain {gain:+.3f} < required {policy.min_gain:+.3f})"
        )
    else:
        reasons.append(
            f"balanced accuracy {cand['balanced_accuracy']:.3f} vs {act['balanced_accuracy']:.3f}"
            f" (gain {gain:+.3f} >= {policy.min_gain:+.3f})"
        )
    worst: tuple[float, str] | None = None
    for cls, f1 in cand["f1"].items():
        if cls not in act["f1"]:
            continue
        drop = act["f1"][cls] - f1
        deltas[f"f1_{cls}"] = round(-drop, 4)
        if worst is None or drop > worst[0]:
            worst = (drop, cls)
        if drop > policy.max_f1_drop + 1e-9:
            promote = False
            reasons.append(
                f"F1 of {cls} drops {act['f1'][cls]:.3f} -> {f1:.3f}"
                f" ({drop:.3f} > allowed {policy.max_f1_drop:.3f})"
            )
    if promote and worst is not None:
        reasons.append(f"largest F1 drop {max(worst[0], 0.0):.3f} ({worst[1]}) within limits")
    return Decision(promote, reasons, cand, act, pol, deltas)


def collection_evidence(
    y: list[int],
    candidate_pred: list[int],
    active_pred: list[int],
    collections: list[str],
    classes: tuple[str, ...],
) -> dict[str, Any]:
    """Both models on the curator labels the active model never saw: the candidate by its
    within-collection out-of-fold predictions
    (:func:`artclf_core.lifecycle.curator_labels.collection_cv`:
    never an image it trained on), the active model as it is. Pooled and per collection."""
    from artclf_core.lifecycle.metrics import classification_report

    def ba(idx: list[int], pred: list[int]) -> float:
        return classification_report([y[i] for i in idx], [pred[i] for i in idx], classes)[
            "balanced_accuracy"
        ]

    every = list(range(len(y)))
    out: dict[str, Any] = {
        "n": len(y),
        "candidate_balanced_accuracy": round(ba(every, candidate_pred), 4) if y else None,
        "active_balanced_accuracy": round(ba(every, active_pred), 4) if y else None,
        "per_collection": {},
    }
    for coll in sorted(set(collections)):
        idx = [i for i in every if collections[i] == coll]
        out["per_collection"][coll] = {
            "n": len(idx),
            "candidate": round(ba(idx, candidate_pred), 4),
            "active": round(ba(idx, active_pred), 4),
        }
    return out


def with_collections(
    held_out: Decision | None, evidence: dict[str, Any] | None, policy: GatePolicy
) -> Decision:
    """The gate on both kinds of evidence: held-out source families (``held_out``, the
    decision of :func:`decide`, or None when no family was unseen by both models) and the
    curator collections (``evidence``, :func:`collection_evidence`, or None without new
    curator labels).

    Promote only if neither side gets worse by more than ``min_gain`` in balanced accuracy,
    no class's F1 on the held-out families drops by more than ``max_f1_drop``, and at least
    one side gains ``min_gain``. Curator labels thus reach production when they make the
    model better on their own collection without making it worse elsewhere; a candidate
    that wins only on images it trained on has no evidence on either side and is refused.
    """
    if evidence is None or not evidence["n"]:
        return (
            held_out
            if held_out is not None
            else Decision(
                False,
                [
                    "no held-out family and no new curator label to judge on: nothing says the "
                    "candidate is better"
                ],
                {},
                None,
                asdict(policy),
            )
        )
    gain_c = evidence["candidate_balanced_accuracy"] - evidence["active_balanced_accuracy"]
    reasons = [
        f"curator collections ({evidence['n']} labels the active model never saw, candidate "
        f"out of fold): balanced accuracy {evidence['candidate_balanced_accuracy']:.3f} vs "
        f"{evidence['active_balanced_accuracy']:.3f} (gain {gain_c:+.3f})"
    ]
    wins = gain_c + 1e-9 >= policy.min_gain
    loses = gain_c < -policy.min_gain - 1e-9
    f1_bad = False
    deltas = {"collections_balanced_accuracy": round(gain_c, 4)}
    if held_out is not None and held_out.active is not None:
        gain_h = held_out.deltas.get("balanced_accuracy", 0.0)
        deltas.update(held_out.deltas)
        reasons = [f"held-out families: {r}" for r in held_out.reasons] + reasons
        wins = wins or gain_h + 1e-9 >= policy.min_gain
        loses = loses or gain_h < -policy.min_gain - 1e-9
        f1_bad = any(
            -v > policy.max_f1_drop + 1e-9 for k, v in held_out.deltas.items() if k[:3] == "f1_"
        )
    else:
        reasons.insert(0, "held-out families: none unseen by both models")
    promote = wins and not loses and not f1_bad
    if not wins:
        reasons.append(f"no side gains the required {policy.min_gain:+.3f}")
    if loses:
        reasons.append(f"a side loses more than {policy.min_gain:.3f}")
    return Decision(
        promote,
        reasons,
        held_out.candidate if held_out is not None else {},
        held_out.active if held_out is not None else None,
        asdict(policy),
        deltas,
        evidence,
    )


def unseen_by(samples: list[Any], trained_sources: set[str] | None) -> list[Any]:
    """The validation samples whose source *family* is not in ``trained_sources``.

    ``retrain`` passes the families either model trained on. The active model may have been
    trained on some of the candidate's validation sources (the shipped default saw all of
    ../shared), and the candidate's own split may hold out only part of a family (a class
    with a single source is split by sub-source); scored there, a model is flattered and the
    gate would compare a held-out figure with a training-set one. Both models are therefore
    judged on this subset only. ``None`` (no recorded split) keeps every sample.
    ``trained_sources`` may hold sources or families (a family is its own family).
    """
    from artclf_core.lifecycle.source_cv import source_family

    if trained_sources is None:
        return list(samples)
    families = {source_family(s) for s in trained_sources}
    return [s for s in samples if source_family(s.source) not in families]


def no_evidence(candidate: dict[str, Any], active_version: str, policy: GatePolicy) -> Decision:
    """Refusal when no validation image is unseen by the active model (see :func:`unseen_by`):
    without held-out evidence for both, the gate cannot say the candidate is better."""
    return Decision(
        False,
        [
            f"no validation image comes from a source family that neither {active_version} nor"
            " the candidate trained on: no held-out comparison is possible"
        ],
        _brief(candidate),
        None,
        asdict(policy),
    )
