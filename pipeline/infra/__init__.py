"""Infrastructure: params and schema, I/O, numerics, devices, the stage table, provenance,
plotting, the two front-ends, lineage, audit and results.

Imports maths, never a stage (tests/test_layers.py).
"""
