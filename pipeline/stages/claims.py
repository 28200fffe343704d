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

T, B and R are this project's extension hypotheses (issue 15), not the paper's: each sweeps
one axis of the setting with the other two held fixed, and is judged only for a (dataset,
augmentation, model, other two settings) group whose runs take at least two values of it, so
a grid of one setting (the paper's protocol) has no such rows. All at the grid's lowest
noise fraction; the setting column of their rows names the two settings held fixed, in
:func:`~pipeline.infra.runs.setting_name`'s spelling with the swept axis left out
("rho1-b256-T3000" for a sweep of tau; the claim id names the swept axis). The training
length T is a setting axis too, but no claim of its own: it is (ii)'s regime check.
(T) temperature, supcon family: per tau, whether the class means reach the simplex within
    the iterations given (NC2 deviation below ``simplex_cosine_deviation``), and Spearman's
    rho of tau against that deviation, claimed < 0: on the unit sphere the class angles move
    the loss only by terms of order exp(-K / (tau (K-1))), so at small tau the landscape is
    nearly flat in them (docs/theory.md §1, §6: free features at tau = 0.1 collapse but stay
    0.36-0.70 off the simplex, at tau = 0.5 within 1e-10).
(B) batch size, every model: per b, the NC2 deviation as in (T); Spearman's rho of b against
    final_supcon_gap, with no criterion ("none predicted", verdict "—"): the gap is measured
    from the optimum of its own b, which for balanced classes is the minimum at every b
    (docs/theory.md §2), so the theory gives it no direction in b; and, for the supcon
    family, Spearman's rho of b against the NC2 deviation, claimed < 0: single batches are
    minimised off the simplex and only the expectation over the sampler at it (§1), so
    smaller batches are noise-limited (§6: free features, tau = 0.5, end 2.5e-3-1.9e-2 off
    the simplex at b = 32, within 1e-10 full batch). A larger b also sees more samples in the
    same iterations, which pushes the same way: the row does not separate the two.
(R) imbalance ratio, every model: for the supcon family Spearman's rho of the ratio against
    the NC2 deviation, claimed > 0 (§7: under imbalance the collapsed simplex is not even a
    critical point of supcon, so the means leave it); for the CE model with a learned head
    (ce; ce_fixed's head is the fixed simplex) against the mean cosine of the minority head
    rows, claimed > 0 (minority collapse, Fang et al. 2021, §7); per ratio the minority minus
    majority test accuracy of the class-mean classifier, claimed < 0 above ratio 1 (ratio 1
    is the balanced reference: the two groups then differ only in which classes they hold;
    no criterion), and Spearman's rho of the ratio against that difference, claimed < 0 (the
    trend, free of the groups' intrinsic difference in difficulty).

Regimes (issue 22): each claim about trained networks needs its runs to have reached the
regime it is about, and the ``regime`` column says, measured, whether they did, before the
verdict. (ii), (iii), T, B and R need the terminal phase: every run of the group held its
fit (train accuracy >= geometry.fit_threshold on its own labels) for at least
``claims.regime.held_share`` of its iterations (``iterations_held_fit / final_iteration``,
the least over the runs); (ii) also needs the measure to have stopped improving with
training length: with runs of two or more lengths T in a group, Spearman's rho of T against
the measure must not lie wholly on the improving side (the value is then that of the
longest T), and with one length the trend is unmeasured. (iv) needs no run censored beyond
``claims.regime.max_censored_share``, fit times well above the evaluation grain
(``evaluation_interval`` / the smallest mean fit time over p > 0 below
``claims.regime.max_fit_rounding``) and the control the claim builds on (Zhang et al.
2017: fitting noise takes longer as the noise grows) visible: Spearman's rho of p against
the CE model's iterations-to-fit in the same group wholly above 0. A verdict "does not" or
"inconclusive" whose regime is not reached reads "not reached: <what>" instead; a
"replicates" stands (the effect shows before the regime the claim needs).

Verdicts: "replicates" when the interval lies wholly on the claim's side of its criterion
(for T, B and R: the stated hypothesis holds on this run), "does not" when wholly on the
other side, "inconclusive" otherwise; a row without a hypothesis (criterion "none
predicted") has the verdict "—". The criteria's tolerances are the ``claims`` section of
params.yaml, never typed here. Intervals are 95% percentile bootstraps
(pipeline.maths.statistics): over seeds for (ii) and the per-value rows of T, B and R, over
runs for (iii) and every Spearman rho. Writes a CSV (one row per claim and group), the same
as Markdown (registered in the Snakemake report) and verdicts.json, the DVC metrics: one short
verdict per row under a name that says which (:func:`headline`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.infra import inputs
from pipeline.infra.grid import RECORD_KEY as grid_record
from pipeline.infra.grid import differences as grid_differences
from pipeline.infra.io import InputError, atomic_path, read_metadata, read_parquet, write_json
from pipeline.infra.runs import SETTING, SETTING_SPELLING, setting_name
from pipeline.maths import statistics

log = logging.getLogger(__name__)

COLUMNS = ("claim", "dataset", "augmentation", "setting", "model", "measure", "key", "value",
           "ci_low", "ci_high", "criterion", "regime", "verdict")
NO_SETTING = "—"  # free features: no training run, so no setting of the grid
# The paper's claims compare models within one dataset, augmentation and setting.
BY_MODEL = ["dataset", "augmentation", *SETTING, "model"]
CE_MODELS = ("ce", "ce_fixed")
SUPCON_MODELS = ("supcon", "supcon_mv")  # claim (iv): superlinear growth expected
LEARNED_HEAD_MODELS = ("ce",)  # claim R: minority collapse of the head rows (ce_fixed's is fixed)
NC2 = "nc2_simplex_angle_deviation"
NC2_LABEL = "class means: mean |cos + 1/(K-1)| (NC2)"
NO_CRITERION = "none predicted"  # a measure reported without a hypothesis (claim B's gap) ...
NO_VERDICT = "—"  # ... and its verdict
NO_REGIME = "—"  # free features: no training run, so no regime to reach
NOT_REACHED = "not reached"  # the verdict's prefix when a row's regime is not reached
CONTROL_MODEL = "ce"  # claim (iv)'s control: plain cross-entropy (Zhang et al. 2017)
# How the rows of T, B and R name a value of their swept axis.
AXIS_NAMES = {"imbalance_ratio": "imbalance ratio", "temperature": "tau", "batch_size": "b",
              "iterations": "T"}
# (ii) asks whether a measure still moves with training length, so its groups pool the runs
# of every T of a setting (the value reported is that of the longest T, whose setting the
# row names); every other claim compares runs of one T.
LENGTH_AXIS = "iterations"


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


def _groups(runs: pd.DataFrame, pooled: tuple[str, ...] = ()):
    """(dataset, augmentation, setting name, model, runs) per group of :data:`BY_MODEL`, the
    ``pooled`` setting axes left out of the key: such a group is named by the setting of its
    longest training (:func:`_longest`)."""
    for key, group in runs.groupby([c for c in BY_MODEL if c not in pooled], sort=False):
        setting = setting_name(_longest(group).iloc[0][list(SETTING)].to_dict())
        yield key[0], key[1], setting, key[-1], group


def _row(claim, dataset, augmentation, setting, model, measure, value, ci, criterion,
         result, regime: Regime | None = None, *, key: str) -> dict:
    """One table row; ``key`` names the measure in verdicts.json (short, no spaces);
    ``regime`` None: a row about no training run (claim i)."""
    if regime is None:
        regime_text = NO_REGIME
    else:
        regime_text = regime.shown
        if not regime.reached and result in ("does not", "inconclusive"):
            result = f"{NOT_REACHED}: {regime.text}"
    return dict(zip(COLUMNS, (claim, dataset, augmentation, setting, model, measure, key, value,
                              None if ci is None else ci[0], None if ci is None else ci[1],
                              criterion, regime_text, result), strict=True))


# ------------------------------------------------------------------------------ regimes

@dataclass(frozen=True)
class Regime:
    """Whether a group of runs reached the regime a claim is about, and the measurement
    that says so (it reads after "reached: " or "not reached: "). A regime of several parts
    not reached keeps the parts that were in ``also``: the table shows both, so a reader
    sees every measurement, not only the one that failed."""

    reached: bool
    text: str
    also: tuple[str, ...] = ()  # (not reached only) the parts that were reached

    def __and__(self, other: Regime) -> Regime:
        parts = (self, other)
        if all(r.reached for r in parts):
            return Regime(True, "; ".join(r.text for r in parts))
        failed = [r.text for r in parts if not r.reached]
        met = [text for r in parts for text in ((r.text,) if r.reached else r.also)]
        return Regime(False, "; ".join(failed), tuple(met))

    @property
    def shown(self) -> str:
        """The table's regime cell: what was not reached first, then what was."""
        if self.reached:
            return f"reached: {self.text}"
        met = f"; reached: {'; '.join(self.also)}" if self.also else ""
        return f"not reached: {self.text}{met}"


def held_regime(group: pd.DataFrame, regime: dict) -> Regime:
    """The terminal phase: the least share of its iterations over which a run of the group
    held its fit, against ``regime["held_share"]``."""
    need = float(regime["held_share"])
    held, final = _column(group, "iterations_held_fit"), _column(group, "final_iteration")
    keep = np.isfinite(held) & np.isfinite(final) & (final > 0)
    if not keep.any():
        return Regime(False, "the runs record no iterations_held_fit")
    share = held[keep] / final[keep]
    least = int(np.argmin(share))
    text = (f"fit held for {share[least]:.2f} of T = {final[keep][least]:.0f} "
            f"(least of {keep.sum()} runs; needs >= {need:g})")
    return Regime(bool(share[least] >= need), text)


def length_regime(group: pd.DataFrame, column: str, claim_above: bool) -> Regime:
    """Has the measure stopped improving with training length T (the grid's ``iterations``,
    as :func:`_longest` reads it)? Improving: rising for a measure claimed above its
    criterion, else falling."""
    lengths = _column(group, LENGTH_AXIS)
    distinct = np.unique(lengths[np.isfinite(lengths)])
    if distinct.size < 2:
        shown = f"T = {distinct[0]:.0f} only" if distinct.size else "no T recorded"
        return Regime(False, f"training length not swept ({shown}): a measure still "
                             "improving with T cannot be told from a flat one")
    y = _column(group, column)
    keep = np.isfinite(lengths) & np.isfinite(y)
    rho, ci = (statistics.spearman_ci(lengths[keep], y[keep]) if keep.sum() >= 3
               else (None, None))
    span = f"T = {distinct[0]:.0f} to {distinct[-1]:.0f}"
    if ci is None:
        return Regime(False, f"trend with training length unmeasured ({span}, "
                             f"{keep.sum()} runs with the measure)")
    improving = ci[0] > 0 if claim_above else ci[1] < 0
    trend = f"Spearman rho(T, measure) {rho:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] over {span}"
    return Regime(not improving, ("still improving with T: " if improving
                                  else "flat in T: ") + trend)


def _longest(group: pd.DataFrame) -> pd.DataFrame:
    """The runs of the group's longest training, by the T they were given (the grid's
    ``iterations``, an identity column of every runs table)."""
    return group[group[LENGTH_AXIS] == group[LENGTH_AXIS].max()]


def growth_regime(group: pd.DataFrame, fit: dict, control: pd.DataFrame | None,
                  regime: dict) -> Regime:
    """(iv): censoring within ``max_censored_share``, the fit times' grain below
    ``max_fit_rounding``, and the control's fit time growing with p."""
    used, censored = int(fit["runs_used"]), int(fit["runs_not_fit"])
    share = censored / used if used else 1.0
    allowed = float(regime["max_censored_share"])
    parts = [Regime(used > 0 and share <= allowed,
                    f"{censored} of {used} runs censored (allowed share {allowed:g})")]
    noisy = group[group.noise_fraction > 0]
    fits = _column(noisy, "iterations_to_fit")
    means = [np.nanmean(f) for _, f in pd.Series(fits).groupby(noisy.noise_fraction.to_numpy())
             if np.isfinite(f).any()]
    grains = _column(group, "evaluation_interval")
    grain = np.nanmax(grains) if np.isfinite(grains).any() else np.nan
    limit = float(regime["max_fit_rounding"])
    if means and np.isfinite(grain):
        rounding = grain / min(means)
        parts.append(Regime(bool(rounding < limit),
                            f"evaluation grain {grain:.0f} = {rounding:.2f} of the smallest "
                            f"mean fit time {min(means):.0f} (needs < {limit:g})"))
    else:
        parts.append(Regime(False, "no fit time at p > 0 to compare the evaluation grain with"))
    parts.append(control_regime(control))
    result = parts[0]
    for part in parts[1:]:
        result = result & part
    return result


def control_regime(control: pd.DataFrame | None) -> Regime:
    """Zhang et al.'s control: Spearman's rho of p against the CE model's iterations-to-fit
    (a run that never fit counts as the slowest: its rank is last) wholly above 0."""
    if control is None or control.empty:
        return Regime(False, f"no {CONTROL_MODEL} runs in the group to show the control")
    p = control["noise_fraction"].to_numpy(np.float64)
    fit = _column(control, "iterations_to_fit")
    fit = np.where(np.isfinite(fit), fit, np.inf)  # censored: slower than any that fit
    rho, ci = (statistics.spearman_ci(p, fit) if p.size >= 3 and np.unique(p).size >= 2
               else (None, None))
    if ci is None:
        return Regime(False, f"{CONTROL_MODEL} control unmeasured (needs >= 3 runs over "
                             ">= 2 noise fractions)")
    text = (f"{CONTROL_MODEL} control rho(p, fit time) {rho:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            " (needs > 0)")
    return Regime(bool(ci[0] > 0), text)


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
        rows.append(_row("i", "free features", "—", NO_SETTING, name, "max |relative gap|", gap,
                         None,
                         f"< {tol['free_relative_gap']:g}",
                         "replicates" if gap < tol["free_relative_gap"] else "does not",
                         key="gap"))
        rows.append(_row("i", "free features", "—", NO_SETTING, name, "max |cos + 1/(K-1)|", dev,
                         None,
                         f"< {tol['free_cosine_deviation']:g}",
                         "replicates" if dev < tol["free_cosine_deviation"] else "does not",
                         key="simplex"))
    return rows


def simplex_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """(ii): at the grid's lowest noise fraction, per dataset, augmentation, setting and
    model; each measure at the group's longest training, its regime the held fit and the
    trend with training length."""
    rows = []
    at = runs[runs.noise_fraction == runs.noise_fraction.min()]
    for dataset, augmentation, setting, model, group in _groups(at, pooled=(LENGTH_AXIS,)):
        held, longest = held_regime(group, tol["regime"]), _longest(group)
        measures = [
            ("nc2", NC2_LABEL, NC2, tol["simplex_cosine_deviation"], False),
            ("collapse", "sample-to-class-mean cosine", "sample_cosine_mean",
             tol["collapse_cosine"], True),
            ("nc1", "NC1 tr(Sw Sb+)/K", "nc1", tol["nc1"], False),
        ]
        if model in CE_MODELS:
            measures += [
                ("nc3", "NC3 ||W/|W| - M/|M|||", "nc3_self_duality", tol["self_duality"],
                 False),
                ("nc4", "NC4 head = nearest class mean", "nc4_head_ncm_agreement",
                 tol["ncm_agreement"], True),
            ]
        for key, label, column, threshold, above in measures:
            value, ci = mean_ci(longest[column]) if column in group else (None, None)
            sign = ">" if above else "<"
            rows.append(_row("ii", dataset, augmentation, setting, model, label, value, ci,
                             f"{sign} {threshold:g}", verdict(ci, threshold, above),
                             held & length_regime(group, column, above), key=key))
    return rows


def generalisation_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """(iii): Spearman's rho of the final gap against test accuracy, per loss, over runs of
    two or more noise fractions (the claim relates runs that differ in how far they got; the
    seeds of one noise fraction alone, e.g. a length study's noise-0 runs, do not test it);
    its regime the held fit of every run of the group."""
    rows = []
    for dataset, augmentation, setting, model, group in _groups(runs):
        if group["noise_fraction"].nunique() < 2:
            log.info("(iii) %s/%s/%s/%s: one noise fraction, not judged",
                     dataset, augmentation, setting, model)
            continue
        gap = group["final_loss_gap"].to_numpy(np.float64)
        accuracy = group["test_accuracy_class_mean"].to_numpy(np.float64)
        keep = np.isfinite(gap) & np.isfinite(accuracy)
        rho, ci = (statistics.spearman_ci(gap[keep], accuracy[keep]) if keep.sum() >= 3
                   else (None, None))
        rows.append(_row("iii", dataset, augmentation, setting, model,
                         "Spearman rho(final gap, test accuracy)", rho, ci, "< 0",
                         verdict(ci, 0.0, claim_above=False),
                         held_regime(group, tol["regime"]), key="rho_gap_accuracy"))
    return rows


def growth_claims(growth: dict, runs: pd.DataFrame, tol: dict) -> list[dict]:
    """(iv): supcon (single- and multi-view) superlinear (a > 1); the CE models about linear
    (1 inside the interval); each with :func:`growth_regime` of its runs."""
    rows = []
    groups = {(d, a, s, m): g for d, a, s, m, g in _groups(runs)}
    for dataset, by_aug in growth.items():
        for augmentation, by_setting in by_aug.items():
            for setting, model, fit in ((s, m, f) for s, by_model in by_setting.items()
                                        for m, f in by_model.items()):
                if fit["runs_used"] == 0:  # e.g. a length study's noise-0 runs: no growth
                    log.info("(iv) %s/%s/%s/%s: no run at p > 0, no growth to judge",
                             dataset, augmentation, setting, model)
                    continue
                group = groups.get((dataset, augmentation, setting, model), runs.iloc[:0])
                regime = growth_regime(
                    group, fit, groups.get((dataset, augmentation, setting, CONTROL_MODEL)),
                    tol["regime"])
                ci = None if fit["exponent_ci95"] is None else tuple(fit["exponent_ci95"])
                if model in SUPCON_MODELS:
                    criterion, result = "> 1", verdict(ci, 1.0, claim_above=True)
                else:
                    criterion = "interval contains 1"
                    result = ("inconclusive" if ci is None else
                              "replicates" if ci[0] <= 1.0 <= ci[1] else "does not")
                rows.append(_row("iv", dataset, augmentation, setting, model,
                                 f"growth exponent a ({fit['runs_not_fit']} of "
                                 f"{fit['runs_used']} runs never fit)",
                                 fit["exponent"], ci, criterion, result, regime,
                                 key="growth"))
    return rows


# ------------------------------------------------------- extensions T, B, R (issue 15)

def _sweeps(runs: pd.DataFrame, axis: str):
    """((dataset, augmentation, fixed setting, model), runs) per group of the runs at the
    lowest noise fraction in which ``axis`` takes at least two values, the other two
    settings held fixed."""
    at = runs[runs.noise_fraction == runs.noise_fraction.min()]
    others = [a for a in SETTING if a != axis]
    for key, group in at.groupby(["dataset", "augmentation", *others, "model"], sort=False):
        if group[axis].nunique() >= 2:
            setting = setting_name(dict(zip(others, key[2:-1], strict=True)), left_out=(axis,))
            yield (key[0], key[1], setting, key[-1]), group


def _value_name(axis: str, value) -> str:
    number = f"{int(value)}" if axis == "batch_size" else f"{float(value):g}"
    return f"{AXIS_NAMES[axis]} = {number}"


def _column(group: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` as float64, all NaN where the runs table lacks it."""
    if column not in group:
        return np.full(len(group), np.nan)
    return group[column].to_numpy(np.float64)


def _spearman_row(claim, where, group, axis, y, measure, claim_above, regime, key) -> dict:
    """Spearman's rho of the swept ``axis`` against ``y`` (one value per run) over the runs,
    with its bootstrap interval; criterion > 0 (``claim_above``), < 0, or none (None)."""
    x = group[axis].to_numpy(np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    rho, ci = (statistics.spearman_ci(x[keep], y[keep])
               if keep.sum() >= 3 and np.unique(x[keep]).size >= 2 else (None, None))
    if claim_above is None:
        return _row(claim, *where, measure, rho, ci, NO_CRITERION, NO_VERDICT, regime, key=key)
    return _row(claim, *where, measure, rho, ci, "> 0" if claim_above else "< 0",
                verdict(ci, 0.0, claim_above), regime, key=key)


def _simplex_by_value(claim, where, group, axis, tol) -> list[dict]:
    """Per value of ``axis``: the NC2 deviation over seeds against the simplex tolerance
    (does this value reach the simplex within the iterations given?)."""
    threshold = tol["simplex_cosine_deviation"]
    rows = []
    for value, runs_at in group.groupby(axis, sort=True):
        mean, ci = mean_ci(_column(runs_at, NC2))
        rows.append(_row(claim, *where, f"{_value_name(axis, value)}: {NC2_LABEL}", mean, ci,
                         f"< {threshold:g}", verdict(ci, threshold, claim_above=False),
                         held_regime(runs_at, tol["regime"]),
                         key=f"{SETTING_SPELLING[axis](value)}_nc2"))
    return rows


def temperature_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """T: per tau, the simplex reached or not; Spearman(tau, NC2 deviation) < 0."""
    rows = []
    for where, group in _sweeps(runs, "temperature"):
        if where[-1] not in SUPCON_MODELS:
            continue  # CE does not use tau
        rows += _simplex_by_value("T", where, group, "temperature", tol)
        rows.append(_spearman_row("T", where, group, "temperature", _column(group, NC2),
                                  "Spearman rho(tau, NC2 mean |cos + 1/(K-1)|)",
                                  claim_above=False, regime=held_regime(group, tol["regime"]),
                                  key="rho_tau_nc2"))
    return rows


def batch_size_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """B: per b, the simplex reached or not; Spearman(b, final supcon gap) without a
    criterion; for the supcon family Spearman(b, NC2 deviation) < 0."""
    rows = []
    for where, group in _sweeps(runs, "batch_size"):
        held = held_regime(group, tol["regime"])
        rows += _simplex_by_value("B", where, group, "batch_size", tol)
        rows.append(_spearman_row("B", where, group, "batch_size",
                                  _column(group, "final_supcon_gap"),
                                  "Spearman rho(b, final supcon gap)", claim_above=None,
                                  regime=held, key="rho_b_gap"))
        if where[-1] in SUPCON_MODELS:
            rows.append(_spearman_row("B", where, group, "batch_size", _column(group, NC2),
                                      "Spearman rho(b, NC2 mean |cos + 1/(K-1)|)",
                                      claim_above=False, regime=held, key="rho_b_nc2"))
    return rows


def imbalance_claims(runs: pd.DataFrame, tol: dict) -> list[dict]:
    """R: Spearman(ratio, NC2 deviation) > 0 (supcon family), Spearman(ratio, minority
    head-row cosine) > 0 (learned head); per ratio the minority minus majority test accuracy
    (< 0 above ratio 1) and Spearman(ratio, that difference) < 0."""
    rows = []
    axis = "imbalance_ratio"
    for where, group in _sweeps(runs, axis):
        model, held = where[-1], held_regime(group, tol["regime"])
        if model in SUPCON_MODELS:
            rows.append(_spearman_row("R", where, group, axis, _column(group, NC2),
                                      "Spearman rho(imbalance ratio, NC2 mean |cos + 1/(K-1)|)",
                                      claim_above=True, regime=held, key="rho_ratio_nc2"))
        if model in LEARNED_HEAD_MODELS:
            rows.append(_spearman_row("R", where, group, axis,
                                      _column(group, "head_cosine_minority"),
                                      "Spearman rho(imbalance ratio, minority head-row cosine)",
                                      claim_above=True, regime=held, key="rho_ratio_head"))
        label = "minority - majority test accuracy (class means)"
        for ratio, runs_at in group.groupby(axis, sort=True):
            gap = (_column(runs_at, "test_accuracy_minority")
                   - _column(runs_at, "test_accuracy_majority"))
            mean, ci = mean_ci(gap)
            criterion, result = ((NO_CRITERION, NO_VERDICT) if ratio == 1 else
                                 ("< 0", verdict(ci, 0.0, claim_above=False)))
            rows.append(_row("R", *where, f"{_value_name(axis, ratio)}: {label}", mean, ci,
                             criterion, result, held_regime(runs_at, tol["regime"]),
                             key=f"{SETTING_SPELLING[axis](ratio)}_accuracy_gap"))
        rows.append(_spearman_row("R", where, group, axis,
                                  _column(group, "test_accuracy_minority")
                                  - _column(group, "test_accuracy_majority"),
                                  f"Spearman rho(imbalance ratio, {label})", claim_above=False,
                                  regime=held, key="rho_ratio_accuracy_gap"))
    return rows


def markdown(table: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "—"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    def cell(text) -> str:
        return str(text).replace("|", "\\|")  # a measure like |cos| must not split the row

    lines = ["| claim | data | model | measure | value | 95% interval | criterion | regime | "
             "verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    # A grid of one setting (the paper's protocol) does not name it in every row.
    several = table.loc[table.setting != NO_SETTING, "setting"].nunique() > 1
    for r in table.itertuples():
        data = r.dataset if r.augmentation == "—" else f"{r.dataset}, {r.augmentation}"
        if several and r.setting != NO_SETTING:
            data += f", {r.setting}"
        interval = "—" if pd.isna(r.ci_low) else f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
        lines.append(f"| {r.claim} | {data} | {r.model} | {cell(r.measure)} | {fmt(r.value)} | "
                     f"{interval} | {r.criterion} | {cell(r.regime)} | **{cell(r.verdict)}** |")
    return "\n".join(lines) + "\n"


def short_verdict(text: str) -> str:
    """The verdict's first words: "replicates", "does not", "inconclusive", "not reached"
    (the measured reason after the colon stays in the table), or "—"."""
    return text.split(":", 1)[0]


def _slug(text: str) -> str:
    """A table cell as one word of a metric name: "supcon (tau = 0.1)" -> "supcon_tau_0.1"."""
    return re.sub(r"[^a-z0-9.]+", "_", str(text).lower()).strip("_")


def headline(table: pd.DataFrame) -> dict:
    """verdicts.json, the claims' DVC metrics: one short verdict per row of the table under
    "<claim>/<data>/<model>/<key>", <data> the dataset, followed by the augmentation and the
    setting when the table holds several; the numbers and the reasons stay in the table."""
    trained = table[table.setting != NO_SETTING]
    several = trained.groupby("dataset")[["augmentation", "setting"]].nunique().gt(1).any(axis=1)
    out = {}
    for r in table.itertuples():
        data = _slug(r.dataset)
        if several.get(r.dataset, False):
            data = f"{data}/{r.augmentation}/{r.setting}"
        out[f"{r.claim}/{data}/{_slug(r.model)}/{r.key}"] = short_verdict(r.verdict)
    return out


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
    made_for = fits.pop(grid_record, None)
    runs_grid = read_metadata(runs).get(grid_record)
    if not isinstance(runs_grid, dict):
        raise InputError(f"{runs}: records no grid: not a runs table of stage aggregate")
    mismatch = grid_differences(made_for, runs_grid)
    if mismatch:  # two outputs of different aggregate runs (a copied or swapped file)
        raise InputError(f"{growth}: growth fits made for another grid than {runs}: "
                         + "; ".join(mismatch))
    # and from this very runs table (aggregate writes both), not another one of that grid
    inputs.check_made_from(growth, fits, "runs", runs)
    fits.pop(inputs.KEY)
    rows = (free_feature_claims(pq.read_table(free_features).to_pandas(), tol)
            + simplex_claims(run_table, tol) + generalisation_claims(run_table, tol)
            + growth_claims(fits, run_table, tol) + temperature_claims(run_table, tol)
            + batch_size_claims(run_table, tol) + imbalance_claims(run_table, tol))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_path(table) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g", na_rep="", lineterminator="\n")
    with atomic_path(markdown_table) as tmp:
        tmp.write_text(markdown(frame))
    write_json(headline(frame), verdicts, sort_keys=False)
    log.info("%d claim rows: %s", len(frame), frame["verdict"].value_counts().to_dict())
    return frame
