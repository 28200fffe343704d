# Geometry per run, then the grid-wide aggregate and figures.


rule measure_geometry:
    input:
        **get_inputs(S.GEOMETRY),
    output:
        **get_outputs(S.GEOMETRY),
    log:
        S.GEOMETRY.log,
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
    params:
        values=get_params(S.AGGREGATE),
        code=get_code_digest(S.AGGREGATE),
    shell:
        get_shell(S.AGGREGATE)


rule draw_figures:
    input:
        **get_inputs(S.FIGURES),
    output:
        **get_outputs(S.FIGURES),
    log:
        S.FIGURES.log,
    params:
        values=get_params(S.FIGURES),
        code=get_code_digest(S.FIGURES),
    shell:
        get_shell(S.FIGURES)
