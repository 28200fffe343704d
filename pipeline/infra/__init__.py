"""Infrastructure: params and schema, I/O, numerics, devices, the stage table, provenance,
the two front-ends, lineage and audit.

Imports maths, never the presentation layer (pipeline/report) or a stage
(tests/test_layers.py).
"""
