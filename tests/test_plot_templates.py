"""The custom Vega-Lite template of the per-model DVC plots (.dvc/plots/by_model.json) draws
each model's mean with a band of one standard deviation over the seeds, read from the
summary's ``<metric>_std`` column beside ``<metric>_mean``, and no band where the std is
undefined (one seed): rendered offline on hand-made rows whose band is known."""

from __future__ import annotations

import json
import re

import pytest
import vl_convert
from conftest import ROOT

TEMPLATE = ROOT / ".dvc" / "plots" / "by_model.json"


def filled(rows: list[dict], y: str) -> dict:
    """The template as DVC fills it: anchors replaced, the rows (CSV strings) as data."""
    text = TEMPLATE.read_text()
    for anchor, value in {"Y": y, "X": "noise_fraction", "TITLE": "a title", "X_LABEL": "p",
                          "Y_LABEL": "value"}.items():
        text = text.replace(f"<DVC_METRIC_{anchor}>", value)
    spec = json.loads(text)
    spec["data"]["values"] = rows
    return spec


def rows(y: str, std: str) -> list[dict]:
    return [{"rev": "HEAD", "dataset": "digits", "augmentation": "none", "model": "ce",
             "noise_fraction": str(p), y: str(mean), y.removesuffix("_mean") + "_std": std,
             "n_seeds": "3"} for p, mean in ((0.0, 100.0), (0.5, 300.0))]


def bands(svg: str) -> list[tuple[float, float]]:
    """(low, high) of every errorband point the SVG labels, where a band path is drawn."""
    found = []
    for label, d in re.findall(r'aria-label="([^"]*)" role="graphics-symbol" '
                               r'aria-roledescription="errorband"( d="[^"]+")?', svg):
        if d:
            fields = dict(part.split(": ", 1) for part in label.split("; "))
            found.append((float(fields["band_low"]), float(fields["band_high"])))
    return found


@pytest.mark.parametrize("y", ["iterations_to_fit_mean", "test_accuracy_class_mean_mean"])
def test_the_band_is_the_mean_plus_minus_the_std_of_the_same_metric(y):
    svg = vl_convert.vegalite_to_svg(filled(rows(y, "20"), y))
    assert bands(svg) == [(80.0, 120.0)]  # one band of two points, labelled by its first
    assert "errorband" in svg and svg.count('aria-roledescription="line mark"') == 1


def test_no_band_where_one_seed_leaves_the_std_undefined():
    y = "iterations_to_fit_mean"
    svg = vl_convert.vegalite_to_svg(filled(rows(y, ""), y))  # NaN is an empty CSV field
    assert bands(svg) == [] and 'aria-roledescription="line mark"' in svg
