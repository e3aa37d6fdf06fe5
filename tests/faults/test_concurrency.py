"""Three ``artclf ingest`` processes on the same drop at the same moment: each object is
taken by exactly one of them, and together they settle the lake (tests/lake_invariants.py)
with nothing left for a later run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lake_invariants import assert_lake_settled, drop

N_OBJECTS = 300


@pytest.mark.slow
def test_three_concurrent_ingests_share_a_drop_without_doubles(clean, stack, tmp_path):
    settings = clean
    _, env = stack
    drop(settings, N_OBJECTS, seed=9000)
    cli = [sys.executable, "-m", "artclf_core.cli", "ingest", "--batch-size", "32", "--json"]
    procs = [
        subprocess.Popen(
            cli,
            env={**os.environ, **env, "ARTCLF_HOME": str(tmp_path / f"h{i}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    assert_lake_settled(settings, N_OBJECTS)
    taken = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    print("catalogued per process:", [t["catalogued"] for t in taken])
    assert sum(t["catalogued"] + t["duplicates"] + t["quarantined"] for t in taken) == N_OBJECTS
