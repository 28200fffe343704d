"""Stage ``claims``: the paper's claims, each with the measured numbers, an interval and a
verdict computed from them (docs/paper.md says what each claim is).

(i) free features reach the closed-form optimum and the simplex (Section 5.1);
(ii) at noise 0 the learned representations approach the simplex, per loss: class-mean
    angles (NC2), within-class collapse (the mean cosine of a sample to its class mean),
    NC1, and for the CE models NC3 and NC4;
(iii) closer to the optimum <-> better generalisation: Spearman's rho of the final gap to the
    optimum (bound, for CE) against test accuracy over all runs of a loss;
(iv) supcon's iterations-to-fit grow superlinearly in the noise fraction, CE's about
    linearly: the censored growth exponent and its bootstrap interval (growth.json).
    Multi-view supcon (supcon_mv) minimises the same loss over views, so it is held to
    supcon's criterion.

Verdicts: "replicates" when the interval lies wholly on the claim's side of its criterion,
"does not" when wholly on the other side, "inconclusive" otherwise; the criteria's
tolerances are the ``claims`` section of params.yaml, never typed here. Intervals are 95%
percentile bootstraps (pipeline.maths.statistics): over seeds for (ii), over runs for (iii).
Writes a CSV (one row per claim and group), the same as Markdown (registered in the
Snakemake report) and a JSON of the verdicts (DVC metrics).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.infra.io import InputError, atomic_path, read_parquet, write_json
from pipeline.maths import statistics

log = logging.getLogger(__name__)

COLUMNS = ("claim", "dataset", "augmentation", "model", "measure", "value", "ci_low",
           "ci_high", "criterion", "verdict")
CE_MODELS = ("ce", "ce_fixed")
SUPCON_MODELS = ("supcon", "supcon_mv")  # claim (iv): superlinear growth expected


def verdict(ci, threshold: float, claim_above: bool) -> str:
    """From an interval: the claim holds when the interval lies above (``claim_above``) or
    below ``threshold``; "inconclusive" when it straddles it or there is none."""
    side = statistics.verdict_above(ci, threshold)
    if side == "inconclusive":
        return side
    return "replicates" if (side == "yes") == claim_above else "does not"


def mean_ci(values, resamples: int = statistics.RESAMPLES, seed: int = statistics.SEED):
    """(mean, 95% percentile bootstrap interval of the mean) over ``values`` (the seeds)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), (float(lo), float(hi))


def _row(claim, dataset, augmentation, model, measure, value, ci, criterion, result) -> dict:
    return dict(zip(COLUMNS, (claim, dataset, augmentation, model, measure, value,
                              None if ci is None else ci[0], None if ci is None else ci[1],
                              criterion, result), strict=True))


def free_feature_claims(free: pd.DataFrame, tol: dict) -> list[dict]:
    """(i): per loss (and temperature), the largest final relative gap and the largest
    |cos + 1/(K-1)| over the full-batch runs (deterministic: no interval)."""
    rows = []
    grid = free[(free.experiment == "grid") & free.full_batch]
    last = grid.loc[grid.groupby(["loss_name", "num_classes", "dim", "temperature"],
                                 dropna=False)["iteration"].idxmax()]
    for (loss, tau), group in last.groupby(["loss_name", "temperature"], dropna=False):
        name = loss if pd.isna(tau) else f"{loss} (tau = {tau:g})"
        gap = float(group["relative_gap"].abs().max())
        dev = float(group["class_mean_cosine_deviation"].max())
        rows.append(_row("i", "free features", "—", name, "max |relative gap|", gap, None,
                         f"< {tol['free_relative_gap']:g}",
                         "replicates" if gap < tol["free_relative_gap"] else "does not"))
        rows.append(_row("i", "free features", "—", name, "max |cos + 1/(K-1)|", dev, None,
                         f"< {tol['free_cosine_deviation']:g}",
                         "replicates" if dev < tol["free_cosine_deviation"] else "does not"))
    return rows


