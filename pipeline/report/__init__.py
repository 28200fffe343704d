"""Presentation: what the pipeline shows a reader. The figures' drawing (plotting, the
paper's panels, the sweeps' figures) and the rendered results text (docs/results.md, the
README's block, the claims in words).

Imports maths and infra; the stages (figures, free_features) and the CLI call it; nothing in
maths or infra calls it (tests/test_layers.py).
"""
