# Stage noisy_labels: one label file per (dataset, noise fraction, seed).


rule noisy_labels:
    input:
        **get_inputs(S.NOISY_LABELS),
    output:
        **get_outputs(S.NOISY_LABELS),
    log:
        S.NOISY_LABELS.log,
    resources:
        **get_resources(S.NOISY_LABELS),
    params:
        values=get_params(S.NOISY_LABELS),
        code=get_code_digest(S.NOISY_LABELS),
    shell:
        get_shell(S.NOISY_LABELS)
