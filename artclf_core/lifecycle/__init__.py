"""The model's lifecycle: data sets and splits, training and the ridge head, source-grouped
evaluation and the k-shot curve, curator labels, the promotion gate, the nightly retrain
and re-embedding the catalogue with a new version.

May import: ``catalogue``, ``lake``, ``model``, ``images`` and ``config``; never ``ingest``.
"""
