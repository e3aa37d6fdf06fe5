"""The ground: what a picture's bytes are, with no I/O. Decode and validate, fingerprints
(SHA-256, pHash, dHash), the model's input pixels, thumbnails.

May import: ``artclf_core`` (constants) and ``config``. Everything imports it.
"""
