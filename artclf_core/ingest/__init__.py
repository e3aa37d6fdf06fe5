"""An artwork's way from the landing zone to the catalogue, one module per stage of a batch
(claim, fetch, classify, dedupe, place, commit; quality checks beside them) and the
orchestrator that runs them (``ingestor``); the queue and the object events that feed it.

May import: ``catalogue``, ``lake``, ``model``, ``images`` and ``config``.
"""
