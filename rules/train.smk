# Training and embedding extraction: one job per (dataset, model, noise fraction, seed).
# Both declare gpu=1 so `--resources gpu=N` bounds the jobs sharing N GPUs.


rule train_model:
    input:
        **get_inputs(S.TRAIN),
    output:
        **get_outputs(S.TRAIN),
    log:
        S.TRAIN.log,
    params:
        values=get_params(S.TRAIN),
        code=get_code_digest(S.TRAIN),
    resources:
        gpu=1,
    shell:
        get_shell(S.TRAIN)


rule extract_embeddings:
    input:
        **get_inputs(S.EMBED),
    output:
        **get_outputs(S.EMBED),
    log:
        S.EMBED.log,
    params:
        values=get_params(S.EMBED),
        code=get_code_digest(S.EMBED),
    resources:
        gpu=1,
    shell:
        get_shell(S.EMBED)
