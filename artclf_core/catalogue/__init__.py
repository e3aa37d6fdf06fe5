"""The catalogue in PostgreSQL + pgvector: connections and migrations (``db``), the ingest
log, the artworks and their de-duplication lookups, the model registry, the browsing and
similarity queries, ask-by-image and the embedding atlas.

May import: ``lake``, ``model``, ``images`` and ``config``.
"""
