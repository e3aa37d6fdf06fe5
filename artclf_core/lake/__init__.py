"""The lake: S3 clients (boto3 for listings, copies and deletes; obstore for the hot GET and
PUT), object references, key rules and metadata.

May import: ``images`` and ``config``. Knows nothing of the catalogue or the pipeline.
"""
