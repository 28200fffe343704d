# Stage train: one job per run (dataset, model, augmentation, noise fraction, seed).
# It declares gpu=1 (pipeline/infra/job_resources.py), as embed does, so `--resources gpu=N`
# bounds the jobs running at once: N counts device slots (GPUs x
# PIPELINE_SLOTS_PER_DEVICE, pipeline/infra/devices.py).


rule train:
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
