"""What every ``artclf`` command shares: its settings and its exit codes."""

from __future__ import annotations

from artclf_core.config import Settings

#: Exit codes (README "Exit codes"): 0 done, 1 done but some objects failed or were
#: rejected (``ingest --strict``, ``classify``), 2 refused (bad input, a check that failed,
#: a lock that stayed taken), 3 a service was unreachable, 128+N stopped by signal N
#: (130: Ctrl-C). Module-level so every command uses the same numbers.
EXIT_PARTIAL = 1
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3


def settings() -> Settings:
    """The product's settings from the environment (``ARTCLF_*``; README "Configuration")."""
    return Settings.from_env()