def simplex_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """(ii): at the grid's lowest noise fraction, per dataset, augmentation and model."""
    rows = []
    at = runs[runs.noise_fraction == runs.noise_fraction.min()]
    for (dataset, augmentation, model), group in at.groupby(
            ["dataset", "augmentation", "model"], sort=False):
        measures = [
            ("class means: mean |cos + 1/(K-1)| (NC2)", "nc2_simplex_angle_deviation",
             tol["simplex_cosine_deviation"], False),
            ("sample-to-class-mean cosine", "sample_cosine_mean", tol["collapse_cosine"], True),
            ("NC1 tr(Sw Sb+)/K", "nc1", tol["nc1"], False),
        ]
        if model in CE_MODELS:
            measures += [
                ("NC3 ||W/|W| - M/|M|||", "nc3_self_duality", tol["self_duality"], False),
                ("NC4 head = nearest class mean", "nc4_head_ncm_agreement",
                 tol["ncm_agreement"], True),
            ]
        for label, column, threshold, above in measures:
            value, ci = mean_ci(group[column]) if column in group else (None, None)
            sign = ">" if above else "<"
            rows.append(_row("ii", dataset, augmentation, model, label, value, ci,
                             f"{sign} {threshold:g}", verdict(ci, threshold, above)))
    return rows


def generalisation_claims(runs: pd.DataFrame) -> list[dict]:
    """(iii): Spearman's rho of the final gap against test accuracy, per loss."""
    rows = []
    for (dataset, augmentation, model), group in runs.groupby(
            ["dataset", "augmentation", "model"], sort=False):
        gap = group["final_loss_gap"].to_numpy(np.float64)
        accuracy = group["test_accuracy_class_mean"].to_numpy(np.float64)
        keep = np.isfinite(gap) & np.isfinite(accuracy)
        rho, ci = (statistics.spearman_ci(gap[keep], accuracy[keep]) if keep.sum() >= 3
                   else (None, None))
        rows.append(_row("iii", dataset, augmentation, model,
                         "Spearman rho(final gap, test accuracy)", rho, ci, "< 0",
                         verdict(ci, 0.0, claim_above=False)))
    return rows


def growth_claims(growth: dict) -> list[dict]:
    """(iv): supcon (single- and multi-view) superlinear (a > 1); the CE models about linear
    (1 inside the interval)."""
    rows = []
    for dataset, by_aug in growth.items():
        for augmentation, by_model in by_aug.items():
            for model, fit in by_model.items():
                ci = None if fit["exponent_ci95"] is None else tuple(fit["exponent_ci95"])
                if model in SUPCON_MODELS:
                    criterion, result = "> 1", verdict(ci, 1.0, claim_above=True)
                else:
                    criterion = "interval contains 1"
                    result = ("inconclusive" if ci is None else
                              "replicates" if ci[0] <= 1.0 <= ci[1] else "does not")
                rows.append(_row("iv", dataset, augmentation, model,
                                 f"growth exponent a ({fit['runs_not_fit']} of "
                                 f"{fit['runs_used']} runs never fit)",
                                 fit["exponent"], ci, criterion, result))
    return rows


def markdown(table: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "—"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    def cell(text) -> str:
        return str(text).replace("|", "\\|")  # a measure like |cos| must not split the row

    lines = ["| claim | data | model | measure | value | 95% interval | criterion | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        data = r.dataset if r.augmentation == "—" else f"{r.dataset}, {r.augmentation}"
        interval = "—" if pd.isna(r.ci_low) else f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
        lines.append(f"| {r.claim} | {data} | {r.model} | {cell(r.measure)} | {fmt(r.value)} | "
                     f"{interval} | {r.criterion} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"


def tabulate_claims(params: dict, *, runs: Path, growth: Path, free_features: Path,
                    table: Path, markdown_table: Path, verdicts: Path) -> pd.DataFrame:
    """Write the claims table (CSV and Markdown) and the verdicts (JSON); return the table."""
    tol = params["claims"]
    run_table = read_parquet(runs).to_pandas()
    try:
        fits = json.loads(Path(growth).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{growth}: unreadable growth fits ({e})") from e
    fits.pop("numerics", None)
    rows = (free_feature_claims(pq.read_table(free_features).to_pandas(), tol)
            + simplex_claims(run_table, tol) + generalisation_claims(run_table)
            + growth_claims(fits))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(table) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", na_rep="", lineterminator="\n")
    with atomic_path(markdown_table) as tmp:
        tmp.write_text(markdown(frame))
    summary: dict = {}
    for r in frame.itertuples():
        key = f"{r.claim}/{r.dataset}/{r.augmentation}/{r.model}/{r.measure}"
        summary[key] = {"verdict": r.verdict, "value": None if pd.isna(r.value) else r.value}
    write_json(summary, verdicts, sort_keys=False)
    log.info("%d claim rows: %s", len(frame), frame["verdict"].value_counts().to_dict())
    return frame
