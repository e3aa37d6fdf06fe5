"""Keeping native libraries' start-up chatter out of a user's terminal and the task logs.

TensorFlow and LiteRT print from C++ straight to file descriptor 2, below Python's
``sys.stderr`` and ``logging``, and some of it ignores ``TF_CPP_MIN_LOG_LEVEL`` (absl's lines
from before its logging is initialised, LiteRT's "Created TensorFlow Lite XNNPACK delegate").
A user who runs ``artclf classify`` should read the answer, not three lines about oneDNN.

Two tools, both dropping only known INFO noise (:data:`NOISE`) and passing everything else
through, warnings and errors included:

* :func:`native_noise_dropped`: around one native call (the interpreter's creation);
* :func:`filter_stderr`: for a whole command (the CLI installs it first thing): fd 2
  becomes a pipe that a thread reads line by line. ``ARTCLF_NATIVE_LOGS=1`` turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

#: Native INFO lines with no use to a user: absl INFO lines (``I0000 00:00:...``), absl's
#: notice about them, LiteRT's delegate notice.
NOISE = re.compile(
    r"^(I\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)\s*$"
)


def is_noise(line: str) -> bool:
    return bool(NOISE.match(line))


@contextlib.contextmanager
def native_noise_dropped() -> Iterator[None]:
    """Run native code with fd 2 captured; afterwards every captured line that is not
    noise is written to the real stderr, so nothing else is lost."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept = [x for x in text.splitlines(keepends=True) if not is_noise(x)]
            if kept:
                os.write(2, "".join(kept).encode())


def filter_stderr() -> None:
    """Route fd 2 through a pipe whose reader drops :data:`NOISE` lines (module docstring).
    Idempotent; flushed and joined at exit."""
    if os.environ.get("ARTCLF_NATIVE_LOGS") == "1" or getattr(filter_stderr, "done", False):
        return
    try:
        real = os.dup(2)
    except OSError:
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if not is_noise(raw.decode(errors="replace")):
                    os.write(real, raw)

    thread = threading.Thread(target=pump, name="artclf-stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the reader sees EOF
        thread.join(timeout=5)

    atexit.register(drain)
    filter_stderr.done = True  # type: ignore[attr-defined]
