"""`python -m pipeline results`: the result tables come from the run's outputs, and
`--check` names any drift between the committed text (or dvc.lock) and the run."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from conftest import sh
from tiny_project import copy_of, git_commit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_of(tmp_path_factory, tmp_path_factory.mktemp("results") / "project")
    sh(sys.executable, "-m", "pipeline", "results", cwd=root)
    git_commit(root, "results rendered")
    return root


def results(root, *args):
    return sh(sys.executable, "-m", "pipeline", "results", *args, cwd=root, check=False)


def test_tables_carry_the_numbers_of_the_outputs(project):
    doc = (project / "docs/results.md").read_text()
    summary = pd.read_parquet(project / "data/summary/summary.parquet")
    for row in summary[summary.noise_fraction == 0.0].itertuples():
        accuracy = f"{100 * row.test_accuracy_class_mean_mean:.2f} %"
        assert f"| {row.model} | {accuracy} |" in doc
    supcon = summary[(summary.model == "supcon") & (summary.noise_fraction == 0.3)].iloc[0]
    assert f"({int(supcon.n_fit)}/{int(supcon.n_seeds)})" in doc
    readme = (project / "README.md").read_text()
    block = readme.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "docs/results.md" in block and "supcon a = " in block


def test_claims_in_words_one_sentence_per_claim_with_measure_interval_and_criterion(project):
    """Each sentence: the claim and its data, each verdict with the rows it covers (model,
    measure, value [interval], criterion), then once each the measured reason of a
    "not reached"; in README and docs/results.md, both above the full table."""
    from pipeline.report.results import CLAIM_NAMES, MEASURE_WORDS, claims_in_words

    table = pd.read_csv(project / "data/claims/claims.csv")
    words = claims_in_words(table).splitlines()
    groups = table.groupby(["claim", "dataset"], sort=False).ngroups
    assert len(words) == groups
    for row in table.itertuples():
        interval = "" if pd.isna(row.ci_low) else f" [{row.ci_low:.3g}, {row.ci_high:.3g}]"
        value = "—" if pd.isna(row.value) else f"{row.value:.3g}"  # unmeasured: a dash
        item = (f"{row.model} {MEASURE_WORDS.get(row.key, row.measure)} {value}"
                f"{interval} ({row.criterion})")
        (line,) = [w for w in words
                   if w.startswith(f"- {CLAIM_NAMES[row.claim]}, {row.dataset}: ")]
        verdict = row.verdict.split(":", 1)[0]
        assert f"**{verdict}** for " in line and item in line
        if verdict == "not reached":
            assert "Not reached: " in line and row.verdict.split(": ", 1)[1] in line
    doc = (project / "docs/results.md").read_text()
    readme = (project / "README.md").read_text()
    for text in (doc, readme):
        assert words[0] in text and text.index(words[-1]) < text.index("| claim | data |")


def test_check_passes_on_the_committed_text(project):
    result = results(project, "--check")
    assert result.returncode == 0, result.stderr


def test_check_names_a_hand_edited_number(project):
    doc = project / "docs/results.md"
    original = doc.read_text()
    try:
        doc.write_text(original.replace("| supcon |", "| supcon (edited) |", 1))
        result = results(project, "--check")
        assert result.returncode == 1
        assert "docs/results.md" in result.stderr and "supcon (edited)" in result.stderr
    finally:
        doc.write_text(original)


def test_check_names_an_output_the_run_did_not_reproduce(project):
    import yaml

    lock = project / "dvc.lock"
    original = lock.read_text()
    data = yaml.safe_load(original)
    data["stages"]["geometry@digits-1-supcon-none-0.1-64-60-0.0-0"]["outs"][0]["md5"] = "0" * 32
    lock.write_text(yaml.safe_dump(data, sort_keys=False))
    git_commit(project, "a lock this run does not reproduce")  # committed: the edited md5
    lock.write_text(original)  # the working tree: what the run really recorded
    try:
        result = results(project, "--check")
        assert result.returncode == 1
        assert "geometry@digits-1-supcon-none-0.1-64-60-0.0-0" in result.stderr
        assert "committed " + "0" * 32 in result.stderr
    finally:
        git_commit(project, "the run's own lock again")


def test_lock_check_skips_when_params_changed(project):
    params = project / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original + "\n")
        result = results(project, "--check")
        assert result.returncode == 0
        assert "is not compared" in result.stderr
    finally:
        params.write_text(original)
