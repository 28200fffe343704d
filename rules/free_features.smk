# Stage free_features: Section 5.1, free features optimised to the closed-form optimum
# (no encoder, no data).


rule free_features:
    input:
        **get_inputs(S.FREE_FEATURES),
    output:
        table=get_outputs(S.FREE_FEATURES)["table"],
        figures=report(
            get_outputs(S.FREE_FEATURES)["figures"],
            patterns=["{name}.png"],
            caption="../report/free_features.rst",
            category="Free features (Section 5.1)",
            labels={"figure": "{name}"},
        ),
    log:
        S.FREE_FEATURES.log,
    # One ~45 s job beside a hundred short ones: start it first, so it never runs alone at the
    # end with a core idle.
    priority: 50
    resources:
        **get_resources(S.FREE_FEATURES),
    params:
        values=get_params(S.FREE_FEATURES),
        code=get_code_digest(S.FREE_FEATURES),
    shell:
        get_shell(S.FREE_FEATURES)
