"""How a rerun output's bytes differ from the original's, in the terms of its format
(pipeline.infra.audit): Parquet and CSV by first differing column and its max abs
difference, checkpoints by first differing tensor, JSON by first differing key, PNG by pixels
(then the provenance record), PDF by the provenance record, anything else by bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.infra import provenance


def describe(original: Path, rerun: Path) -> str:
    """How ``rerun``'s bytes differ from ``original``'s, in the terms of its format."""
    suffix = original.suffix.lower()
    try:
        if suffix in (".parquet", ".csv"):
            return _table_difference(original, rerun)
        if suffix == ".pt":
            return _checkpoint_difference(original, rerun)
        if suffix == ".json":
            return _leaf_difference(json.loads(original.read_text()), json.loads(rerun.read_text()))
        if suffix in (".png", ".pdf"):
            return _figure_difference(original, rerun)
    except Exception as e:  # an unreadable rerun output is itself the difference
        return f"cannot compare as {suffix} ({type(e).__name__}: {e}); " + _bytes_difference(
            original, rerun)
    return _bytes_difference(original, rerun)


def _bytes_difference(a: Path, b: Path) -> str:
    x, y = a.read_bytes(), b.read_bytes()
    first = next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v),
                 min(len(x), len(y)))
    return f"bytes differ from offset {first} ({len(x)} -> {len(y)} bytes)"


def read_table(path: Path):
    """A Parquet or CSV file as a pyarrow Table."""
    import pyarrow.csv
    import pyarrow.parquet as pq

    return pq.read_table(path) if path.suffix == ".parquet" else pyarrow.csv.read_csv(path)


def _table_difference(a: Path, b: Path) -> str:
    x, y = read_table(a), read_table(b)
    if x.column_names != y.column_names:
        return f"columns {x.column_names} -> {y.column_names}"
    if x.num_rows != y.num_rows:
        return f"{x.num_rows} -> {y.num_rows} rows"
    for name in x.column_names:
        if not x[name].equals(y[name]):
            return f"column {name!r}: {_array_difference(x[name], y[name])}"
    meta_x, meta_y = x.schema.metadata or {}, y.schema.metadata or {}
    for key in [*meta_x, *(k for k in meta_y if k not in meta_x)]:
        if meta_x.get(key) != meta_y.get(key):
            return (f"same values; metadata {key.decode()!r}: {_short(meta_x.get(key))} -> "
                    f"{_short(meta_y.get(key))}")
    return "same values and metadata; the files' encoding differs"


def _array_difference(a, b) -> str:
    import numpy as np
    import pyarrow as pa

    a, b = a.combine_chunks(), b.combine_chunks()
    while pa.types.is_list(a.type) or pa.types.is_fixed_size_list(a.type) or \
            pa.types.is_large_list(a.type):  # embeddings: one vector per row
        a, b = a.flatten(), b.flatten()
    if a.type != b.type or len(a) != len(b):
        return f"type {a.type} ({len(a)} values) -> {b.type} ({len(b)} values)"
    if pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
        x = a.to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64)
        return _numeric_difference(x, y)
    pairs = list(zip(a.to_pylist(), b.to_pylist(), strict=True))
    changed = [i for i, (u, v) in enumerate(pairs) if u != v]
    i = changed[0]
    return f"{len(changed)} of {len(pairs)} values differ, first at row {i}: " \
        f"{pairs[i][0]!r} -> {pairs[i][1]!r}"


def _numeric_difference(x, y) -> str:
    import numpy as np

    same_nan = np.isnan(x) & np.isnan(y)
    diff = np.where(same_nan, 0.0, np.abs(x - y))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    return f"max |diff| {diff.max():.3g} ({int((diff > 0).sum())} of {diff.size} values differ)"


def _checkpoint_difference(a: Path, b: Path) -> str:
    import torch

    x = flatten(torch.load(a, map_location="cpu", weights_only=True))
    y = flatten(torch.load(b, map_location="cpu", weights_only=True))
    for key in [*x, *(k for k in y if k not in x)]:
        u, v = x.get(key), y.get(key)
        if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
            if u.shape != v.shape or u.dtype != v.dtype:
                return f"tensor {key!r}: {u.dtype}{list(u.shape)} -> {v.dtype}{list(v.shape)}"
            if not torch.equal(u, v):
                x_np, y_np = u.double().numpy().ravel(), v.double().numpy().ravel()
                return f"tensor {key!r}: {_numeric_difference(x_np, y_np)}"
        elif u != v:
            return f"key {key!r}: {_short(u)} -> {_short(v)}"
    return "same tensors and values; the files' encoding differs"


def _leaf_difference(x: Any, y: Any) -> str:
    x, y = flatten(x), flatten(y)
    for key in [*x, *(k for k in y if k not in x)]:
        u, v = x.get(key, "absent"), y.get(key, "absent")
        if u != v:
            size = f" (|diff| {abs(u - v):.3g})" if is_number(u) and is_number(v) else ""
            return f"key {key!r}: {_short(u)} -> {_short(v)}{size}"
    return "same keys and values; the files' formatting differs"


def _figure_difference(a: Path, b: Path) -> str:
    record = ""
    try:
        record = _leaf_difference(provenance.read_provenance(a), provenance.read_provenance(b))
        record = "" if record.startswith("same") else f"provenance record {record}"
    except provenance.NoProvenance:
        pass
    if a.suffix.lower() == ".png":
        import numpy as np
        from PIL import Image

        with Image.open(a) as ia, Image.open(b) as ib:
            if ia.size != ib.size:
                return f"image size {ia.size} -> {ib.size}"
            x = np.asarray(ia.convert("RGBA"), np.int16)  # (height, width, 4)
            y = np.asarray(ib.convert("RGBA"), np.int16)
        changed = np.any(x != y, axis=-1)
        if changed.any():
            return (f"{int(changed.sum())} of {changed.size} pixels differ, max channel "
                    f"difference {int(np.abs(x - y).max())}")
        return "pixels identical; " + (record or "metadata differs")
    return record or _bytes_difference(a, b)  # PDF: no rasteriser among the dependencies


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts, lists and tuples as one dict from dotted keys (``a.0.b``) to leaves."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any, width: int = 80) -> str:
    text = value.decode() if isinstance(value, bytes) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
