"""Pure maths: losses, closed forms, geometry and collapse measures, models, optimisers.

Imports numpy, scipy and torch only; no file, params or other layer (tests/test_layers.py).
"""
