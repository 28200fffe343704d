"""One module per pipeline stage, named exactly as the stage (its CLI subcommand, Snakemake
rule, DVC stage, log folder and test file). Each holds one plain function the CLI calls.
"""
