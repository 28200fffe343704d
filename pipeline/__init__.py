"""supcon-geometry: a reproducible pipeline for Graf et al., *Dissecting Supervised
Contrastive Learning* (ICML 2021).

Each stage is a plain function in its own module (noise, train, embed, geometry, aggregate,
figures) with a thin CLI (``python -m pipeline <stage>``); pipeline.infra.stage_table defines, once,
the files, params keys and command of every stage for both Snakemake and DVC.
"""

# Before anything imports numpy or torch: fix the kernels they choose, so every stage gives
# the same bytes on any x86-64 CPU (pipeline/infra/numerics.py; PIPELINE_NUMERICS=native opts out).
from pipeline.infra import numerics as _numerics

_numerics.configure()
