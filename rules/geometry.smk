# Stage geometry: one job per run, from its embeddings, head and training log.


rule geometry:
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
