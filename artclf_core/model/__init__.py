"""The shared Keras model: architecture and backbones, the saved file and its metadata,
the inference runtime (LiteRT), calibration and the figures drawn from a model's metrics.

May import: ``images`` and ``config``. Loads TensorFlow only in ``artmodel``, ``texture``
and ``backbones``; ``archs`` names the architectures for parsers that must not load it.
"""
