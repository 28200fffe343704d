"""Which input bytes each artifact was made from, recorded in the artifact, checked by readers.

Every artifact already names the run it belongs to (its ``train_config`` or ``noisy_labels``
metadata; metrics.json's run columns), and each stage refuses another run's file. That cannot
tell apart two files of the *same* run made from different bytes: labels regenerated after a
checkpoint was trained on them, a head from one training beside the embeddings of another,
a runs table swapped under growth fits made from a different one. So each artifact also
records, under :data:`KEY`, the md5 of every input file it was made from, by the input's role
in its stage (the keys of the stage's ``deps`` in pipeline/infra/stage_table.py), and where a
stage reads two artifacts that share an upstream file, it checks that they record the same
md5 for it, or that the file it reads itself is the one recorded (:func:`check_made_from`).

Only md5s, never paths: Snakemake and DVC name the same file alike, but a test or a user
calling a stage by hand does not, and bytes must not depend on where a file lay.

DVC's metrics files (headline.json, verdicts.json) and CSV tables carry no such record: the
first would put 32-character strings into every `dvc exp show`, the second has no place for
it. Their lineage is dvc.lock's, and their sibling outputs (the runs table) carry it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.infra.io import InputError, file_md5

KEY = "inputs"  # metadata key: {input role: md5 of the file the artifact was made from}
# A metadata field: a path of keys. Run names hold dots ("tau0.1"), so a field is a tuple, not
# a dotted string; messages show it dotted, a key that holds a dot in brackets (:func:`shown`).
Field = tuple[str, ...]
# The train log records the checkpoint written beside it (same job, same training) at this
# field: the embeddings name that checkpoint as their input, so geometry can tell a log of
# another training of the same run.
WRITTEN_WITH: Field = ("written_with", "checkpoint")


def digests(**paths: str | Path) -> dict[str, str]:
    """{role: md5} of the files given by role, in the order given."""
    return {role: file_md5(path) for role, path in paths.items()}


def field(*keys: str) -> Field:
    """The metadata field holding the md5 of input ``keys`` (a role, and under it a run)."""
    return (KEY, *keys)


def shown(at: Field) -> str:
    """Field ``at`` as messages write it: ``inputs.metrics['digits/rho1/.../noise0.0-seed0']``."""
    text = ""
    for key in at:
        text += f"[{key!r}]" if "." in key else f".{key}" if text else key
    return text


def recorded(meta: dict, artifact: str | Path, at: Field) -> str:
    """The md5 ``artifact`` records at the metadata field ``at``."""
    value = meta
    for key in at:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise InputError(f"{artifact}: records no {shown(at)} (made by an older version of "
                         "the pipeline, or not by it: rerun the stage that makes it)")
    return value


def check_made_from(artifact: str | Path, meta: dict, role: str, source: str | Path,
                    md5: str | None = None, at: Field | None = None) -> None:
    """``artifact`` (metadata ``meta``) must have been made from the bytes of ``source``,
    its input ``role`` (recorded at ``at``, by default ``inputs.<role>``); ``md5``: the
    source's, when the caller has it already."""
    at = at or field(role)
    want = recorded(meta, artifact, at)
    got = md5 if md5 is not None else file_md5(source)
    if got != want:
        raise InputError(
            f"{artifact}: made from {role} with md5 {want} (field {shown(at)}), but {source} "
            f"has md5 {got}: a file of the same run made from other bytes (swapped, or "
            "regenerated since): rerun from it"
        )


def check_same_source(first: str | Path, first_meta: dict, second: str | Path,
                      second_meta: dict, role: str, second_field: Field | None = None) -> None:
    """Two artifacts that must come from the same ``role`` file record the same md5 for it
    (``second_field``: where the second records it, by default ``inputs.<role>``)."""
    second_field = second_field or field(role)
    want = recorded(first_meta, first, field(role))
    got = recorded(second_meta, second, second_field)
    if got != want:
        raise InputError(
            f"{second}: made from {role} with md5 {got} (field {shown(second_field)}), but "
            f"{first} was made from {role} with md5 {want} (field {shown(field(role))}): the "
            "two come from different files of the same run: rerun from it"
        )
