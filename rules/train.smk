# Training and embedding extraction: one job per (dataset, model, noise fraction, seed).
# Both declare gpu=1 (pipeline/job_resources.py), so `--resources gpu=N` bounds the jobs
# running at once: N counts device slots (GPUs x PIPELINE_SLOTS_PER_DEVICE, pipeline/devices.py).


rule train_model:
    input:
        **get_inputs(S.TRAIN),
    output:
        **get_outputs(S.TRAIN),
    log:
        S.TRAIN.log,
    resources:
        **get_resources(S.TRAIN),
    params:
        values=get_params(S.TRAIN),
        code=get_code_digest(S.TRAIN),
    shell:
        get_shell(S.TRAIN)


rule extract_embeddings:
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
