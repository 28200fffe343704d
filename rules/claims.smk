# Stage claims: the paper's claims judged from the runs, for the report and DVC metrics.


rule claims:
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
