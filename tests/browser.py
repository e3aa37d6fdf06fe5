"""Debian's chromium driven by Playwright, as the tests use it (never Playwright's own
browser download, which does not work here: ``executable_path`` names the system binary)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import pytest

#: Without the background-networking flags chromium keeps dialling Google's hosts, which
#: this machine's closed network refuses.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    return path


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield b
        finally:
            b.close()
