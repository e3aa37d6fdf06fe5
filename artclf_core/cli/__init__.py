"""The ``artclf`` command: ``main`` parses and dispatches; one module per group of commands.

An entry point: may import every package below it.
"""
