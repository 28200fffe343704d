# Stage aggregate: the grid's runs into one table, the summary and the growth fit.


rule aggregate:
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
