# Geometry per run, then the grid-wide aggregate and figures.


rule measure_geometry:
    input:
        **get_inputs(S.GEOMETRY),
    output:
        **get_outputs(S.GEOMETRY),
    log:
        S.GEOMETRY.log,
    resources:
        **get_resources(S.GEOMETRY),
    params:
        values=get_params(S.GEOMETRY),
        code=get_code_digest(S.GEOMETRY),
    shell:
        get_shell(S.GEOMETRY)


rule aggregate_runs:
    input:
        **get_inputs(S.AGGREGATE),
    output:
        **get_outputs(S.AGGREGATE),
    log:
        S.AGGREGATE.log,
    resources:
        **get_resources(S.AGGREGATE),
    params:
        values=get_params(S.AGGREGATE),
        code=get_code_digest(S.AGGREGATE),
    shell:
        get_shell(S.AGGREGATE)


# Report: every figure PNG is one entry, filed under the section of the paper it reproduces
# (figure kind, from the stem pipeline/figures.py writes) and its dataset.
FIGURE_CATEGORIES = {
    "geometry": "Geometry of the representations (Section 5.2)",
    "iterations_to_fit": "Iterations to fit noisy labels (Section 5.3)",
    "gap_vs_accuracy": "Gap to the optimum vs generalisation",
    "collapse": "Neural collapse NC1-NC4 and accuracies",
    "training_curves": "Training curves",
}
FIGURE_PATTERN = "{kind,%s}_{dataset}.png" % "|".join(FIGURE_CATEGORIES)


rule draw_figures:
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


rule tabulate_claims:
    input:
        **get_inputs(S.CLAIMS),
    output:
        table=report(
            get_outputs(S.CLAIMS)["table"],
            caption="../report/claims.rst",
            category="Claims of the paper, judged",
        ),
        markdown_table=get_outputs(S.CLAIMS)["markdown_table"],
        verdicts=get_outputs(S.CLAIMS)["verdicts"],
    log:
        S.CLAIMS.log,
    resources:
        **get_resources(S.CLAIMS),
    params:
        values=get_params(S.CLAIMS),
        code=get_code_digest(S.CLAIMS),
    shell:
        get_shell(S.CLAIMS)
