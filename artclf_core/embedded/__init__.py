"""The embedded default stack: real PostgreSQL + pgvector and a real S3 server (SeaweedFS),
both from pip wheels, started and stopped by artclf itself on loopback."""
