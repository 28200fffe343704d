# Stage figures: every figure of the grid, each PNG one entry of the Snakemake report.

# Report: every figure PNG is one entry, filed under the section of the paper it reproduces
# (figure kind, from the stem pipeline/stages/figures.py writes) and its dataset.
FIGURE_CATEGORIES = {
    "geometry": "Geometry of the representations (Section 5.2)",
    "iterations_to_fit": "Iterations to fit noisy labels (Section 5.3)",
    "gap_vs_accuracy": "Gap to the optimum vs generalisation",
    "collapse": "Neural collapse NC1-NC4 and accuracies",
    "training_curves": "Training curves",
    # drawn only when the grid sweeps that setting axis (pipeline/report/sweep_plots.py)
    "temperature": "Temperature sweep (beyond the paper)",
    "batch_size": "Batch-size sweep (beyond the paper)",
    "imbalance": "Class-imbalance sweep (beyond the paper)",
}
FIGURE_PATTERN = "{kind,%s}_{dataset}.png" % "|".join(FIGURE_CATEGORIES)


rule figures:
    input:
        **get_inputs(S.FIGURES),
    output:
        figures=report(
            get_outputs(S.FIGURES)["figures"],
            patterns=[FIGURE_PATTERN],
            caption="../report/figure.rst",
            category=lambda wildcards: FIGURE_CATEGORIES[wildcards.kind],
            subcategory="{dataset}",
            labels={"figure": "{kind}", "dataset": "{dataset}"},
        ),
    log:
        S.FIGURES.log,
    resources:
        **get_resources(S.FIGURES),
    params:
        values=get_params(S.FIGURES),
        code=get_code_digest(S.FIGURES),
    shell:
        get_shell(S.FIGURES)
