"""Which runs exist: the `grid:` section of params.yaml, as jobs of one matrix of wildcards.

The grid's axes (datasets, imbalance ratios, models, augmentations, temperatures, batch sizes,
training lengths, noise fractions, seeds) list every value a run may use, in the order results
are shown.
Without ``run_sets`` the runs are the axes' full product; with it, the union of its named
sub-grids' products, each run once. A module of its
own, imported by the stage table (pipeline/infra/stage_table.py, whose ``grid_jobs`` is the one
enumeration the front-ends, aggregate, figures and lineage call) and by the params checks
(pipeline/infra/config.py): a stage whose code reaches either depends on these few lines only, not
on the whole stage table.
"""

from __future__ import annotations

import itertools

# wildcard -> the params.yaml list that enumerates it
GRID_AXES: dict[str, str] = {
    "dataset": "grid.datasets",
    "imbalance_ratio": "grid.imbalance_ratios",  # rho = N_max / N_min of the training split
    "model": "grid.models",
    "augmentation": "grid.augmentations",
    "temperature": "grid.temperatures",  # tau of supcon (and of the supcon tracked on ce)
    "batch_size": "grid.batch_sizes",  # b, samples (images) per SGD step
    "iterations": "grid.iterations",  # T, SGD steps of the run (its schedule spans them)
    "noise_fraction": "grid.noise_fractions",
    "seed": "grid.seeds",
}
# Key of `grid:` naming its sub-grids; without it the grid is the one product of its axes.
RUN_SETS = "run_sets"


def grid_axis(wildcard: str) -> str:
    """The `grid:` key listing a wildcard's values, e.g. "noise" -> "noise_fractions"."""
    return GRID_AXES[wildcard].split(".", 1)[1]


def sweeps_axis(grid: dict, wildcard: str) -> bool:
    """Whether ``grid`` sweeps the setting axis ``wildcard``: two values or more (what draws
    its sweep figure, pipeline/report/sweep_plots.py)."""
    return len(grid[grid_axis(wildcard)]) >= 2


def run_sets(grid: dict) -> dict[str, dict[str, list]]:
    """The grid's sub-grids, each as wildcard -> values (an axis a sub-grid leaves out takes
    all of the grid's values); a grid without ``run_sets`` is one product, named "grid"."""
    axes = {w: list(grid[grid_axis(w)]) for w in GRID_AXES}
    named = grid.get(RUN_SETS) or {"grid": {}}
    return {
        name: {w: list(sub.get(grid_axis(w), axes[w])) for w in GRID_AXES}
        for name, sub in named.items()
    }


def jobs(matrix: tuple[str, ...], grid: dict) -> list[dict[str, str]]:
    """Every combination of ``matrix``'s wildcards that some run of a validated ``grid`` has,
    as wildcard -> text: the union of the run sets' products, projected, each job once.

    The order is that of the product of the grid's axes (a single product: exactly
    ``itertools.product``), whatever the order or overlap of the run sets, so renaming or
    splitting a set moves no job. Values are rendered with ``str`` as DVC's templating does
    (``0.0`` -> "0.0"), from the axes' own spelling (a set's ``0`` is the axis's ``0.0``).
    """
    sets = list(run_sets(grid).values())
    found = []
    for combo in itertools.product(*(grid[grid_axis(w)] for w in matrix)):
        # a product's projection is the product of the projected axes: one test per set
        if any(all(v in s[w] for w, v in zip(matrix, combo, strict=True)) for s in sets):
            found.append(dict(zip(matrix, map(str, combo), strict=True)))
    return found


# The key under which an artifact records the grid it was made for: the runs table's metadata
# and growth.json (stage aggregate), checked by claims and figures with :func:`differences`.
RECORD_KEY = "grid"


def differences(found: dict | None, expected: dict) -> list[str]:
    """How a grid an artifact records differs from the one expected, as "grid.<key>: <found>,
    expected <expected>" per key (every key when nothing was recorded): the one spelling of
    the refusal when an input was made for another grid than the stage is asked to use."""
    if not isinstance(found, dict):
        return [f"grid: {found!r} recorded, expected {expected!r}"]
    return [f"grid.{key}: {found.get(key)!r}, expected {expected.get(key)!r}"
            for key in sorted(set(found) | set(expected)) if found.get(key) != expected.get(key)]
