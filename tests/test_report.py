"""Views of a finished run: Snakemake's HTML report, opened in headless Chromium, shows every
figure with its caption and category; `dvc metrics show`, `dvc plots show` and
`dvc params diff` work on the project."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import vl_convert
import yaml
from conftest import sh
from tiny_project import built, copy_of

from pipeline.infra import stage_table

pytestmark = pytest.mark.e2e

CATEGORIES = {
    "geometry": "Geometry of the representations (Section 5.2)",
    "iterations_to_fit": "Iterations to fit noisy labels (Section 5.3)",
    "gap_vs_accuracy": "Gap to the optimum vs generalisation",
    "collapse": "Neural collapse NC1-NC4 and accuracies",
    "training_curves": "Training curves",
}
CLAIMS_CATEGORY = "Claims of the paper, judged"
FREE_FEATURES_CATEGORY = "Free features (Section 5.1)"

# Run inside the report after it has loaded: open every result of every category the way a
# reader does (its view button), wait for the image to decode, and record what was shown.
PROBE = """
<script>
window.addEventListener("load", async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const shown = [];
  await sleep(200);
  for (const category of Object.keys(categories)) {
    for (const subcategory of Object.keys(categories[category])) {
      app.setView({navbarMode: "menu"});  // back to the menu first, as a reader does
      await sleep(200);
      app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
      await sleep(200);
      for (const row of document.querySelectorAll("nav table tbody tr")) {
        row.querySelector("a[iconname=eye]").click();  // the view button
        await sleep(200);
        let img = null;
        for (let tries = 0; tries < 50 && !(img && img.complete && img.naturalWidth); tries++) {
          await sleep(100);  // until the content pane holds the decoded image
          img = document.querySelector("div.p-3 > img");
        }
        shown.push({category, subcategory, row: row.textContent,
                    path: app.state.resultPath,
                    width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0});
      }
    }
  }
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({shown, results});
  document.body.appendChild(out);
});
</script>
"""

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--virtual-time-budget=60000",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return built(tmp_path_factory)


@pytest.fixture(scope="module")
def report(project, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    sh(sys.executable, "-m", "snakemake", "--report", str(path), cwd=project)
    return path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]  # IHDR: width, height (big-endian uint32)
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_report_registers_every_figure_with_caption_and_category(project, report):
    text = report.read_text()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text).group(1))
    figures = sorted(p.relative_to(project).as_posix()
                     for p in (project / stage_table.FIGURES_DIR).glob("*.png"))
    assert len(figures) == len(CATEGORIES) and set(figures) <= set(results)
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", text).group(1))
    for kind, category in CATEGORIES.items():
        assert categories[category] == {"digits": [f"{stage_table.FIGURES_DIR}/{kind}_digits.png"]}
    filed = {path for subcategories in categories.values() for paths in subcategories.values()
             for path in paths}
    assert filed == set(results)  # every registered result has a category
    assert categories[CLAIMS_CATEGORY] == {"Other": [stage_table.CLAIMS_CSV]}  # the claims table
    free = sorted(p.relative_to(project).as_posix()
                  for p in (project / stage_table.FREE_FEATURES_FIGURES).glob("*.png"))
    assert free and set(free) <= {path for paths in categories[FREE_FEATURES_CATEGORY].values()
                                  for path in paths}
    for path, result in results.items():
        assert result["caption"].strip(), f"{path} has no caption"
    for path in figures:
        stem = Path(path).stem
        assert f"<strong>{stem}</strong>" in results[path]["caption"]
        assert f"python -m pipeline lineage\ndata/figures/{stem}.png" in html.unescape(
            re.sub("<[^>]+>", "", results[path]["caption"])
        )


def test_report_shows_every_figure_in_headless_chromium(project, report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's `chromium` is not installed (`make test` installs it as root)")
    probed = tmp_path / "report.html"
    page, end, rest = report.read_text().rpartition("</body>")  # the last: others are in JS
    probed.write_text(page + PROBE + end + rest)
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert probe, "the report's app did not finish loading in Chromium"
    data = json.loads(html.unescape(probe.group(1)))
    figures = {f"{stage_table.FIGURES_DIR}/{p.name}": png_size(p)
               for p in (project / stage_table.FIGURES_DIR).glob("*.png")}
    shown = {item["path"]: item for item in data["shown"]}
    images = {path for path in data["results"] if path.endswith(".png")}  # claims.csv: a table
    assert set(shown) == images and set(figures) <= set(shown)
    for path in figures:
        item = shown[path]
        kind = Path(path).stem.removesuffix("_digits")
        assert (item["category"], item["subcategory"]) == (CATEGORIES[kind], "digits")
        assert (item["width"], item["height"]) == figures[path]  # the PNG itself, decoded
        assert Path(path).stem in data["results"][path]["caption"]


def test_dvc_metrics_show_lists_the_headline_and_the_verdicts_only(project):
    """Two small metrics files, every leaf named so a column header explains itself; each
    run's metrics.json stays a cached output of its geometry stage, not a DVC metric."""
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project).stdout)
    files = shown[""]["data"]
    assert set(files) == {stage_table.HEADLINE_METRICS, stage_table.CLAIMS_METRICS}
    grid = yaml.safe_load((project / "params.yaml").read_text())["grid"]
    headline = files[stage_table.HEADLINE_METRICS]["data"]
    assert headline.pop("numerics")["mode"] == "portable"  # how the stage computed
    written = json.loads((project / stage_table.HEADLINE_METRICS).read_text())
    # the tiny grid has one run at p > 0: no growth line, so DVC drops its null leaves
    assert headline == {k: v for k, v in written.items() if v is not None and k != "numerics"}
    assert {k.split("/")[1] for k in headline} == set(grid["models"])
    summary = pd.read_csv(project / stage_table.SUMMARY_CSV)
    for model in grid["models"]:
        at0 = summary[(summary.model == model) & (summary.noise_fraction == 0.0)].iloc[0]
        assert headline[f"digits/{model}/test_accuracy_class_means"] == pytest.approx(
            at0.test_accuracy_class_mean_mean, rel=1e-9)
    verdicts = files[stage_table.CLAIMS_METRICS]["data"]
    assert verdicts.pop("numerics")["mode"] == "portable"
    claims = pd.read_csv(project / stage_table.CLAIMS_CSV)
    assert len(verdicts) == len(claims)
    assert set(verdicts.values()) <= {"replicates", "does not", "inconclusive", "not reached"}
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "metrics" not in stages["geometry"] and any(
        str(out).endswith("/metrics.json") for out in stages["geometry"]["do"]["outs"])


