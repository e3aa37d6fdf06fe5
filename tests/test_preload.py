"""The task-start preload: which processes do it, and that it is wired into Airflow."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from artclf_airflow import preload  # noqa: E402


def test_only_processes_that_fork_tasks_preload():
    assert preload.forks_tasks(["airflow", "scheduler"])
    assert preload.forks_tasks(["airflow", "scheduler", "--skip-serve-logs"])
    assert preload.forks_tasks(["airflow", "celery", "worker", "-q", "default"])
    for argv in (
        ["airflow", "api-server"],
        ["airflow", "dag-processor"],
        ["airflow", "triggerer"],
        ["airflow", "celery", "flower"],
        ["airflow", "tasks", "test", "scheduler"],
        ["python"],
    ):
        assert not preload.forks_tasks(argv), argv


def test_it_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["airflow", "scheduler"])
    monkeypatch.setenv("ARTCLF_AIRFLOW_PRELOAD", "0")
    called = []
    monkeypatch.setattr(preload, "preload", lambda: called.append(1) or 0.0)
    preload.maybe_preload()
    assert not called
    monkeypatch.setenv("ARTCLF_AIRFLOW_PRELOAD", "1")
    preload.maybe_preload()
    assert called == [1]


def test_the_compose_image_and_the_embedded_stack_install_the_hook(tmp_path):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "airflow_local_settings.py /opt/airflow/config/airflow_local_settings.py" in dockerfile
    from artclf_core.embedded.airflow import EmbeddedAirflow

    instance = EmbeddedAirflow(tmp_path)
    instance._write_local_settings()
    text = (instance.dir / "config" / "airflow_local_settings.py").read_text()
    assert "maybe_preload()" in text
