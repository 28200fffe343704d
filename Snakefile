"""supcon-geometry: noisy labels -> training -> embeddings -> geometry -> aggregate -> figures.

Run from the repository root: `snakemake --cores all` (add `--resources gpu=N` on a GPU
machine). Reads params.yaml, or the one file given with `--configfile`. Every job runs the
same command as the matching DVC stage (both come from pipeline/infra/stage_table.py), and after a
successful run the results are recorded into dvc.lock, so `dvc status` is clean.
"""

import sys


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/noisy_labels.smk"
include: "rules/train.smk"
include: "rules/embed.smk"
include: "rules/geometry.smk"
include: "rules/aggregate.smk"
include: "rules/figures.smk"
include: "rules/free_features.smk"
include: "rules/claims.smk"


rule all:
    default_target: True
    input:
        S.SUMMARY_CSV,
        S.FIGURES_DIR,
        S.FREE_FEATURES_TABLE,
        S.CLAIMS_CSV,


onsuccess:
    # Only params.yaml is what dvc.yaml describes; a run of another params file (a preset
    # via --configfile) is not recorded into dvc.lock. Nor is a --touch run: it ran no
    # command, so dvc.lock must not vouch for whatever outputs were there.
    if workflow.touch:
        print(
            "--touch ran no job: dvc.lock is left as it is (after `dvc repro`, "
            "`python -m pipeline sync-snakemake` brings Snakemake's records up to date)",
            file=sys.stderr,
        )
    elif PARAMS_FILE == S.PARAMS_FILE:
        shell("python -m pipeline record")
