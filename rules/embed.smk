# Stage embed: one job per run; gpu=1 like train (rules/train.smk).


rule embed:
    input:
        **get_inputs(S.EMBED),
    output:
        **get_outputs(S.EMBED),
    log:
        S.EMBED.log,
    resources:
        **get_resources(S.EMBED),
    params:
        values=get_params(S.EMBED),
        code=get_code_digest(S.EMBED),
    shell:
        get_shell(S.EMBED)
