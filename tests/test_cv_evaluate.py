"""``artclf evaluate --cv sources`` on a made-up folder (no ../shared): every family is held out
once and the shipped model is scored only on the families it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_model import _draw

from artclf_core import CLASSES
from artclf_core.cli import main
from artclf_core.lifecycle.cv_evaluate import evaluate_by_sources, format_by_sources

SOURCES = ("alpha_one", "alpha_two", "beta", "gamma")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("families")
    for label in CLASSES:
        (root / label).mkdir()
        for j, source in enumerate(SOURCES):
            for i in range(2):
                _draw(label, 10 * j + i).save(root / label / f"{source}__{i}.jpg")
    return root


def test_every_family_held_out_once_and_model_on_unseen_families(folder: Path) -> None:
    result = evaluate_by_sources(folder, size=64)
    rep = result["recipe"]
    assert result["groups"] == 3  # alpha_one and alpha_two are one family
    assert rep["n"] == len(CLASSES) * len(SOURCES) * 2
    assert all(r["trained_on"] is False for r in rep["by_source"]["sources"].values())
    assert {"temperature", "ece_before", "ece_after", "review"} <= set(rep["calibration"])
    assert 0.0 <= rep["label_precision_at_5"] <= 1.0
    # The shipped model never trained on these made-up families: all of them count.
    assert result["model_unseen_images"] == rep["n"]
    assert result["model"]["n"] == rep["n"] == result["recipe_on_model_unseen"]["n"]
    text = format_by_sources(result)
    assert "leave-one-source-family-out (3 groups)" in text and "never trained on" in text


def test_cli_evaluate_cv_sources_json(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main.main(["evaluate", "--data", str(folder), "--cv", "sources", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"] == 3 and out["recipe"]["recipe"]["size"] == 160
