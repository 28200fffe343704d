"""supcon-geometry: a reproducible pipeline for Graf et al., *Dissecting Supervised
Contrastive Learning* (ICML 2021).

Each stage is a plain function in its own module (noise, train, embed, geometry, aggregate,
figures) with a thin CLI (``python -m pipeline <stage>``); pipeline.stages defines, once,
the files, params keys and command of every stage for both Snakemake and DVC.
"""