def test_dvc_plots_show_renders_every_declared_plot(project, tmp_path):
    result = sh("dvc", "plots", "show", "--json", "-o", str(tmp_path / "plots"), cwd=project)
    shown = json.loads(result.stdout)
    assert "errors" not in shown, shown.get("errors")
    assert set(shown["data"]) == {plot.name for plot in stage_table.PLOTS}
    curves = pd.read_csv(project / stage_table.CURVES_CSV)
    for plot in stage_table.PLOTS:
        (entry,) = shown["data"][plot.name]
        spec = entry["content"]
        values = spec["data"]["values"]
        if plot.template == "by_model":  # one point per (model, noise fraction), by model,
            assert len(values) == 3 * 2  # over a band (tests/test_plot_templates.py)
            band, line = spec["spec"]["layer"]
            assert band["mark"]["type"] == "errorband"
            encoding = spec["spec"]["encoding"] | line["encoding"]
            assert encoding["color"]["field"] == "model"
            assert spec["facet"]["row"]["field"] == "dataset"
        else:  # one line per run: every row of every training log
            encoding = spec["encoding"]
            assert len(values) == len(curves) and plot.y[0][0] == stage_table.CURVES_CSV
            assert encoding["color"]["field"] == "noise_fraction"
            assert encoding["column"]["field"] == "model"
        (_, column), = plot.y
        assert encoding["y"]["field"] == column and encoding["x"]["field"] == plot.x
        # The custom template is valid Vega-Lite: it renders (offline), one panel per model
        # for the training curves.
        svg = vl_convert.vegalite_to_svg(spec)
        assert svg.startswith("<svg") and plot.title in svg
        if plot.template == "curves":
            assert all(f">{model}<" in svg for model in ("supcon", "ce", "ce_fixed"))


def test_dvc_params_diff_shows_a_changed_value(tmp_path_factory, tmp_path):
    root = copy_of(tmp_path_factory, tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["models"]["ce"]["learning_rate"] = 0.05
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = json.loads(sh("dvc", "params", "diff", "--json", cwd=root).stdout)
    assert diff == {
        "params.yaml": {"train.models.ce.learning_rate": {"old": 0.1, "new": 0.05, "diff": -0.05}}
    }
